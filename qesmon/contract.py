"""The event contract (schema v1): one parser and validator for every stream entry.

A stream entry is either one event in flat string fields (``name``, ``value``, ``type``,
``ts``, ``tenant``, ``user``, ``labels``, ``success``, ``v``) or a single field ``events``
holding a JSON array of event objects with the same fields. :func:`parse_entry` never
raises: it returns the valid events and, for everything else, a :class:`Rejection` whose
``error`` says which field is wrong and why::

    events, rejections = parse_entry("1700000000000-0", {"name": "x", "value": "1"})

:func:`encode_event` and :func:`encode_batch` are the inverse, used by the SDK and the API.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson

from qesmon.errors import ContractError


class MetricType(StrEnum):
    """The kinds of event the platform sends; ``custom`` when not given."""

    REVENUE = "revenue"
    FEATURE_USAGE = "feature_usage"
    BUSINESS_EVENT = "business_event"
    PERFORMANCE = "performance"
    USAGE = "usage"
    SYSTEM = "system"
    CUSTOM = "custom"


SCHEMA_VERSION = "1"
MAX_NAME = 200
MAX_LABELS = 32
MAX_LABEL_KEY = 100
MAX_LABEL_VALUE = 1000
MAX_ID = 200  # tenant and user ids
MAX_BATCH = 10_000
#: events more than this far ahead of the entry's own time are refused (clock skew bound)
MAX_FUTURE_SECONDS = 300.0
#: event times before 2000-01-01 are refused as nonsense
MIN_TS = 946_684_800.0

FIELDS = frozenset(("name", "value", "type", "ts", "tenant", "user", "labels", "success", "v"))
_TYPES = {t.value: t.value for t in MetricType}
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_KEY = re.compile(r"[a-zA-Z_][a-zA-Z0-9_.-]*")
_TRUE = frozenset(("true", "1", "yes", "True", "TRUE"))
_FALSE = frozenset(("false", "0", "no", "False", "FALSE"))
_TRUE_FALSE = _TRUE | _FALSE
_EMPTY: tuple[tuple[str, str], ...] = ()
# Names and label sets repeat endlessly; remembering the ones already validated makes the
# parser several times faster. Bounded: cleared when full.
_CACHE_LIMIT = 50_000
_good_names: set[str] = set()
_good_labels: dict[str, tuple[tuple[str, str], ...]] = {}
_good_label_items: dict[tuple[Any, ...], tuple[tuple[str, str], ...]] = {}
_good_ids: set[str] = set()


@dataclass(slots=True)
class Event:
    """One valid event. ``labels`` are sorted (key, value) pairs; ``ts`` is Unix seconds.

    Treat it as immutable; it is not frozen only because frozen dataclasses cost 3x to build
    and the pipeline builds hundreds of thousands per second.
    """

    name: str
    value: float
    type: str
    ts: float
    tenant: str
    user: str | None
    labels: tuple[tuple[str, str], ...]
    success: bool


@dataclass(slots=True, frozen=True)
class Rejection:
    """An entry (``index`` None) or one element of an ``events`` entry that broke the contract.

    ``fields`` are the original fields (for a batch element: ``event`` holds its JSON and
    ``index`` its position), so the dead-letter stream keeps everything that was sent.
    """

    source_id: str
    error: str
    fields: dict[str, str]
    index: int | None = None


class _Invalid(Exception):
    pass


def entry_time(entry_id: str) -> float:
    """The time (Unix seconds) encoded in a stream entry ID ``<ms>-<seq>``."""
    ms, _, _ = entry_id.partition("-")
    return int(ms) / 1000.0


def _text(fields: Mapping[Any, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in fields.items():
        key = k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)
        out[key] = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
    return out


def _all_str(fields: dict[Any, Any]) -> bool:
    for key, value in fields.items():
        if type(key) is not str or type(value) is not str:
            return False
    return True


def _parse_rfc3339(raw: str) -> float:
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise _Invalid(f"ts: {raw[:60]!r} is neither Unix seconds nor an RFC 3339 time") from None
    if parsed.tzinfo is None:
        raise _Invalid(f"ts: {raw[:60]!r} has no UTC offset (RFC 3339 needs one)")
    return parsed.timestamp()


def _parse_ts(raw: object, default: float) -> float:
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool):
        raise _Invalid("ts: expected Unix seconds or an RFC 3339 time, got a boolean")
    if isinstance(raw, int | float):
        ts = float(raw)
    elif isinstance(raw, str):
        try:
            ts = float(raw)
        except ValueError:
            ts = _parse_rfc3339(raw)
    else:
        raise _Invalid(f"ts: expected Unix seconds or an RFC 3339 time, got {type(raw).__name__}")
    if not math.isfinite(ts):
        raise _Invalid(f"ts: {ts} is not a finite time")
    if ts < MIN_TS:
        raise _Invalid(f"ts: {ts} is before 2000-01-01 (milliseconds instead of seconds?)")
    if ts > default + MAX_FUTURE_SECONDS:
        raise _Invalid(
            f"ts: {ts} is {ts - default:.0f} s ahead of the entry's time "
            f"(at most {MAX_FUTURE_SECONDS:.0f} s allowed)"
        )
    return ts


def _parse_labels(raw: object) -> tuple[tuple[str, str], ...]:
    if raw is None or raw == "":
        return _EMPTY
    if isinstance(raw, str):
        cached = _good_labels.get(raw)
        if cached is not None:
            return cached
        labels = _check_labels(_loads_labels(raw))
        if len(_good_labels) >= _CACHE_LIMIT:
            _good_labels.clear()
        _good_labels[raw] = labels
        return labels
    if type(raw) is dict:
        # batched events carry labels as objects: remember them by their items
        try:
            key = tuple(raw.items())
            cached = _good_label_items.get(key)
        except TypeError:  # an unhashable value: let the full check say what is wrong
            return _check_labels(raw)
        if cached is not None:
            return cached
        labels = _check_labels(raw)
        if len(_good_label_items) >= _CACHE_LIMIT:
            _good_label_items.clear()
        _good_label_items[key] = labels
        return labels
    return _check_labels(raw)


def _loads_labels(raw: str) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _Invalid(f"labels: not valid JSON ({exc})") from None


def _check_labels(obj: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(obj, dict):
        raise _Invalid(f"labels: expected a JSON object, got {type(obj).__name__}")
    if len(obj) > MAX_LABELS:
        raise _Invalid(f"labels: {len(obj)} pairs, at most {MAX_LABELS} allowed")
    for key, value in obj.items():
        if not isinstance(value, str):
            raise _Invalid(
                f"labels: value of {key[:50]!r} must be a string, got {type(value).__name__}"
            )
        if len(key) > MAX_LABEL_KEY or not _LABEL_KEY.fullmatch(key):
            raise _Invalid(
                f"labels: key {key[:50]!r} must match [a-zA-Z_][a-zA-Z0-9_.-]* "
                f"(at most {MAX_LABEL_KEY} chars)"
            )
        if len(value) > MAX_LABEL_VALUE:
            raise _Invalid(f"labels: value of {key!r} is longer than {MAX_LABEL_VALUE} chars")
    return tuple(sorted(obj.items()))


def _parse_id(field: str, raw: object) -> str | None:
    if raw is None or raw == "":
        return None
    if type(raw) is str and raw in _good_ids:
        return raw
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str):
        raise _Invalid(f"{field}: expected a string, got {type(raw).__name__}")
    if len(raw) > MAX_ID:
        raise _Invalid(f"{field}: longer than {MAX_ID} chars")
    if not raw.isprintable():
        raise _Invalid(f"{field}: contains control characters")
    if len(_good_ids) >= _CACHE_LIMIT:
        _good_ids.clear()
    _good_ids.add(raw)
    return raw


def _fast_event(obj: Mapping[str, Any], default_ts: float) -> Event | None:
    """The common case, decided with cheap checks against values already validated once.

    Returns None whenever anything is new or unusual; :func:`_parse_event` then runs the full
    checks (which also say precisely what is wrong, and remember what was right).
    """
    if len(obj) > len(FIELDS) or not FIELDS.issuperset(obj):
        return None
    get = obj.get
    name = get("name")
    if name.__class__ is not str or name not in _good_names:
        return None
    value: Any = get("value")
    cls = value.__class__
    if cls is str:
        try:
            value = float(value)
        except ValueError:
            return None
    elif cls is int:
        try:
            value = float(value)
        except OverflowError:
            return None
    elif cls is not float:
        return None
    if value - value != 0.0:  # inf or nan
        return None
    version = get("v")
    if version is not None and version != "1" and version != 1:
        return None
    raw_type = get("type")
    mtype = (
        "custom"
        if raw_type is None
        else _TYPES.get(raw_type)
        if raw_type.__class__ is str
        else None
    )
    if mtype is None:
        return None
    raw_success = get("success")
    if raw_success is None or raw_success is True:
        success = True
    elif raw_success is False:
        success = False
    elif raw_success.__class__ is str and raw_success in _TRUE_FALSE:
        success = raw_success in _TRUE
    else:
        return None
    ts: Any = get("ts")
    if ts is None:
        ts = default_ts
    else:
        cls = ts.__class__
        if cls is str:
            try:
                ts = float(ts)
            except ValueError:
                return None
        elif cls is int:
            ts = float(ts)
        elif cls is not float:
            return None
        if not MIN_TS <= ts <= default_ts + MAX_FUTURE_SECONDS:  # also false for nan
            return None
    tenant = get("tenant")
    if tenant is None:
        tenant = ""
    elif tenant.__class__ is not str or (tenant and tenant not in _good_ids):
        return None
    user = get("user")
    if user == "":
        user = None
    elif user is not None and (user.__class__ is not str or user not in _good_ids):
        return None
    raw_labels = get("labels")
    if raw_labels is None:
        labels: tuple[tuple[str, str], ...] | None = _EMPTY
    elif raw_labels.__class__ is str:
        labels = _good_labels.get(raw_labels) if raw_labels else _EMPTY
    elif raw_labels.__class__ is dict:
        try:
            labels = _good_label_items.get(tuple(raw_labels.items()))
        except TypeError:
            return None
    else:
        return None
    if labels is None:
        return None
    return Event(name, value, mtype, ts, tenant, user, labels, success)


def _parse_event(obj: Mapping[str, Any], default_ts: float) -> Event:
    fast = _fast_event(obj, default_ts)
    if fast is not None:
        return fast
    if len(obj) > len(FIELDS) or not FIELDS.issuperset(obj):
        unknown = sorted(set(obj) - FIELDS)
        raise _Invalid(f"unknown field {unknown[0][:50]!r} (allowed: {', '.join(sorted(FIELDS))})")
    version = obj.get("v")
    if version is not None and str(version) != SCHEMA_VERSION:
        raise _Invalid(f"v: schema version {str(version)[:20]!r} is not supported (only 1)")
    name = obj.get("name")
    if name is None or name == "":
        raise _Invalid("name: missing")
    if not isinstance(name, str):
        raise _Invalid(f"name: expected a string, got {type(name).__name__}")
    if name not in _good_names:
        if len(name) > MAX_NAME or not _NAME.fullmatch(name):
            raise _Invalid(
                f"name: {name[:60]!r} must match [a-zA-Z_:][a-zA-Z0-9_:]* and be at most "
                f"{MAX_NAME} chars"
            )
        if len(_good_names) >= _CACHE_LIMIT:
            _good_names.clear()
        _good_names.add(name)
    raw_value = obj.get("value")
    if raw_value is None or raw_value == "":
        raise _Invalid("value: missing")
    if isinstance(raw_value, bool) or not isinstance(raw_value, str | int | float):
        raise _Invalid(f"value: expected a number, got {type(raw_value).__name__}")
    try:
        value = float(raw_value)
    except ValueError:
        raise _Invalid(f"value: {str(raw_value)[:60]!r} is not a number") from None
    if not math.isfinite(value):
        raise _Invalid(f"value: {raw_value!r} is not finite")
    raw_type = obj.get("type")
    if raw_type is None or raw_type == "":
        mtype = "custom"
    else:
        found = _TYPES.get(raw_type) if isinstance(raw_type, str) else None
        if found is None:
            raise _Invalid(f"type: {str(raw_type)[:60]!r} is not one of {', '.join(_TYPES)}")
        mtype = found
    raw_success = obj.get("success")
    if not isinstance(raw_success, str | bool | None):
        raise _Invalid(f"success: expected true/false, got {type(raw_success).__name__}")
    if raw_success is None or raw_success == "" or raw_success is True or raw_success in _TRUE:
        success = True
    elif raw_success is False or raw_success in _FALSE:
        success = False
    else:
        raise _Invalid(f"success: {str(raw_success)[:60]!r} is not true/false")
    return Event(
        name=name,
        value=value,
        type=mtype,
        ts=_parse_ts(obj.get("ts"), default_ts),
        tenant=_parse_id("tenant", obj.get("tenant")) or "",
        user=_parse_id("user", obj.get("user")),
        labels=_parse_labels(obj.get("labels")),
        success=success,
    )


def validate_event(obj: Mapping[str, Any], now: float) -> Event:
    """Validate one event object as the pipeline will (``now`` stands for the entry's time).

    Raises :class:`~qesmon.errors.ContractError` naming the field; used by the SDK and the API
    to refuse bad input at the caller's side.
    """
    try:
        return _parse_event(obj, now)
    except _Invalid as exc:
        message = str(exc)
        field, sep, _ = message.partition(":")
        raise ContractError(message, field if sep and field in FIELDS else None) from None


def parse_entry(
    entry_id: str | bytes, fields: Mapping[Any, Any]
) -> tuple[list[Event], list[Rejection]]:
    """Validate one stream entry; return its valid events and the rejected parts.

    Never raises for bad input: every problem becomes a Rejection with a reason.
    """
    sid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    # A client with decode_responses=True already gives str keys and values: skip the copy.
    text = fields if isinstance(fields, dict) and _all_str(fields) else _text(fields)
    try:
        default_ts = entry_time(sid)
    except ValueError:
        return [], [Rejection(sid, f"entry id {sid!r} is not <ms>-<seq>", text)]
    batch = text.get("events")
    if batch is None:
        try:
            return [_parse_event(text, default_ts)], []
        except _Invalid as exc:
            return [], [Rejection(sid, str(exc), text)]
    if len(text) != 1:
        others = sorted(set(text) - {"events"})
        return [], [Rejection(sid, f"events: must be the only field, also got {others[:5]}", text)]
    try:
        items = orjson.loads(batch)
    except orjson.JSONDecodeError as exc:
        return [], [Rejection(sid, f"events: not valid JSON ({exc})", text)]
    if not isinstance(items, list):
        return [], [
            Rejection(sid, f"events: expected a JSON array, got {type(items).__name__}", text)
        ]
    if len(items) > MAX_BATCH:
        return [], [
            Rejection(sid, f"events: {len(items)} events, at most {MAX_BATCH} allowed", text)
        ]
    events: list[Event] = []
    rejections: list[Rejection] = []
    for index, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise _Invalid(f"expected a JSON object, got {type(item).__name__}")
            events.append(_parse_event(item, default_ts))
        except _Invalid as exc:
            rejections.append(
                Rejection(
                    sid,
                    f"events[{index}]: {exc}",
                    {"event": orjson.dumps(item).decode(), "index": str(index)},
                    index,
                )
            )
    return events, rejections


def event_dict(
    name: str,
    value: float,
    *,
    type: str = "custom",
    ts: float | None = None,
    tenant: str | None = None,
    user: str | None = None,
    labels: Mapping[str, str] | None = None,
    success: bool = True,
) -> dict[str, Any]:
    """An event as the JSON object of an ``events`` batch, leaving out defaults."""
    obj: dict[str, Any] = {"name": name, "value": value}
    if type != "custom":
        obj["type"] = type
    if ts is not None:
        obj["ts"] = ts
    if tenant:
        obj["tenant"] = tenant
    if user:
        obj["user"] = user
    if labels:
        obj["labels"] = dict(labels)
    if not success:
        obj["success"] = False
    return obj


def encode_event(event: Mapping[str, Any]) -> dict[str, str]:
    """Flat string fields for ``XADD`` of one event object (see :func:`event_dict`)."""
    out: dict[str, str] = {}
    for key, value in event.items():
        if key == "labels":
            out[key] = orjson.dumps(value).decode()
        elif key == "success":
            out[key] = "true" if value else "false"
        else:
            out[key] = repr(value) if isinstance(value, float) else str(value)
    return out


def event_fields(event: Event) -> dict[str, str]:
    """Flat string fields of a parsed event (what a dead letter of a late event keeps)."""
    return encode_event(
        event_dict(
            event.name,
            event.value,
            type=event.type,
            ts=event.ts,
            tenant=event.tenant,
            user=event.user,
            labels=dict(event.labels),
            success=event.success,
        )
    )


def encode_batch(events: Iterable[Mapping[str, Any]]) -> dict[str, bytes]:
    """One ``events`` entry holding many event objects (at most MAX_BATCH)."""
    return {"events": orjson.dumps(list(events))}
