"""The fields a condition reads, computed from the merged aggregate of one group and window.

==========================  ===================================================================
field                       meaning
==========================  ===================================================================
``count``, ``errors``       events, and events with ``success=false``
``sum``, ``min``, ``max``   of the event values
``avg``, ``value``          mean value (``value`` is the seed's name for it)
``p50``, ``p95``, ``p99``   percentiles (exact below 256 values, KLL sketch above)
``distinct_users``          distinct ``user`` ids (exact, HLL above 256)
``error_rate``              ``errors / count * 100`` (percent of failed operations)
``avg_response_time``       ``avg`` (seconds, for performance metrics)
``throughput``              ``count / window width`` (events per second)
``cpu_usage`` ...           ``avg`` of that metric; only in rules on ``cpu_usage``, likewise
                            ``memory_usage``, ``disk_usage``, ``quota_utilization``
``threshold``               the rule's ``threshold``
<ratio name>                ``numerator.field / denominator.field * scale`` (rule ``ratios``)
``tenant``, ``labels``      the group's tenant (string) and labels (mapping)
==========================  ===================================================================

A field that has no value in a window (a ratio over an empty denominator, the main metric's
fields in a ratio rule whose main metric sent nothing) is ``None``; the engine then treats the
group as having no data in that window instead of evaluating the condition.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from qesmon import vocabulary
from qesmon.sketch import Agg
from rules.model import Rule

#: fields of every window
WINDOW_FIELDS = (
    "count",
    "errors",
    "sum",
    "min",
    "max",
    "avg",
    "p50",
    "p95",
    "p99",
    "distinct_users",
    "value",
)
#: derived fields of every window
DERIVED_FIELDS = ("error_rate", "avg_response_time", "throughput")
#: fields that exist only in rules whose metric has the same name (their value is ``avg``)
RESOURCE_FIELDS = (
    vocabulary.QUOTA_UTILIZATION,
    vocabulary.CPU_USAGE,
    vocabulary.MEMORY_USAGE,
    vocabulary.DISK_USAGE,
)
#: every float name a condition may use (plus ``threshold`` and the rule's ratios)
FLOAT_FIELDS = frozenset(WINDOW_FIELDS + DERIVED_FIELDS + RESOURCE_FIELDS)
#: fields a ratio can divide (additive ones make most sense, all are allowed)
RATIO_FIELDS = tuple(f for f in WINDOW_FIELDS if f != "value")
_ADDITIVE = frozenset({"count", "errors", "sum", "distinct_users"})
_PERCENTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}


class Sums:
    """The scalar part of merged aggregates (count, errors, sum, min, max): what a group needs
    when its rule reads no percentile or distinct count, at a fraction of ``Agg.merge``."""

    __slots__ = ("count", "errors", "max", "min", "sum")
    count: int
    errors: int
    sum: float
    min: float
    max: float

    def __init__(self, first: Agg | Sums) -> None:
        self.count = first.count
        self.errors = first.errors
        self.sum = first.sum
        self.min = first.min
        self.max = first.max

    def merge(self, other: Agg | Sums) -> None:
        self.count += other.count
        self.errors += other.errors
        self.sum += other.sum
        if other.min < self.min:
            self.min = other.min
        if other.max > self.max:
            self.max = other.max


def agg_field(agg: Agg | Sums | None, name: str, width: int) -> float | None:
    """One float field of an aggregate (see the module table); None when undefined."""
    if agg is None or agg.count == 0:
        return 0.0 if agg is not None and name in _ADDITIVE else None
    if name == "count":
        return float(agg.count)
    if name == "errors":
        return float(agg.errors)
    if name == "sum":
        return agg.sum
    if name == "min":
        return agg.min
    if name == "max":
        return agg.max
    if name in ("avg", "value", "avg_response_time") or name in RESOURCE_FIELDS:
        return agg.sum / agg.count
    if name in _PERCENTILES:
        assert isinstance(agg, Agg), "percentiles need the merged sketch"
        return agg.quantiles((_PERCENTILES[name],))[0]
    if name == "distinct_users":
        assert isinstance(agg, Agg), "distinct counts need the merged sketch"
        return float(agg.distinct_users())
    if name == "error_rate":
        return agg.errors / agg.count * 100.0
    if name == "throughput":
        return agg.count / width
    raise KeyError(name)


def ratio_value(
    num: Agg | Sums | None, den: Agg | Sums | None, field: str, scale: float, width: int
) -> float | None:
    """``num.field / den.field * scale``; None when the denominator is absent or zero.

    An absent numerator counts as 0 for additive fields (no signups in a window with visits
    is a conversion rate of 0 %, not a missing one).
    """
    bottom = agg_field(den, field, width)
    if not bottom:
        return None
    top = agg_field(num if num is not None else Agg(), field, width)
    if top is None:
        return None
    return top / bottom * scale


def compute(
    names: Iterable[str],
    width: int,
    main: Agg | Sums | None,
    parts: dict[int, Agg | Sums],
    rule: Rule,
    tenant: str,
    labels: tuple[tuple[str, str], ...],
) -> dict[str, Any]:
    """The requested fields for one group and window.

    ``parts`` maps the index of each selector of ``rule.selectors`` to the merged aggregate
    of its series in the group (``main`` is ``parts[0]`` when the rule has a main metric).
    """
    out: dict[str, Any] = {}
    for name in names:
        if name == "threshold":
            out[name] = rule.threshold
        elif name == "tenant":
            out[name] = tenant
        elif name == "labels":
            out[name] = dict(labels)
        elif name in FLOAT_FIELDS:
            out[name] = agg_field(main, name, width)
        else:
            selectors = rule.selectors
            for ratio in rule.ratios:
                if ratio.name == name:
                    out[name] = ratio_value(
                        parts.get(selectors.index(ratio.numerator)),
                        parts.get(selectors.index(ratio.denominator)),
                        ratio.field,
                        ratio.scale,
                        width,
                    )
                    break
            else:
                raise KeyError(name)
    return out
