"""Alert states and the alert transition record shared by rules, notifier and API.

The pipeline (``rules``) produces :class:`AlertTransition` records; they go to the
``alerts``/``alert_events`` tables and to the ``qes:alerts`` stream, where the notifier reads
them. :meth:`AlertTransition.to_fields` / :meth:`AlertTransition.from_fields` are the stream
entry format (flat string fields, JSON for the mappings). A transition is identified by
``(fingerprint, to_state, at)``: a pipeline replay may emit it twice, consumers dedupe on
:attr:`AlertTransition.key`.

Readers take an entry as untrusted bytes: :meth:`AlertTransition.from_fields` returns a
transition the database can store or raises :class:`~qesmon.errors.ContractError` naming the
field, never anything else. It requires UTF-8 keys and values (at most ``MAX_FIELDS``
fields); ``fingerprint``, ``rule_id``, ``severity``, ``from_state``, ``to_state``, ``at``;
names and ids (fingerprint, rule id, tenant, channels, escalation, template) printable, at
most ``MAX_IDENT`` characters; ``rule_name`` and every label and annotation value without
NUL (PostgreSQL text and jsonb cannot hold it) and bounded; ``labels`` and ``annotations``
JSON objects of string to string (at most ``MAX_PAIRS`` pairs, ``MAX_JSON_BYTES``);
``at``, ``value`` and ``repeat_interval`` finite numbers (``at`` within what a timestamptz
holds, ``repeat_interval`` not negative). Unknown fields are ignored. :meth:`to_fields`
writes a value that is not finite as no value, so what it writes always reads back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

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
            "value": _number_text(self.value),
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
        """The transition an alert stream entry holds (bytes or text fields).

        Raises :class:`ContractError` naming the field, and nothing else, whatever the entry
        holds; the rules are in the module docstring."""
        text = _decode(fields)
        return cls(
            fingerprint=_ident(text, "fingerprint", required=True),
            rule_id=_ident(text, "rule_id", required=True),
            rule_name=_storable(_field(text, "rule_name"), "rule_name", MAX_NAME),
            severity=_enum(Severity, text, "severity"),
            from_state=_enum(AlertState, text, "from_state"),
            to_state=_enum(AlertState, text, "to_state"),
            at=_instant(text),
            value=_number(text, "value"),
            tenant=_ident(text, "tenant"),
            labels=_mapping(text, "labels", MAX_LABEL_VALUE),
            annotations=_mapping(text, "annotations", MAX_ANNOTATION_VALUE),
            channels=_channels(text),
            escalation=_ident(text, "escalation") or None,
            repeat_interval=_number(text, "repeat_interval", low=0.0),
            template=_ident(text, "template") or None,
        )


def _number_text(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else repr(value)


# -- reading an entry (the stream is written by us, but read as untrusted bytes) --------------

#: more fields than this and the entry is not one of ours
MAX_FIELDS = 64
#: fingerprint, rule id, tenant, channel list, escalation and template names (characters)
MAX_IDENT = 200
MAX_NAME = 1000
#: the JSON text of ``labels`` / ``annotations`` (bytes), checked before parsing
MAX_JSON_BYTES = 256 * 1024
MAX_PAIRS = 64
MAX_LABEL_VALUE = 1000
MAX_ANNOTATION_VALUE = 16 * 1024
#: a number field's text (bytes)
MAX_NUMBER = 64
#: 9999-12-31T23:59:59Z, the last second a timestamptz column and ``datetime`` both hold
MAX_AT = 253402300799.0


def _decode(fields: Mapping[Any, Any]) -> dict[str, str]:
    """Keys and values as text; bytes must be UTF-8 and text must be encodable as UTF-8."""
    if not isinstance(fields, Mapping):
        raise ContractError(f"alert stream entry: expected fields, got {type(fields).__name__}")
    if len(fields) > MAX_FIELDS:
        raise ContractError(f"alert stream entry: {len(fields)} fields, at most {MAX_FIELDS}")
    out: dict[str, str] = {}
    for raw_key, raw_value in fields.items():
        key = _utf8(raw_key, None, limit=MAX_IDENT)
        out[key] = _utf8(raw_value, key, limit=None)
    return out


def _utf8(raw: object, field: str | None, limit: int | None) -> str:
    what = "a field name" if field is None else field
    if isinstance(raw, bytes | bytearray | memoryview):
        data = bytes(raw)
        if limit is not None and len(data) > limit:
            raise ContractError(f"{what}: {len(data)} bytes, at most {limit}", field)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ContractError(
                f"{what}: not UTF-8 (byte {exc.start}: {data[exc.start : exc.start + 4]!r})",
                field,
            ) from None
    if isinstance(raw, str):
        if limit is not None and len(raw) > limit:
            raise ContractError(f"{what}: {len(raw)} characters, at most {limit}", field)
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError as exc:
            problem = f"not UTF-8 (lone surrogate at {exc.start})"
            raise ContractError(f"{what}: {problem}", field) from None
        return raw
    raise ContractError(f"{what}: expected a string, got {type(raw).__name__}", field)


def _field(text: Mapping[str, str], name: str, *, required: bool = True) -> str:
    try:
        return text[name]
    except KeyError:
        if required:
            raise ContractError(f"{name}: missing", name) from None
        return ""


def _storable(value: str, name: str, limit: int) -> str:
    """``value`` if the database can hold it: at most ``limit`` characters, no NUL."""
    if len(value) > limit:
        raise ContractError(f"{name}: {len(value)} characters, at most {limit}", name)
    if "\x00" in value:
        raise ContractError(f"{name}: contains NUL, which the database cannot store", name)
    return value


def _ident(
    text: Mapping[str, str], name: str, *, required: bool = False, limit: int = MAX_IDENT
) -> str:
    """A name or id: printable (no control characters), at most ``limit`` characters."""
    value = _field(text, name, required=required)
    if required and not value:
        raise ContractError(f"{name}: empty", name)
    if len(value) > limit:
        raise ContractError(f"{name}: {len(value)} characters, at most {limit}", name)
    if not value.isprintable():
        raise ContractError(f"{name}: contains control or unprintable characters", name)
    return value


_E = TypeVar("_E", Severity, AlertState)


def _enum(kind: type[_E], text: Mapping[str, str], name: str) -> _E:
    value = _field(text, name)
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise ContractError(f"{name}: {value[:50]!r} is not one of {allowed}", name) from None


def _number(
    text: Mapping[str, str],
    name: str,
    *,
    required: bool = False,
    low: float | None = None,
    high: float | None = None,
) -> float | None:
    """A finite number (empty means None unless ``required``), within ``[low, high]``."""
    raw = _field(text, name, required=required)
    if not raw:
        if required:
            raise ContractError(f"{name}: empty", name)
        return None
    if len(raw) > MAX_NUMBER:
        raise ContractError(f"{name}: {len(raw)} characters, not a number", name)
    try:
        value = float(raw)
    except ValueError:
        raise ContractError(f"{name}: {raw[:50]!r} is not a number", name) from None
    if not math.isfinite(value):
        raise ContractError(f"{name}: {raw[:50]!r} is not a finite number", name)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ContractError(f"{name}: {value!r} is outside [{low}, {high}]", name)
    return value


def _instant(text: Mapping[str, str]) -> float:
    """``at``: required, within what a timestamptz column holds."""
    at = _number(text, "at", required=True, low=0.0, high=MAX_AT)
    assert at is not None  # required
    return at


def _mapping(text: Mapping[str, str], name: str, value_limit: int) -> dict[str, str]:
    """A JSON object of string to string (empty means ``{}``), bounded, storable as jsonb."""
    raw = _field(text, name, required=False)
    if not raw:
        return {}
    if len(raw) > MAX_JSON_BYTES:  # characters, so at most 4x as many bytes were read
        raise ContractError(f"{name}: {len(raw)} characters, at most {MAX_JSON_BYTES}", name)
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ContractError(f"{name}: not valid JSON ({exc})", name) from None
    if not isinstance(obj, dict):
        raise ContractError(f"{name}: expected a JSON object, got {type(obj).__name__}", name)
    if len(obj) > MAX_PAIRS:
        raise ContractError(f"{name}: {len(obj)} pairs, at most {MAX_PAIRS}", name)
    for key, value in obj.items():
        if not isinstance(value, str):
            raise ContractError(
                f"{name}: value of {key[:50]!r} must be a string, got {type(value).__name__}",
                name,
            )
        if not key or len(key) > MAX_IDENT or not key.isprintable():
            raise ContractError(
                f"{name}: key {key[:50]!r} must be 1 to {MAX_IDENT} printable characters", name
            )
        _storable(value, f"{name}.{key}", value_limit)
    return obj


def _channels(text: Mapping[str, str]) -> tuple[str, ...]:
    value = _ident(text, "channels", limit=MAX_NAME)
    return tuple(c for c in value.split(",") if c)
