"""The entry points: the ``qesmon`` command, ``qesmon up``'s supervisor and the demo traffic.

This package wires every other one (``pipeline``, ``rules``, ``notifier``, ``api`` and the
``qesmon`` core) and nothing imports it, as Alertmanager's ``cmd/`` does for its packages:

- :mod:`cli.main` — the ``qesmon`` command (argument parsing, settings from the environment,
  one subcommand per process); ``python -m cli`` is the same command;
- :mod:`cli.supervisor` — keeps ``qesmon up``'s children running;
- :mod:`cli.demo` — ``qesmon demo``, synthetic platform traffic with incidents.
"""
