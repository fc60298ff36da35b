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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from operator import gt, itemgetter
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
_TRUE_FALSE = _TRUE | _FALSE
_EMPTY: tuple[tuple[str, str], ...] = ()
# Names and label sets repeat endlessly; remembering the ones already validated makes the
# parser several times faster. Bounded: cleared when full.
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


def _known_label_column(objs: Sequence[dict[Any, Any]]) -> list[Any] | None:
    """The labels of many label objects if all are known; None (or Nones inside) otherwise."""
    keys = set().union(*objs)
    if len(keys) < 2 or set(map(len, objs)) != {len(keys)}:
        return list(map(_known_dict_labels, objs))
    # all objects have the same keys (the usual case): one lookup per object by its values
    order = tuple(sorted(keys))
    by_values = _good_label_values.get(order)
    return None if by_values is None else list(map(by_values.get, map(itemgetter(*order), objs)))


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


# -- many entries at once ------------------------------------------------------------------------


@dataclass(slots=True)
class EventColumns:
    """Valid events column by column, in stream order: event ``i`` is ``names[i]``, ``values[i]``…

    What :func:`parse_entries` returns. The pipeline folds whole columns into its windows, so
    no object is built per event; ``entry_ts`` and ``entry_ids`` say which entry each came from.
    """

    names: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    ts: list[float] = field(default_factory=list)
    tenants: list[str] = field(default_factory=list)
    users: list[str | None] = field(default_factory=list)
    labels: list[tuple[tuple[str, str], ...]] = field(default_factory=list)
    success: list[bool] = field(default_factory=list)
    entry_ts: list[float] = field(default_factory=list)
    entry_ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)

    def event(self, i: int) -> Event:
        return Event(
            self.names[i],
            self.values[i],
            self.types[i],
            self.ts[i],
            self.tenants[i],
            self.users[i],
            self.labels[i],
            self.success[i],
        )

    def events(self) -> list[Event]:
        return [self.event(i) for i in range(len(self))]

    def take(self, indices: Iterable[int]) -> EventColumns:
        """The events at ``indices``, in that order."""
        picked = list(indices)
        return EventColumns(*([column[i] for i in picked] for column in self._columns()))

    def extend(self, other: EventColumns) -> None:
        self.extend_columns(*other._columns())

    def extend_columns(self, *columns: Sequence[Any]) -> None:
        """Append columns given in field order (names, types, ... entry_ids)."""
        for mine, theirs in zip(self._columns(), columns, strict=True):
            mine += theirs

    def _columns(self) -> tuple[list[Any], ...]:
        return (
            self.names,
            self.types,
            self.values,
            self.ts,
            self.tenants,
            self.users,
            self.labels,
            self.success,
            self.entry_ts,
            self.entry_ids,
        )

    def append(self, event: Event, entry_ts: float, entry_id: str) -> None:
        self.names.append(event.name)
        self.types.append(event.type)
        self.values.append(event.value)
        self.ts.append(event.ts)
        self.tenants.append(event.tenant)
        self.users.append(event.user)
        self.labels.append(event.labels)
        self.success.append(event.success)
        self.entry_ts.append(entry_ts)
        self.entry_ids.append(entry_id)


# Lookup tables of the column checks. Types are checked before values are looked up, so
# that 1 == True == 1.0 cannot pass for one another.
_NONE = type(None)
_V_TYPES = frozenset((_NONE, str, int))
_V_OK = frozenset((None, SCHEMA_VERSION, int(SCHEMA_VERSION)))
_NUMBER_TYPES = frozenset((float, int, str))
_TS_TYPES = frozenset((_NONE, float, int, str))
_ID_TYPES = frozenset((_NONE, str))
_TYPE_OF: dict[str | None, str] = {None: "custom", "": "custom"}
_TYPE_OF.update(_TYPES)
_SUCCESS_TYPES = frozenset((_NONE, bool, str))
_SUCCESS_OF: dict[str | bool | None, bool] = {
    None: True,
    "": True,
    True: True,
    False: False,
    **dict.fromkeys(_TRUE, True),
    **dict.fromkeys(_FALSE, False),
}
_STR_LABELS = frozenset((_NONE, str))
_DICT_LABELS = frozenset((_NONE, dict))
#: below this many entries (or batch elements) a run that failed the column checks is parsed
#: one by one; above, it is halved, so one bad entry costs a few column passes, not a slow read
_LEAF = 8


def _id_column(ids: Sequence[Any], blank: str | None) -> Sequence[Any] | None:
    """The ids as _parse_id takes them (``blank`` for None and ''), or None if any is new or
    wrong: not a string (ints too go the full way), too long, not printable."""
    if not set(map(type, ids)) <= _ID_TYPES:
        return None
    present = list(filter(None, ids))
    if present and (max(map(len, present)) > MAX_ID or not "".join(present).isprintable()):
        return None
    return ids if len(present) == len(ids) else [i or blank for i in ids]


def _columns(objs: list[dict[str, Any]], keys: set[str]) -> dict[str, Sequence[Any]]:
    """Each key's values across ``objs``, in order (None where an object lacks the key)."""
    if len(keys) > 1 and set(map(len, objs)) == {len(keys)}:
        # every object has every key (the usual case): transpose in one pass
        order = tuple(keys)
        return dict(zip(order, zip(*map(itemgetter(*order), objs), strict=True), strict=True))
    return {key: [o.get(key) for o in objs] for key in keys}


def _fast_columns(
    objs: list[dict[str, Any]],
    defaults: list[float],
    default: float | None,
    ids: list[str],
    out: EventColumns,
) -> bool:
    """Append all of ``objs`` to ``out`` if every one passes cheap checks against known values.

    ``defaults`` are the times of the entries the objects came from and ``ids`` their IDs
    (``default``: the one time they share, for the elements of an ``events`` entry). False,
    appending nothing, whenever anything is new or unusual: :func:`parse_entry` then decides,
    with the full checks, one object at a time. What is accepted here is exactly what the full
    checks accept, with the same values.
    """
    try:
        keys = set().union(*objs)
        if not keys <= FIELDS:
            return False
        column = _columns(objs, keys).get
        absent = [None] * len(objs)
        names = column("name", absent)
        if not set(names) <= _good_names:
            return False
        raw = column("v", absent)
        if not (set(map(type, raw)) <= _V_TYPES and set(raw) <= _V_OK):
            return False
        raw = column("value", absent)
        kinds = set(map(type, raw))
        values: Sequence[Any]
        if kinds == {float}:
            values = raw
        elif (str not in kinds and kinds <= _NUMBER_TYPES) or (
            kinds == {str} and max(map(len, raw)) <= MAX_NUMBER_TEXT
        ):
            values = list(map(float, raw))
        else:
            return False
        total = sum(values)
        if total - total != 0.0:  # an inf or nan among them (or a sum beyond floats)
            return False
        types = list(map(_TYPE_OF.__getitem__, column("type", absent)))
        raw = column("success", absent)
        if not set(map(type, raw)) <= _SUCCESS_TYPES:
            return False
        success = list(map(_SUCCESS_OF.__getitem__, raw))
        raw = column("ts", absent)
        kinds = set(map(type, raw))
        ts: Sequence[Any]
        if kinds == {float}:
            ts = raw
        elif kinds <= _TS_TYPES:
            # ints and floats have no len: only strings are left once None and "" are out
            if str in kinds and max(map(len, filter(None, raw)), default=0) > MAX_NUMBER_TEXT:
                return False
            ts = [
                d if t is None or t == "" else float(t) for t, d in zip(raw, defaults, strict=True)
            ]
        else:
            return False
        total = sum(ts)
        if total - total != 0.0 or min(ts) < MIN_TS or max(ts) >= MAX_TS:
            return False
        if default is not None:
            if max(ts) > default + MAX_FUTURE_SECONDS:
                return False
        elif any(map(gt, ts, [d + MAX_FUTURE_SECONDS for d in defaults])):
            return False
        tenants = _id_column(column("tenant", absent), "")
        users = _id_column(column("user", absent), None)
        if tenants is None or users is None:
            return False
        raw = column("labels", absent)
        kinds = set(map(type, raw))
        labels: list[Any] | None
        if kinds == {dict}:
            labels = _known_label_column(raw)
        elif kinds <= _DICT_LABELS:
            labels = [_EMPTY if x is None else _known_dict_labels(x) for x in raw]
        elif kinds <= _STR_LABELS:
            labels = [_good_labels.get(x) if x else _EMPTY for x in raw]
        else:
            return False
        if labels is None or None in labels:
            return False
    except (TypeError, ValueError, KeyError):  # unhashable, not a number, unknown value
        return False
    out.extend_columns(names, types, values, ts, tenants, users, labels, success, defaults, ids)
    return True


def _add_flat(
    out: EventColumns,
    rejections: list[Rejection],
    ids: list[Any],
    fields: list[Any],
    max_bytes: int,
) -> None:
    """Flat (one-event) entries, in order: by columns when they all pass, else halved."""
    if not ids:
        return
    try:
        defaults = list(map(entry_time, ids))
    except (ValueError, TypeError):  # a malformed or bytes ID: the full path says what is wrong
        pass
    else:
        if _fast_columns(fields, defaults, None, ids, out):
            return
    if len(ids) <= _LEAF:
        for entry_id, entry_fields in zip(ids, fields, strict=True):
            events, rejected = parse_entry(entry_id, entry_fields, max_bytes)
            for event in events:
                sid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                out.append(event, entry_time(sid), sid)
            rejections += rejected
    else:
        mid = len(ids) // 2
        _add_flat(out, rejections, ids[:mid], fields[:mid], max_bytes)
        _add_flat(out, rejections, ids[mid:], fields[mid:], max_bytes)


def _add_items(
    out: EventColumns,
    rejections: list[Rejection],
    sid: str,
    items: list[Any],
    offset: int,
    default_ts: float,
) -> None:
    """Elements ``offset…`` of one ``events`` entry, like :func:`_add_flat`."""
    if not items:
        return
    n = len(items)
    if set(map(type, items)) == {dict} and _fast_columns(
        items, [default_ts] * n, default_ts, [sid] * n, out
    ):
        return
    if n <= _LEAF:
        for index, item in enumerate(items, offset):
            event = _parse_item(sid, item, index, default_ts, rejections)
            if event is not None:
                out.append(event, default_ts, sid)
    else:
        mid = n // 2
        _add_items(out, rejections, sid, items[:mid], offset, default_ts)
        _add_items(out, rejections, sid, items[mid:], offset + mid, default_ts)


def parse_entries(
    entries: Iterable[tuple[Any, Mapping[Any, Any]]],
    max_entry_bytes: int = MAX_ENTRY_BYTES,
) -> tuple[EventColumns, list[Rejection]]:
    """Validate many stream entries at once: the same events and rejections, in the same order,
    as :func:`parse_entry` on each, but as columns and several times faster.

    Values seen before (metric names, label sets) and ids are checked column by column with set
    operations; anything new or wrong sends its part of the read through :func:`parse_entry`,
    which explains the problem and remembers what was good.
    """
    out = EventColumns()
    rejections: list[Rejection] = []
    ids: list[Any] = []
    flat: list[Any] = []
    for entry_id, fields in entries:
        if "events" not in fields:
            ids.append(entry_id)
            flat.append(fields)
            continue
        _add_flat(out, rejections, ids, flat, max_entry_bytes)
        ids, flat = [], []
        opened = _open_entry(entry_id, fields, max_entry_bytes)
        if isinstance(opened, Rejection):
            rejections.append(opened)
            continue
        sid, _, default_ts, items = opened
        if items is None:  # "events" was not a field of its own after all (not a str key)
            _add_flat(out, rejections, [entry_id], [fields], max_entry_bytes)
            continue
        _add_items(out, rejections, sid, items, 0, default_ts)
    _add_flat(out, rejections, ids, flat, max_entry_bytes)
    return out, rejections


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
