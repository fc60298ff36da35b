"""Rule files: YAML in, validated :class:`~rules.model.Rule` objects out, every problem with
its ``file:line``.

A file holds one rule (a mapping with ``id``), a list of rules, or a mapping with a ``rules:``
list; several YAML documents (``---``) may follow each other. Files whose top level has the
key ``escalation_policies`` or ``routing`` belong to the notifier and are skipped. A rule::

    id: high_error_rate                # [A-Za-z0-9_.:-], unique over all files
    name: High error rate              # default: the id
    severity: critical                 # info | warning | critical
    metric:                            # a metric name, or a selector:
      name: http_request
      type: performance                # optional: the series' type
      tenant: 7d0c...                  # optional: one tenant only
      labels:                          # optional matchers (a missing label reads as ""):
        service: signing               #   equal
        method: [POST, PUT]            #   one of
        endpoint: {regex: "/api/.*"}   #   full regex match ({not_regex: ...} to exclude)
    group_by: [service, endpoint]      # labels, and the pseudo-label `tenant`; default: one
                                       # group for all matching series
    condition: error_rate > threshold  # rule-engine expression over the fields (rules.fields),
                                       # also tenant and labels["endpoint"] of the group
    threshold: 5                       # optional, usable as `threshold`
    for: 1m                            # condition held this long (event time) before firing
    window: 10s                        # rollup width evaluated: 10s (default), 1m or 1h
    keep_firing_for: 20s               # clear this long before resolving (default 2 windows)
    resolve_condition: error_rate < 3  # optional hysteresis: what counts as clear when firing
    no_data_after: 5m                  # no data this long: pending ends, firing resolves
                                       # (default max(3 windows, 5m))
    ratios:                            # optional derived fields from two metrics
      conversion_rate: {numerator: user_signup, denominator: landing_visit,
                        field: count, scale: 100}
    value_field: error_rate            # the alert's value (default: first field in condition)
    labels: {team: platform}           # added to the alert's labels
    annotations:                       # {{ field }}, {{ value }}, {{ labels.x }}, {{ tenant }}
      summary: "{{ value }} % errors on {{ labels.endpoint }}"
      runbook: https://runbooks.example/high-error-rate
    channels: [slack, email]           # or `route:`; the notifier's channel names
    escalation: default                # escalation policy name (notifier)
    repeat_interval: 4h                # re-notify a firing alert at most this often
    template: alert                    # notifier template name

Unknown fields are errors. Annotations are rendered by the engine when a transition happens,
so the ``alerts`` table and every channel show the same text. The YAML is read node by node
with :mod:`qesmon.yamlread`, which keeps the lines.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from qesmon.alerts import Severity
from qesmon.contract import MetricType
from qesmon.errors import RuleError
from qesmon.series import ROLLUP_WIDTHS
from qesmon.yamlread import NodeReader, child, compose_all, describe
from rules.expr import Condition, ExpressionError
from rules.fields import FLOAT_FIELDS, RATIO_FIELDS, RESOURCE_FIELDS
from rules.model import (
    PLACEHOLDER,
    LabelMatcher,
    MetricSelector,
    Ratio,
    Rule,
    RuleSet,
    format_duration,
    parse_duration,
)

#: top-level keys of the notifier's files (escalation policies, routing), which the rule
#: loader skips; see notifier/policy.py
NOTIFIER_KEYS = ("escalation_policies", "routing")
RULE_SUFFIXES = (".yaml", ".yml")
RULE_FIELDS = frozenset(
    {
        "id",
        "name",
        "severity",
        "metric",
        "group_by",
        "condition",
        "threshold",
        "for",
        "window",
        "keep_firing_for",
        "resolve_condition",
        "no_data_after",
        "ratios",
        "value_field",
        "labels",
        "annotations",
        "channels",
        "route",
        "escalation",
        "repeat_interval",
        "template",
    }
)
_SELECTOR_FIELDS = frozenset({"name", "type", "tenant", "labels"})
_RATIO_KEYS = frozenset({"numerator", "denominator", "field", "scale"})
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,199}")
_LABEL_KEY = re.compile(r"[a-zA-Z_][a-zA-Z0-9_.-]*")
_FIELD_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_CHANNEL = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_BASE_FIELDS = FLOAT_FIELDS - set(RESOURCE_FIELDS)  # need the rule's main metric


@dataclass
class FileRules:
    """What one file yielded: its valid rules, its problems, and whether it is a rule file."""

    path: Path
    rules: list[Rule] = field(default_factory=list)
    errors: list[RuleError] = field(default_factory=list)
    skipped: bool = False  # an escalation policy file (the notifier's)

    @property
    def ok(self) -> bool:
        return not self.errors


def load_rules(paths: Iterable[Path]) -> tuple[RuleSet, list[RuleError]]:
    """Load every rule file under ``paths`` (files, or directories of ``*.yaml``/``*.yml``).

    Best effort: the valid rules of every file are loaded, invalid ones are reported and
    left out; of two rules with one id the first (in path order) wins.
    """
    files, errors = discover(paths)
    results = [parse_file(path) for path in files]
    ruleset, dup_errors = assemble((r.path, r.rules) for r in results)
    for result in results:
        errors += result.errors
    return ruleset, errors + dup_errors


def discover(paths: Iterable[Path]) -> tuple[list[Path], list[RuleError]]:
    """The rule files named by ``paths``: files as given, directories' ``*.yaml``/``*.yml``
    (not recursive, dot-files skipped), in a stable order."""
    files: list[Path] = []
    errors: list[RuleError] = []
    for path in paths:
        if path.is_dir():
            files += sorted(
                p
                for p in path.iterdir()
                if p.suffix in RULE_SUFFIXES and not p.name.startswith(".") and p.is_file()
            )
        elif path.is_file():
            files.append(path)
        else:
            errors.append(RuleError("no such file or directory", f"{path}:0"))
    seen: set[Path] = set()
    unique = []
    for f in files:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    return unique, errors


def assemble(per_file: Iterable[tuple[Path, Sequence[Rule]]]) -> tuple[RuleSet, list[RuleError]]:
    """One RuleSet from the rules of several files; a repeated id is an error at its source."""
    chosen: dict[str, Rule] = {}
    errors: list[RuleError] = []
    for _path, rules in per_file:
        for rule in rules:
            first = chosen.get(rule.id)
            if first is not None:
                errors.append(
                    RuleError(
                        f"duplicate rule id {rule.id!r} (first defined at {first.source})",
                        rule.source,
                    )
                )
                continue
            chosen[rule.id] = rule
    return RuleSet(chosen.values()), errors


def parse_file(path: Path) -> FileRules:
    """Parse one file; never raises for a bad file, the problems are in ``.errors``."""
    result = FileRules(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        result.errors.append(RuleError(f"cannot read: {exc}", f"{path}:0"))
        return result
    return parse_text(text, path)


def parse_text(text: str, path: Path) -> FileRules:
    """Parse the text of a rule file (``path`` is used for locations only)."""
    result = FileRules(path)
    try:
        documents = compose_all(text, path)
    except RuleError as exc:
        result.errors.append(exc)
        return result
    parser = _FileParser(path)
    for doc in documents:
        if doc is None:
            continue
        rule_nodes = parser.rule_nodes(doc)
        if rule_nodes is None:
            result.skipped = True
            continue
        for node in rule_nodes:
            rule = parser.rule(node)
            if rule is not None:
                result.rules.append(rule)
    ids: dict[str, Rule] = {}
    for rule in list(result.rules):
        if rule.id in ids:
            parser.error_at(
                rule.source,
                f"duplicate rule id {rule.id!r} (first defined at {ids[rule.id].source})",
            )
            result.rules.remove(rule)
        else:
            ids[rule.id] = rule
    result.errors += parser.errors
    return result


class _FileParser(NodeReader):
    """The rule semantics over the YAML reader: walks nodes, so every problem names its line."""

    def duration(self, node: yaml.Node, what: str) -> float | None:
        try:
            return parse_duration(self.data(node))
        except ValueError as exc:
            self.error(node, f"{what}: {exc}")
            return None

    # -- structure -------------------------------------------------------------------------
    def rule_nodes(self, doc: yaml.Node) -> list[yaml.Node] | None:
        """The rule mappings of one document; None for an escalation policy document."""
        if isinstance(doc, yaml.SequenceNode):
            return list(doc.value)
        if isinstance(doc, yaml.MappingNode):
            keys = {getattr(k, "value", None): (k, v) for k, v in doc.value}
            notifier_keys = [k for k in NOTIFIER_KEYS if k in keys]
            if notifier_keys:
                if "rules" in keys:
                    self.error(
                        keys["rules"][0],
                        f"a file with {notifier_keys[0]!r} (for the "
                        "notifier) must not also hold rules",
                    )
                return None
            if "rules" in keys:
                for key, (key_node, _) in keys.items():
                    if key != "rules":
                        self.error(
                            key_node,
                            f"unknown top-level key {key!r} (a rule file has only 'rules:')",
                        )
                rules_node = keys["rules"][1]
                if isinstance(rules_node, yaml.ScalarNode) and self.data(rules_node) is None:
                    return []
                if not isinstance(rules_node, yaml.SequenceNode):
                    self.error(rules_node, f"rules must be a list, got {describe(rules_node)}")
                    return []
                return list(rules_node.value)
            if "id" in keys:
                return [doc]
            self.error(
                doc,
                "expected a rule (a mapping with 'id'), a list of rules, or 'rules:' with a list",
            )
            return []
        if isinstance(doc, yaml.ScalarNode) and self.data(doc) is None:
            return []
        self.error(doc, f"expected a rule, a list of rules or 'rules:', got {describe(doc)}")
        return []

    def rule(self, node: yaml.Node) -> Rule | None:
        """One rule, or None (with errors recorded) when it is invalid."""
        before = len(self.errors)
        fields = self.mapping(node, "a rule")
        if fields is None:
            return None
        for key, (key_node, _) in fields.items():
            if key not in RULE_FIELDS:
                close = difflib.get_close_matches(key, sorted(RULE_FIELDS), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.error(key_node, f"unknown field {key!r}{hint}")
        for required in ("id", "severity", "condition"):
            if required not in fields:
                self.error(node, f"rule has no {required!r}")

        def get(name: str) -> yaml.Node | None:
            pair = fields.get(name)
            return pair[1] if pair is not None else None

        rule_id = self._opt(
            get("id"), lambda n: self.string(n, "id", _ID, " (use 1-100 of A-Z a-z 0-9 _ . : -)")
        )
        name = self._opt(get("name"), lambda n: self.string(n, "name")) or rule_id or ""
        severity = self._opt(get("severity"), self._severity)
        metric = self._opt(get("metric"), self._selector)
        group_by = (
            self._opt(
                get("group_by"),
                lambda n: self.strings(
                    n, "group_by entry", _LABEL_KEY, " (a label name, or 'tenant')"
                ),
            )
            or ()
        )
        threshold = self._opt(get("threshold"), lambda n: self.number(n, "threshold"))
        for_s = self._opt(get("for"), lambda n: self.duration(n, "for")) or 0.0
        window = self._opt(get("window"), self._window) or ROLLUP_WIDTHS[0]
        keep = self._opt(get("keep_firing_for"), lambda n: self.duration(n, "keep_firing_for"))
        no_data = self._opt(get("no_data_after"), lambda n: self.duration(n, "no_data_after"))
        ratios = self._opt(get("ratios"), self._ratios) or ()
        labels = self._opt(get("labels"), lambda n: self._str_map(n, "labels", _LABEL_KEY)) or {}
        annotations = (
            self._opt(get("annotations"), lambda n: self._str_map(n, "annotations", None)) or {}
        )
        channels = self._channels(fields)
        escalation = self._opt(get("escalation"), lambda n: self.string(n, "escalation"))
        repeat = self._opt(get("repeat_interval"), lambda n: self.duration(n, "repeat_interval"))
        template = self._opt(get("template"), lambda n: self.string(n, "template"))
        if no_data is not None and no_data < window:
            self.error(
                get("no_data_after") or node,
                f"no_data_after must be at least the window ({format_duration(window)})",
            )
        if "metric" not in fields and "ratios" not in fields:
            self.error(node, "rule has no 'metric' (name the metric it reads, or define ratios)")
        # names of declared ratios, even broken ones, so the condition does not fail twice
        ratio_names = {
            getattr(k, "value", "")
            for k, _ in getattr(get("ratios"), "value", [])
            if isinstance(get("ratios"), yaml.MappingNode)
        }
        floats = set(FLOAT_FIELDS) | {"threshold"} | ratio_names
        condition = self._condition(get("condition"), "condition", floats)
        resolve = self._opt(
            get("resolve_condition"), lambda n: self._condition(n, "resolve_condition", floats)
        )
        value_field = self._opt(get("value_field"), lambda n: self.string(n, "value_field"))
        checks = (
            ("condition", condition, get("condition")),
            ("resolve_condition", resolve, get("resolve_condition")),
        )
        has_metric = "metric" in fields or "ratios" not in fields
        for cond_name, cond, cond_node in checks:
            if cond is not None and cond_node is not None:
                self._check_symbols(
                    cond_node, cond_name, cond.symbols, metric, has_metric, threshold
                )
        if value_field is not None:
            if value_field not in floats - {"threshold"}:
                self.error(
                    get("value_field") or node, f"value_field {value_field!r} is not a field"
                )
            else:
                self._check_symbols(
                    get("value_field") or node,
                    "value_field",
                    frozenset({value_field}),
                    metric,
                    has_metric,
                    threshold,
                )
        elif condition is not None:
            value_field = condition.first_field() or ("value" if metric is not None else None)
            if value_field is None and ratios:
                value_field = ratios[0].name
        allowed = floats | {"tenant", "rule_id", "rule_name", "severity"}
        label_keys = set(group_by) | set(labels)
        for key, text in annotations.items():
            for match in PLACEHOLDER.finditer(text):
                ref = match.group(1)
                ok = (ref.startswith("labels.") and ref[7:] in label_keys) or ref in allowed
                if ref == "threshold" and threshold is None:
                    ok = False
                if not ok:
                    anode = fields["annotations"][1]
                    self.error(
                        child(anode, key) or anode,
                        f"annotation {key!r}: unknown placeholder {{{{ {ref} }}}} "
                        "(use a field, value, tenant, rule_id, rule_name, severity, "
                        f"or labels.<one of {sorted(label_keys) or 'group_by/labels'}>)",
                    )

        if len(self.errors) > before:
            return None
        assert rule_id is not None and severity is not None and condition is not None
        assert value_field is not None
        return Rule(
            id=rule_id,
            name=name,
            severity=severity,
            condition=condition,
            metric=metric,
            group_by=tuple(dict.fromkeys(group_by)),
            threshold=threshold,
            for_s=for_s,
            window=window,
            keep_firing_for=keep if keep is not None else 2.0 * window,
            no_data_after=no_data if no_data is not None else max(3.0 * window, 300.0),
            resolve_condition=resolve,
            ratios=tuple(ratios),
            value_field=value_field,
            labels=labels,
            annotations=annotations,
            channels=channels or (),
            escalation=escalation,
            repeat_interval=repeat,
            template=template,
            source=self.loc(node),
            digest=hashlib.sha256(
                orjson.dumps(self.data(node), option=orjson.OPT_SORT_KEYS, default=str)
            ).hexdigest()[:16],
        )

    # -- fields ----------------------------------------------------------------------------
    @staticmethod
    def _opt(node: yaml.Node | None, parse: Any) -> Any:
        return None if node is None else parse(node)

    def _severity(self, node: yaml.Node) -> Severity | None:
        text = self.string(node, "severity")
        if text is None:
            return None
        try:
            return Severity(text.lower())
        except ValueError:
            self.error(node, f"severity {text!r} is not one of info, warning, critical")
            return None

    def _window(self, node: yaml.Node) -> int | None:
        seconds = self.duration(node, "window")
        if seconds is None:
            return None
        if seconds not in ROLLUP_WIDTHS:
            allowed = ", ".join(format_duration(w) for w in ROLLUP_WIDTHS)
            self.error(node, f"window {format_duration(seconds)} is not a rollup width ({allowed})")
            return None
        return int(seconds)

    def _selector(self, node: yaml.Node, what: str = "metric") -> MetricSelector | None:
        if isinstance(node, yaml.ScalarNode):
            name = self.string(
                node, f"{what} name", _METRIC_NAME, " (a metric name: [a-zA-Z_:][a-zA-Z0-9_:]*)"
            )
            return MetricSelector(name) if name is not None else None
        fields = self.mapping(node, what)
        if fields is None:
            return None
        ok = True
        for key, (key_node, _) in fields.items():
            if key not in _SELECTOR_FIELDS:
                self.error(
                    key_node,
                    f"{what}: unknown field {key!r} "
                    f"(expected {', '.join(sorted(_SELECTOR_FIELDS))})",
                )
                ok = False
        if "name" not in fields:
            self.error(node, f"{what} has no 'name'")
            return None
        name = self.string(
            fields["name"][1],
            f"{what} name",
            _METRIC_NAME,
            " (a metric name: [a-zA-Z_:][a-zA-Z0-9_:]*)",
        )
        type_ = None
        if "type" in fields:
            type_ = self.string(fields["type"][1], f"{what} type")
            if type_ is not None and type_ not in {t.value for t in MetricType}:
                self.error(
                    fields["type"][1],
                    f"{what} type {type_!r} is not one of {', '.join(t.value for t in MetricType)}",
                )
                type_ = None
                ok = False
        tenant = self.string(fields["tenant"][1], f"{what} tenant") if "tenant" in fields else None
        matchers: list[LabelMatcher] = []
        if "labels" in fields:
            label_map = self.mapping(fields["labels"][1], f"{what} labels") or {}
            for key, (key_node, value_node) in label_map.items():
                if not _LABEL_KEY.fullmatch(key):
                    self.error(key_node, f"{what} label name {key!r} is invalid")
                    ok = False
                    continue
                matcher = self._matcher(key, value_node, what)
                if matcher is None:
                    ok = False
                else:
                    matchers.append(matcher)
        if not ok or name is None:
            return None
        return MetricSelector(name, type_, tenant, tuple(matchers))

    def _matcher(self, key: str, node: yaml.Node, what: str) -> LabelMatcher | None:
        if isinstance(node, yaml.MappingNode):
            spec = self.mapping(node, f"{what} label {key!r}") or {}
            if len(spec) != 1 or next(iter(spec)) not in ("regex", "not_regex"):
                self.error(
                    node,
                    f"{what} label {key!r}: use a value, a list of values, "
                    "{regex: ...} or {not_regex: ...}",
                )
                return None
            kind, (_, pattern_node) = next(iter(spec.items()))
            pattern = self.string(pattern_node, f"{what} label {key!r} {kind}")
            if pattern is None:
                return None
            try:
                regex = re.compile(pattern)
            except re.error as exc:
                self.error(pattern_node, f"{what} label {key!r}: bad regex {pattern!r}: {exc}")
                return None
            return LabelMatcher(key, regex=regex, negate=kind == "not_regex")
        values = self.strings(node, f"{what} label {key!r} value")
        return LabelMatcher(key, values=frozenset(values)) if values is not None else None

    def _ratios(self, node: yaml.Node) -> tuple[Ratio, ...] | None:
        spec = self.mapping(node, "ratios")
        if spec is None:
            return None
        out = []
        for name, (key_node, value_node) in spec.items():
            if (
                not _FIELD_NAME.fullmatch(name)
                or name in FLOAT_FIELDS
                or name in ("threshold", "tenant", "labels")
            ):
                self.error(
                    key_node, f"ratio name {name!r} must be a new lower-case name, not a field"
                )
                continue
            parts = self.mapping(value_node, f"ratio {name!r}")
            if parts is None:
                continue
            bad = [k for k in parts if k not in _RATIO_KEYS]
            for k in bad:
                self.error(
                    parts[k][0],
                    f"ratio {name!r}: unknown field {k!r} "
                    f"(expected {', '.join(sorted(_RATIO_KEYS))})",
                )
            missing = [k for k in ("numerator", "denominator") if k not in parts]
            for k in missing:
                self.error(key_node, f"ratio {name!r} has no {k!r}")
            if bad or missing:
                continue
            num = self._selector(parts["numerator"][1], f"ratio {name!r} numerator")
            den = self._selector(parts["denominator"][1], f"ratio {name!r} denominator")
            field_name = "count"
            if "field" in parts:
                field_name = self.string(parts["field"][1], f"ratio {name!r} field") or ""
                if field_name not in RATIO_FIELDS:
                    self.error(
                        parts["field"][1],
                        f"ratio {name!r} field {field_name!r} is not "
                        f"one of {', '.join(RATIO_FIELDS)}",
                    )
                    continue
            scale = 100.0
            if "scale" in parts:
                scale_value = self.number(parts["scale"][1], f"ratio {name!r} scale")
                if scale_value is None:
                    continue
                scale = scale_value
            if num is not None and den is not None:
                out.append(Ratio(name, num, den, field_name, scale))
        return tuple(out)

    def _str_map(
        self, node: yaml.Node, what: str, key_pattern: re.Pattern[str] | None
    ) -> dict[str, str] | None:
        spec = self.mapping(node, what)
        if spec is None:
            return None
        out = {}
        for key, (key_node, value_node) in spec.items():
            if key_pattern is not None and not key_pattern.fullmatch(key):
                self.error(key_node, f"{what}: name {key!r} is invalid")
                continue
            value = self.string(value_node, f"{what} {key!r}")
            if value is not None:
                out[key] = value
        return out

    def _channels(self, fields: dict[str, tuple[yaml.Node, yaml.Node]]) -> tuple[str, ...] | None:
        if "channels" in fields and "route" in fields:
            self.error(fields["route"][0], "give either 'channels' or 'route', not both")
            return None
        pair = fields.get("channels") or fields.get("route")
        if pair is None:
            return None
        return self.strings(pair[1], "channel", _CHANNEL, " (a channel name)")

    def _condition(self, node: yaml.Node | None, what: str, floats: set[str]) -> Condition | None:
        if node is None:
            return None
        text = self.string(node, what)
        if text is None:
            return None
        try:
            return Condition.compile(text, floats)
        except ExpressionError as exc:
            self.error(node, str(exc).replace("condition", what, 1))
            return None

    def _check_symbols(
        self,
        node: yaml.Node,
        what: str,
        symbols: frozenset[str],
        metric: MetricSelector | None,
        has_metric: bool,
        threshold: float | None,
    ) -> None:
        if "threshold" in symbols and threshold is None:
            self.error(node, f"{what} uses 'threshold' but the rule sets no threshold")
        if has_metric and metric is None:
            return  # the metric itself is broken and reported; do not guess further
        for name in sorted(symbols & set(RESOURCE_FIELDS)):
            if metric is None or metric.name != name:
                reads = metric.name if metric is not None else "no metric"
                self.error(
                    node,
                    f"{what} uses {name!r}, which exists only in rules on metric "
                    f"{name!r} (this rule reads {reads})",
                )
        if metric is None:
            for name in sorted(symbols & _BASE_FIELDS):
                self.error(node, f"{what} uses {name!r} but the rule has no metric (only ratios)")
