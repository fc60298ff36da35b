"""Crafted window results and rule sets for the rules tests."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from qesmon.alerts import AlertTransition
from qesmon.series import Series, WindowResult
from qesmon.sketch import Agg
from rules.engine import Evaluator
from rules.loader import load_rules, parse_text
from rules.model import RuleSet

REPO = Path(__file__).parents[2]


def default_rules() -> RuleSet:
    rules, errors = load_rules([REPO / "rules"])
    assert errors == []
    return rules


def rules_from(text: str, name: str = "test.yaml") -> RuleSet:
    result = parse_text(text, Path(name))
    assert result.errors == [], [str(e) for e in result.errors]
    return RuleSet(result.rules)


def window(
    name: str,
    start: float,
    values: Sequence[float],
    *,
    width: int = 10,
    failures: int = 0,
    tenant: str = "",
    type: str = "performance",
    revision: int = 0,
    users: Iterable[str] = (),
    **labels: str,
) -> WindowResult:
    """One closed window of one series; the first ``failures`` events have success=false."""
    agg = Agg()
    user_list = list(users)
    for i, value in enumerate(values):
        agg.add(value, i >= failures, user_list[i] if i < len(user_list) else None)
    series = Series(name, type, tenant, tuple(sorted(labels.items())))
    return WindowResult(series, width, start, agg, revision)


def feed(ev: Evaluator, windows: Iterable[WindowResult]) -> list[AlertTransition]:
    """Add windows one end-time at a time, advancing the watermark to each end."""
    out: list[AlertTransition] = []
    by_end: dict[float, list[WindowResult]] = {}
    for w in windows:
        by_end.setdefault(w.end, []).append(w)
    for end in sorted(by_end):
        ev.add(by_end[end])
        out += ev.advance(end)
    return out


def states(transitions: Iterable[AlertTransition]) -> list[tuple[str, str, float]]:
    """(from, to, at) of each transition, for compact assertions."""
    return [(t.from_state.value, t.to_state.value, t.at) for t in transitions]
