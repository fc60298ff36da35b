"""The event contract's fast path: many stream entries at once, parsed into columns. Pure.

:func:`parse_entries` gives exactly what :func:`qesmon.contract.parse_entry` gives on each
entry (tests/core/test_contract.py compares them entry by entry), as :class:`EventColumns`
and several times faster::

    columns, rejections = parse_entries([("1700000000000-0", {"name": "x", "value": "1"})])

It checks whole columns against what the reference parser has already accepted (its caches
of valid names, label sets and ids) and hands anything new or wrong to the reference parser,
which explains the problem and remembers what was good. That is why it reads the reference
module's private caches and helpers: they are one parser with two speeds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import gt, itemgetter
from typing import Any

from qesmon.contract import (
    _EMPTY,
    _FALSE,
    _TRUE,
    _TYPES,
    FIELDS,
    MAX_ENTRY_BYTES,
    MAX_FUTURE_SECONDS,
    MAX_ID,
    MAX_NUMBER_TEXT,
    MAX_TS,
    MIN_TS,
    SCHEMA_VERSION,
    Event,
    Rejection,
    _good_label_values,
    _good_labels,
    _good_names,
    _known_dict_labels,
    _open_entry,
    _parse_item,
    entry_time,
    parse_entry,
)


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


def _known_label_column(objs: Sequence[dict[Any, Any]]) -> list[Any] | None:
    """The labels of many label objects if all are known; None (or Nones inside) otherwise."""
    keys = set().union(*objs)
    if len(keys) < 2 or set(map(len, objs)) != {len(keys)}:
        return list(map(_known_dict_labels, objs))
    # all objects have the same keys (the usual case): one lookup per object by its values
    order = tuple(sorted(keys))
    by_values = _good_label_values.get(order)
    return None if by_values is None else list(map(by_values.get, map(itemgetter(*order), objs)))


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
