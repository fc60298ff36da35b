"""What is an alert: rule files, their validation, evaluation of closed windows, alert states.

* :mod:`rules.loader` -- YAML rule files -> validated :class:`rules.model.Rule` objects, every
  problem as ``file:line: problem`` (:func:`rules.loader.load_rules`);
* :mod:`rules.watch` -- hot reload of ``RULES_DIR`` (a broken file keeps its last good rules);
* :mod:`rules.expr` -- conditions, the only module that touches ``rule-engine``;
* :mod:`rules.fields` -- the fields a condition reads (error_rate, p95, ratios, ...);
* :mod:`rules.engine` -- the alert state machine over closed windows, snapshot/restore;
* :mod:`rules.annotations` -- the annotation text of a transition, placeholders filled in;
* :mod:`rules.store` -- transitions to the ``qes:alerts`` stream and the ``alerts`` tables;
* :mod:`rules.check` -- ``qesmon rules check``.

The default rule files (the seed's six alerts) live next to this package as ``*.yaml``.
"""
