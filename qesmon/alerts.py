"""Alert states and the alert transition record shared by rules, notifier and API.

The pipeline (``rules``) produces :class:`AlertTransition` records; they go to the
``alerts``/``alert_events`` tables and to the ``qes:alerts`` stream, where the notifier reads
them. :meth:`AlertTransition.to_fields` / :meth:`AlertTransition.from_fields` are the stream
entry format (flat string fields, JSON for the mappings). A transition is identified by
``(fingerprint, to_state, at)``: a pipeline replay may emit it twice, consumers dedupe on
:attr:`AlertTransition.key`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from qesmon.errors import ContractError


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class AlertState(StrEnum):
    INACTIVE = "inactive"
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class AlertTransition:
    """One change of an alert's state, caused by the window ending at ``at`` (Unix seconds)."""

    fingerprint: str
    rule_id: str
    rule_name: str
    severity: Severity
    from_state: AlertState
    to_state: AlertState
    at: float
    value: float | None
    tenant: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    channels: tuple[str, ...] = ()
    escalation: str | None = None
    repeat_interval: float | None = None
    template: str | None = None

    @property
    def key(self) -> str:
        """Identity of this transition, stable across pipeline replays."""
        return f"{self.fingerprint}:{self.to_state.value}:{self.at:.3f}"

    def to_fields(self) -> dict[str, str]:
        fields = {
            "fingerprint": self.fingerprint,
            "rule_id": self.rule_id,
            "rule_name": self.rule_name,
            "severity": self.severity.value,
            "from_state": self.from_state.value,
            "to_state": self.to_state.value,
            "at": repr(self.at),
            "value": "" if self.value is None else repr(self.value),
            "tenant": self.tenant,
            "labels": orjson.dumps(dict(self.labels)).decode(),
            "annotations": orjson.dumps(dict(self.annotations)).decode(),
            "channels": ",".join(self.channels),
            "escalation": self.escalation or "",
            "repeat_interval": "" if self.repeat_interval is None else repr(self.repeat_interval),
            "template": self.template or "",
        }
        return fields

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> AlertTransition:
        text = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in fields.items()
        }
        try:
            return cls(
                fingerprint=text["fingerprint"],
                rule_id=text["rule_id"],
                rule_name=text["rule_name"],
                severity=Severity(text["severity"]),
                from_state=AlertState(text["from_state"]),
                to_state=AlertState(text["to_state"]),
                at=float(text["at"]),
                value=float(text["value"]) if text.get("value") else None,
                tenant=text.get("tenant", ""),
                labels=orjson.loads(text.get("labels") or "{}"),
                annotations=orjson.loads(text.get("annotations") or "{}"),
                channels=tuple(c for c in text.get("channels", "").split(",") if c),
                escalation=text.get("escalation") or None,
                repeat_interval=float(text["repeat_interval"])
                if text.get("repeat_interval")
                else None,
                template=text.get("template") or None,
            )
        except (KeyError, ValueError, orjson.JSONDecodeError) as exc:
            raise ContractError(f"alert stream entry is malformed: {exc!r}") from exc
