"""Annotation text of an alert transition: a rule's ``{{ placeholders }}`` filled in. Pure.

A placeholder (:data:`rules.model.PLACEHOLDER`) is a field of the window (``{{ p95 }}``,
computed for the annotation when the condition did not need it), a label of the alert
(``{{ labels.endpoint }}``; a missing one reads empty) or one of
:data:`rules.model.META_PLACEHOLDERS` (``value``, ``tenant``, ``rule_id``, ``rule_name``,
``severity``, ``threshold``). Numbers are written for people: whole ones without decimals,
two decimals from 1 up, three significant digits below; a missing value is empty. The engine
renders annotations once, when a transition happens, so every reader shows the same text::

    render("{{ value }} % errors on {{ labels.endpoint }}", rule, alert, labels, values, parts, 10)
"""

from __future__ import annotations

from typing import Protocol

from qesmon.sketch import Agg
from rules.fields import Sums, compute
from rules.model import META_PLACEHOLDERS, PLACEHOLDER, Rule


class AlertView(Protocol):
    """What rendering reads of an alert: its tenant, its group's labels, its last value."""

    @property
    def tenant(self) -> str: ...
    @property
    def labels(self) -> tuple[tuple[str, str], ...]: ...
    @property
    def value(self) -> float | None: ...


def render(
    text: str,
    rule: Rule,
    alert: AlertView,
    labels: dict[str, str],
    values: dict[str, object] | None,
    parts: dict[int, Agg | Sums],
    width: int,
) -> str:
    """``text`` with its placeholders filled in; ``values`` None when the transition is not
    a window's (no data, rule removed): then fields read empty and ``value`` is the last."""
    if "{{" not in text:
        return text
    wanted = {m.group(1) for m in PLACEHOLDER.finditer(text)}
    fields: dict[str, object] = {}
    if values is not None:
        names = {w for w in wanted if "." not in w and w not in META_PLACEHOLDERS} - set(values)
        main = parts.get(0) if rule.metric is not None else None
        fields = {
            **values,
            **compute(names, width, main, parts, rule, alert.tenant, alert.labels),
        }
    meta = {
        "value": alert.value if values is None else values.get(rule.value_field),
        "tenant": alert.tenant,
        "rule_id": rule.id,
        "rule_name": rule.name,
        "severity": rule.severity.value,
        "threshold": rule.threshold,
    }

    def one(match: object) -> str:
        ref = match.group(1)  # type: ignore[attr-defined]
        if ref.startswith("labels."):
            return labels.get(ref[7:], "")
        value = meta[ref] if ref in meta else fields.get(ref)
        return _fmt(value)

    return PLACEHOLDER.sub(one, text)


def _fmt(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value == int(value) and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"
    return str(value)
