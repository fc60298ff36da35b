"""The event contract (schema v1): one parser and validator for every stream entry.

A stream entry is either one event in flat string fields (``name``, ``value``, ``type``,
``ts``, ``tenant``, ``user``, ``labels``, ``success``, ``v``) or a single field ``events``
holding a JSON array of event objects with the same fields. :func:`parse_entry` never
raises: it returns the valid events and, for everything else, a :class:`Rejection` whose
``error`` says which field is wrong and why::

    events, rejections = parse_entry("1700000000000-0", {"name": "x", "value": "1"})

This is the reference: :mod:`qesmon.columns` parses many entries at once to the same result,
faster, and :mod:`qesmon.encode` writes events as stream fields. Pure, apart from the caches
of values already validated.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
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
#: all keys and values of one label set together, in UTF-8 bytes: with the name and the tenant,
#: a series key must fit in one index row of the ``series`` table (2,704 bytes at most)
MAX_LABELS_BYTES = 1024
MAX_ID = 200  # tenant and user ids
MAX_BATCH = 10_000
#: events more than this far ahead of the entry's own time are refused (clock skew bound)
MAX_FUTURE_SECONDS = 300.0
#: event times before 2000-01-01 are refused as nonsense
MIN_TS = 946_684_800.0
#: ... and so are times from 2100-01-01 on (an entry ID chosen far ahead would give one)
MAX_TS = 4_102_444_800.0
#: a number (``value``, ``ts``) written as text has at most this many characters
MAX_NUMBER_TEXT = 64
#: an entry larger than this (keys and values, in UTF-8 bytes) is refused before it is
#: parsed; the pipeline's ``MAX_ENTRY_BYTES`` setting overrides it
MAX_ENTRY_BYTES = 4 * 2**20

FIELDS = frozenset(("name", "value", "type", "ts", "tenant", "user", "labels", "success", "v"))
_TYPES = {t.value: t.value for t in MetricType}
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# what a label value may not hold: C0 and C1 control characters (NUL included: PostgreSQL
# cannot store it), DEL, and surrogates (bytes that were not UTF-8, decoded with
# surrogateescape, or lone surrogates)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_LABEL_KEY = re.compile(r"[a-zA-Z_][a-zA-Z0-9_.-]*")
_TRUE = frozenset(("true", "1", "yes", "True", "TRUE"))
_FALSE = frozenset(("false", "0", "no", "False", "FALSE"))
_EMPTY: tuple[tuple[str, str], ...] = ()
# Names and label sets repeat endlessly; remembering the ones already validated makes the
# parser several times faster. Bounded: cleared in place when full (never rebound: the fast
# path in qesmon.columns reads the same objects).
_CACHE_LIMIT = 50_000
_good_names: set[str] = set()
_good_labels: dict[str, tuple[tuple[str, str], ...]] = {}
# label objects of batched events, by their sorted keys, then by their values in that order
# (two tuples of strings are cheaper to build and hash than one tuple of pairs)
_good_label_values: dict[tuple[Any, ...], dict[tuple[Any, ...], tuple[tuple[str, str], ...]]] = {}
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
    """Fields as text; bytes that are not UTF-8 become surrogate escapes (lossless, and
    refused by every check below), exactly as the pipeline's Redis client decodes them."""
    out: dict[str, str] = {}
    for k, v in fields.items():
        key = k.decode("utf-8", "surrogateescape") if isinstance(k, bytes) else str(k)
        out[key] = v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else str(v)
    return out


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _is_utf8(text: str) -> bool:
    """False when ``text`` holds surrogates: bytes that were not UTF-8, or lone surrogates."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_text(text: Mapping[str, str], max_bytes: int) -> str | None:
    """Why an entry's raw fields are refused before any field is parsed, or None."""
    size = 0
    for key, value in text.items():
        size += len(key) + len(value)
    if size * 4 > max_bytes:  # only then can the UTF-8 size exceed the bound
        size = sum(_utf8_size(k) + _utf8_size(v) for k, v in text.items())
        if size > max_bytes:
            return f"entry: {size} bytes, at most {max_bytes} allowed"
    for key, value in text.items():
        for part, what in ((key, "field name"), (value, f"{key[:50]!r}")):
            if not _is_utf8(part):
                return f"{what}: not valid UTF-8 (the dead letter keeps the bytes as base64)"
    return None


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
        ts = default
    elif isinstance(raw, bool):
        raise _Invalid("ts: expected Unix seconds or an RFC 3339 time, got a boolean")
    elif isinstance(raw, int | float):
        ts = float(raw)
    elif isinstance(raw, str):
        if len(raw) > MAX_NUMBER_TEXT:
            raise _Invalid(f"ts: longer than {MAX_NUMBER_TEXT} chars")
        try:
            ts = float(raw)
        except ValueError:
            ts = _parse_rfc3339(raw)
    else:
        raise _Invalid(f"ts: expected Unix seconds or an RFC 3339 time, got {type(raw).__name__}")
    if not math.isfinite(ts):
        raise _Invalid(f"ts: {ts} is not a finite time")
    if ts < MIN_TS:
        raise _Invalid(
            f"ts: {ts} is before 2000-01-01 (milliseconds instead of seconds? or the entry "
            "ID's time is)"
        )
    if ts > default + MAX_FUTURE_SECONDS:
        raise _Invalid(
            f"ts: {ts} is {ts - default:.0f} s ahead of the entry's time "
            f"(at most {MAX_FUTURE_SECONDS:.0f} s allowed)"
        )
    if ts >= MAX_TS:
        raise _Invalid(f"ts: {ts} is after 2100-01-01 (or the entry ID's time is)")
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
        # batched events carry labels as objects: remember them by their keys and values
        try:
            cached = _known_dict_labels(raw)
        except TypeError:  # an unhashable value: let the full check say what is wrong
            return _check_labels(raw)
        if cached is not None:
            return cached
        labels = _check_labels(raw)
        keys = tuple(k for k, _ in labels)
        by_values = _good_label_values.setdefault(keys, {})
        if len(by_values) >= _CACHE_LIMIT or len(_good_label_values) >= _CACHE_LIMIT:
            _good_label_values.clear()
            by_values = _good_label_values.setdefault(keys, {})
        by_values[tuple(v for _, v in labels)] = labels
        return labels
    return _check_labels(raw)


def _known_dict_labels(raw: dict[Any, Any]) -> tuple[tuple[str, str], ...] | None:
    keys = tuple(sorted(raw))
    by_values = _good_label_values.get(keys)
    return None if by_values is None else by_values.get(tuple(raw[k] for k in keys))


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
        if not isinstance(key, str):  # a dict built in Python, not JSON
            raise _Invalid(f"labels: keys must be strings, got {type(key).__name__}")
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
        if _CONTROL.search(value):
            raise _Invalid(
                f"labels: value of {key!r} contains a control character (NUL, U+0001-U+001F, "
                "U+007F-U+009F) or bytes that are not UTF-8"
            )
    size = sum(len(k.encode()) + len(v.encode()) for k, v in obj.items())
    if size > MAX_LABELS_BYTES:
        raise _Invalid(
            f"labels: {size} bytes of keys and values together, at most {MAX_LABELS_BYTES} allowed"
        )
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
        raise _Invalid(
            f"{field}: contains control or invisible format characters, or bytes that are "
            "not UTF-8 (ids must be printable)"
        )
    if len(_good_ids) >= _CACHE_LIMIT:
        _good_ids.clear()
    _good_ids.add(raw)
    return raw


def _parse_event(obj: Mapping[str, Any], default_ts: float) -> Event:
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
    if isinstance(raw_value, str) and len(raw_value) > MAX_NUMBER_TEXT:
        raise _Invalid(f"value: longer than {MAX_NUMBER_TEXT} chars")
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


def _open_entry(
    entry_id: str | bytes, fields: Mapping[Any, Any], max_bytes: int
) -> tuple[str, dict[str, str], float, list[Any] | None] | Rejection:
    """An entry's ID, text fields, time and, for an ``events`` entry, its elements."""
    sid = entry_id.decode("utf-8", "replace") if isinstance(entry_id, bytes) else str(entry_id)
    # A client with decode_responses=True already gives str keys and values: skip the copy.
    text = fields if isinstance(fields, dict) and _all_str(fields) else _text(fields)
    try:
        default_ts = entry_time(sid)
    except ValueError:
        return Rejection(sid, f"entry id {sid[:60]!r} is not <ms>-<seq>", text)
    batch = text.get("events")
    if batch is None:
        problem = _check_text(text, max_bytes)
        if problem is not None:
            return Rejection(sid, problem, text)
        return sid, text, default_ts, None
    if len(batch) * 4 > max_bytes and (size := _utf8_size(batch)) > max_bytes:
        return Rejection(sid, f"events: {size} bytes, at most {max_bytes} allowed", text)
    if len(text) != 1:
        others = sorted(set(text) - {"events"})
        return Rejection(sid, f"events: must be the only field, also got {others[:5]}", text)
    try:
        items = orjson.loads(batch)
    except orjson.JSONDecodeError as exc:
        return Rejection(sid, f"events: not valid JSON ({exc})", text)
    if not isinstance(items, list):
        return Rejection(sid, f"events: expected a JSON array, got {type(items).__name__}", text)
    if len(items) > MAX_BATCH:
        return Rejection(sid, f"events: {len(items)} events, at most {MAX_BATCH} allowed", text)
    return sid, text, default_ts, items


def _parse_item(
    sid: str, item: object, index: int, default_ts: float, rejections: list[Rejection]
) -> Event | None:
    """One element of an ``events`` entry; a bad one becomes a rejection naming its index."""
    try:
        if not isinstance(item, dict):
            raise _Invalid(f"expected a JSON object, got {type(item).__name__}")
        return _parse_event(item, default_ts)
    except _Invalid as exc:
        rejections.append(
            Rejection(
                sid,
                f"events[{index}]: {exc}",
                {"event": orjson.dumps(item).decode(), "index": str(index)},
                index,
            )
        )
        return None


def parse_entry(
    entry_id: str | bytes, fields: Mapping[Any, Any], max_entry_bytes: int = MAX_ENTRY_BYTES
) -> tuple[list[Event], list[Rejection]]:
    """Validate one stream entry; return its valid events and the rejected parts.

    Never raises for bad input: every problem becomes a Rejection with a reason. Fields may be
    ``str`` or ``bytes``; bytes that are not UTF-8 are refused, and the rejection's fields keep
    them as surrogate escapes (``qesmon.deadletter`` turns them back into the bytes).
    """
    opened = _open_entry(entry_id, fields, max_entry_bytes)
    if isinstance(opened, Rejection):
        return [], [opened]
    sid, text, default_ts, items = opened
    if items is None:
        try:
            return [_parse_event(text, default_ts)], []
        except _Invalid as exc:
            return [], [Rejection(sid, str(exc), text)]
    events: list[Event] = []
    rejections: list[Rejection] = []
    for index, item in enumerate(items):
        event = _parse_item(sid, item, index, default_ts, rejections)
        if event is not None:
            events.append(event)
    return events, rejections
