"""What a rule is once loaded: typed, validated, with its condition compiled.

The loader (:mod:`rules.loader`) builds these from YAML; the engine (:mod:`rules.engine`)
reads them. Nothing here parses files or touches servers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from qesmon.alerts import Severity
from qesmon.series import Series
from rules.expr import Condition

#: ``{{ name }}`` placeholders of annotations (``{{ labels.x }}`` for a label)
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_.-]+)?)\s*\}\}")
#: placeholders that are not window fields
META_PLACEHOLDERS = frozenset({"value", "tenant", "rule_id", "rule_name", "severity", "threshold"})
#: fields that need the merged sketches (percentiles, distinct users), not just the sums
SKETCH_FIELDS = frozenset({"p50", "p95", "p99", "distinct_users"})

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(raw: object) -> float:
    """Seconds from ``30s``, ``5m``, ``1h30m``, ``2d``, ``500ms`` or a plain number of seconds.

    Raise ValueError saying what is accepted.
    """
    if isinstance(raw, bool):
        raise ValueError(f"{raw!r} is not a duration")
    if isinstance(raw, int | float):
        if raw < 0 or raw != raw or raw == float("inf"):
            raise ValueError(f"{raw!r} is not a duration (must be a finite number >= 0)")
        return float(raw)
    if isinstance(raw, str):
        text = raw.strip()
        pos = 0
        total = 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            pos = match.end()
        if text and pos == len(text):
            return total
    raise ValueError(f"{raw!r} is not a duration (use e.g. 30s, 5m, 1h30m, 2d)")


def format_duration(seconds: float) -> str:
    """The inverse of :func:`parse_duration` for whole seconds (``90`` -> ``1m30s``)."""
    if seconds != int(seconds):
        return f"{seconds}s"
    rest = int(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts) or "0s"


@dataclass(frozen=True, slots=True)
class LabelMatcher:
    """One label condition of a metric selector; a missing label reads as ``""``.

    ``values``: the label must equal one of them; ``regex``: it must fully match;
    ``negate`` inverts the regex (``not_regex``).
    """

    key: str
    values: frozenset[str] | None = None
    regex: re.Pattern[str] | None = None
    negate: bool = False

    def matches(self, series: Series) -> bool:
        value = series.label(self.key, "") or ""
        if self.values is not None:
            return value in self.values
        assert self.regex is not None
        return (self.regex.fullmatch(value) is not None) != self.negate


@dataclass(frozen=True, slots=True)
class MetricSelector:
    """Which series a rule reads: a metric name, optionally its type, tenant and labels."""

    name: str
    type: str | None = None
    tenant: str | None = None
    labels: tuple[LabelMatcher, ...] = ()

    def matches(self, series: Series) -> bool:
        if series.name != self.name:
            return False
        if self.type is not None and series.type != self.type:
            return False
        if self.tenant is not None and series.tenant != self.tenant:
            return False
        return all(m.matches(series) for m in self.labels)


@dataclass(frozen=True, slots=True)
class Ratio:
    """A derived field ``numerator.field / denominator.field * scale`` in the same window and
    group; undefined (the window counts as no data) when the denominator is 0 or absent."""

    name: str
    numerator: MetricSelector
    denominator: MetricSelector
    field: str = "count"
    scale: float = 100.0


@dataclass(frozen=True, eq=False)
class Rule:
    """One validated alert rule. ``source`` is ``file:line`` of its definition."""

    id: str
    name: str
    severity: Severity
    condition: Condition
    metric: MetricSelector | None = None
    group_by: tuple[str, ...] = ()
    threshold: float | None = None
    for_s: float = 0.0
    window: int = 10
    keep_firing_for: float = 20.0
    no_data_after: float = 300.0
    resolve_condition: Condition | None = None
    ratios: tuple[Ratio, ...] = ()
    value_field: str = "value"
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    channels: tuple[str, ...] = ()
    escalation: str | None = None
    repeat_interval: float | None = None
    template: str | None = None
    source: str = ""
    #: canonical text of the definition, to tell an edited rule from an unchanged one
    digest: str = ""

    @cached_property
    def selectors(self) -> tuple[MetricSelector, ...]:
        """Every selector the rule reads, the main metric first, without repeats."""
        out: list[MetricSelector] = []
        candidates = [self.metric] if self.metric is not None else []
        for ratio in self.ratios:
            candidates += [ratio.numerator, ratio.denominator]
        for sel in candidates:
            if sel not in out:
                out.append(sel)
        return tuple(out)

    @cached_property
    def metric_names(self) -> frozenset[str]:
        return frozenset(sel.name for sel in self.selectors)

    @cached_property
    def symbols(self) -> frozenset[str]:
        """Every field the conditions and the alert value need for one evaluation."""
        names = set(self.condition.symbols) | {self.value_field}
        if self.resolve_condition is not None:
            names |= self.resolve_condition.symbols
        return frozenset(names)

    @cached_property
    def annotation_fields(self) -> frozenset[str]:
        """Window fields the annotations show (computed only when a transition happens)."""
        refs = {
            m.group(1) for text in self.annotations.values() for m in PLACEHOLDER.finditer(text)
        }
        return frozenset(r for r in refs if "." not in r and r not in META_PLACEHOLDERS)

    @cached_property
    def needs_sketch(self) -> bool:
        """Whether merging a group needs the sketches, or count/errors/sum/min/max suffice."""
        names = self.symbols | self.annotation_fields
        return bool(names & SKETCH_FIELDS) or any(
            r.field in SKETCH_FIELDS and r.name in names for r in self.ratios
        )

    def __repr__(self) -> str:
        return f"Rule({self.id!r}, {self.source})"


class RuleSet:
    """An immutable set of rules with unique ids, indexed by (metric name, window width) so
    that a window result costs a dict lookup plus the rules that read its metric::

        rules, errors = load_rules([Path("rules")])
        for rule in rules.matching("http_request", 10): ...
    """

    __slots__ = ("_by_id", "_index", "rules")

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self._by_id = {rule.id: rule for rule in self.rules}
        if len(self._by_id) != len(self.rules):
            raise ValueError("rule ids must be unique in a RuleSet")
        index: dict[tuple[str, int], list[Rule]] = {}
        for rule in self.rules:
            for name in sorted(rule.metric_names):
                index.setdefault((name, rule.window), []).append(rule)
        self._index = {key: tuple(value) for key, value in index.items()}

    def matching(self, name: str, width: int) -> tuple[Rule, ...]:
        """The rules that read metric ``name`` at window width ``width``."""
        return self._index.get((name, width), ())

    def get(self, rule_id: str) -> Rule | None:
        return self._by_id.get(rule_id)

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(self._by_id)

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def __contains__(self, rule_id: object) -> bool:
        return rule_id in self._by_id

    def __repr__(self) -> str:
        return f"RuleSet({len(self.rules)} rules)"
