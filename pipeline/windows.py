"""Event-time tumbling windows of one stream shard, in plain Python (no Bytewax here).

:class:`ShardWindows` keeps, for every series, the base windows (default 10 s) that can still
change, and one accumulator per minute and hour window. It is fed whole batches of parsed
events as columns (Bytewax's own per-item windowing cost 9–11 µs per event, grouping a read's
columns per window and folding each group at once 2.6–3.2 µs: ``bench/windows.py``) and answers with
closed windows to write.

Watermark. ``wm = newest event time seen - wait``; while the shard is caught up (the last read
returned less than a full batch) it also advances with the wall clock, so an idle stream still
closes its windows on time. While catching up on a backlog it depends on the data alone, which
makes a replay after a crash take exactly the same lateness decisions as the first run. An
event's time only advances the watermark up to the time Redis stamped its entry with, so one
producer with a clock running ahead cannot make everybody else's events late.

Window life cycle (base width ``W``, allowed lateness ``L``):

* open      -- events are added;
* emitted   -- ``wm >= end``: written with its value (revision 0), rules see it;
* updated   -- an event arrives while ``wm < end + L``: the full new value is re-emitted
  (revision 1, 2, ...), and so is every minute/hour window containing it that was emitted;
* final     -- ``wm >= end + L``: its aggregate is merged into the minute and hour
  accumulators and dropped. An event for a final window is *late*: it goes to the dead
  letters, it is not counted.

A minute or hour window's value is its accumulator merged with the base windows inside it
that are not final yet; it is emitted when ``wm >= end`` and dropped at ``end + L``.
Each window's row keeps the sketch precision of its width (``precision_for``: compact for
10 s and 1 min, full for the hour); in memory every sketch is full, so an hour merged from
10 s windows is full too.

Cardinality. A series is *active* while it has a window of the widest level open (up to an
hour and the lateness after its last event). A new series is admitted only while its tenant
has fewer than ``max_series_per_tenant`` active series and the shard fewer than
``max_series``; the events of a series that is not admitted are set aside as
:class:`Limited` (the pipeline dead-letters them as ``limit``), so a producer that sends a new
label value with every event cannot exhaust memory. The limits are checked when events are
counted into windows, so at the limit which new series get in may differ after a replay.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from qesmon.columns import EventColumns
from qesmon.contract import Event
from qesmon.series import Series, WindowResult
from qesmon.sketch import Agg, precision_for

#: (name, type, tenant, labels): the series part of a window key
SeriesKey = tuple[str, str, str, tuple[tuple[str, str], ...]]
#: series key + window start (Unix seconds, a multiple of the width)
WindowKey = tuple[SeriesKey, int]
#: pending events that make :class:`ShardWindows` count them into their windows
FOLD_EVENTS = 20_000


@dataclass(slots=True)
class _Window:
    agg: Agg
    emitted: bool = False
    revision: int = 0
    dirty: bool = False


@dataclass(slots=True)
class Late:
    """An event that arrived after its window became final."""

    event: Event
    source_id: str
    watermark: float


@dataclass(slots=True)
class Limited:
    """An event of a series that was not admitted: its tenant or the shard is at its limit."""

    event: Event
    source_id: str
    reason: str


@dataclass(slots=True)
class _Level:
    width: int
    windows: dict[WindowKey, _Window] = field(default_factory=dict)
    # end time -> keys of windows ending then that still have to be emitted / dropped
    to_emit: dict[int, set[WindowKey]] = field(default_factory=dict)
    to_drop: dict[int, set[WindowKey]] = field(default_factory=dict)


class ShardWindows:
    """The windowing state of one shard; see the module docstring for the semantics.

    Usage::

        windows = ShardWindows(base_width=10, upper_widths=(60, 3600), wait=2, lateness=30)
        late = windows.add(events)   # EventColumns of one read, in stream order
        results = windows.advance(now, caught_up)   # closed and updated windows
    """

    def __init__(
        self,
        base_width: int = 10,
        upper_widths: Iterable[int] = (60, 3600),
        wait: float = 2.0,
        lateness: float = 30.0,
        *,
        max_series_per_tenant: int | None = None,
        max_series: int | None = None,
    ) -> None:
        uppers = tuple(upper_widths)
        for width in uppers:
            if width % base_width:
                raise ValueError(f"window width {width} s is not a multiple of {base_width} s")
        self.base = _Level(base_width)
        self.uppers = [_Level(w) for w in uppers]
        self.wait = wait
        self.lateness = lateness
        self.max_ts = -math.inf
        #: the highest watermark at which windows were finalised (never goes back)
        self.final_horizon = -math.inf
        #: wall-clock time since which the shard has been caught up, or None
        self.idle_since: float | None = None
        self._dirty: list[tuple[_Level, WindowKey]] = []
        # events in time but not yet counted (see add), the starts of their windows, and the
        # earliest end among those windows
        self._pending = EventColumns()
        self._pending_starts: list[float] = []
        self._pending_first_end = math.inf
        #: base windows that got events since the last :meth:`take_touched` (live cache)
        self.touched: set[WindowKey] = set()
        self.max_series_per_tenant = max_series_per_tenant
        self.max_series = max_series
        #: active series -> its open windows of the widest level; active series per tenant
        self._series_windows: dict[SeriesKey, int] = {}
        self._tenant_series: dict[str, int] = {}
        #: events of series that were not admitted, until :meth:`take_limited`
        self.limited: list[Limited] = []

    # -- feeding -----------------------------------------------------------------------------

    def add(self, events: EventColumns) -> list[Late]:
        """Take a read's events (columns, in stream order); return those too late to count.

        The columns are handed over: do not change them afterwards.

        Lateness is decided here, event by event; counting the events into their windows is
        deferred until :data:`FOLD_EVENTS` are pending or a window they belong to is due (see
        :meth:`advance`, :meth:`take_touched`): folding many reads at once makes the groups
        per window larger and each event cheaper.
        """
        if not events:
            return []
        width = self.base.width
        ts = events.ts
        low = min(ts)
        first_start = low - low % width  # exact for floats; made int once per group
        high = max(ts)
        if high - high % width == first_start:  # the whole read in one window: the usual case
            starts = [first_start] * len(ts)
        else:
            starts = [t - t % width for t in ts]
        # an event's time moves the watermark only up to the time of its entry
        newest = high
        if newest > min(events.entry_ts):  # some event claims a time ahead of its entry
            newest = max(map(min, ts, events.entry_ts))
        horizon = max(max(self.max_ts, newest) - self.wait, self.final_horizon)
        late: list[Late] = []
        if first_start + width + self.lateness > horizon:
            # nothing is late even against the watermark at the end of the read: the common case
            self.max_ts = max(self.max_ts, newest)
            if self._pending:
                self._pending.extend(events)
                self._pending_starts += starts
            else:  # no copy: the columns are handed over
                self._pending = events
                self._pending_starts = starts
        else:
            in_time = self._sort_out_late(events, starts, late)
            self._pending.extend(events.take(in_time))
            self._pending_starts += [starts[i] for i in in_time]
        self._pending_first_end = min(self._pending_first_end, first_start + width)
        if len(self._pending) >= FOLD_EVENTS:
            self._fold()
        return late

    def _fold(self) -> None:
        """Count the pending events into their windows: one bulk update per window."""
        events = self._pending
        if not events:
            return
        starts = self._pending_starts
        self._pending = EventColumns()
        self._pending_starts = []
        self._pending_first_end = math.inf
        groups: defaultdict[tuple[Any, ...], list[int]] = defaultdict(list)
        keys = zip(events.names, events.types, events.tenants, events.labels, starts, strict=True)
        for i, event_key in enumerate(keys):
            groups[event_key].append(i)
        base = self.base
        windows = base.windows
        touched = self.touched
        values, success, users = events.values, events.success, events.users
        failures = False in success
        with_users = any(users)
        for (name, mtype, tenant, labels, start), picked in groups.items():
            key = ((name, mtype, tenant, labels), int(start))
            window = windows.get(key)
            if window is None:
                refusal = self._admit(key[0])
                if refusal is not None:
                    self.limited += [
                        Limited(events.event(i), events.entry_ids[i], refusal) for i in picked
                    ]
                    continue
                window = self._open(key)
            if len(picked) == 1:
                i = picked[0]
                window.agg.add(values[i], success[i], users[i])
            else:
                pick = itemgetter(*picked)
                window.agg.add_values(
                    pick(values),
                    len(picked) - sum(pick(success)) if failures else 0,
                    [u for u in pick(users) if u is not None] if with_users else (),
                )
            touched.add(key)
            if window.emitted and not window.dirty:
                self._mark_dirty(base, key, window)

    def _sort_out_late(
        self, events: EventColumns, starts: list[float], late: list[Late]
    ) -> list[int]:
        """Decide lateness event by event, in stream order, against the watermark so far.

        Returns the indices of the events in time; the late ones go to ``late``.
        """
        end = self.base.width + self.lateness
        wait = self.wait
        max_ts = self.max_ts
        horizon = max(max_ts - wait, self.final_horizon)
        in_time: list[int] = []
        for i, (ts, entry_ts, start) in enumerate(
            zip(events.ts, events.entry_ts, starts, strict=True)
        ):
            if start + end <= horizon:
                late.append(Late(events.event(i), events.entry_ids[i], horizon))
                continue
            in_time.append(i)
            clock = ts if ts < entry_ts else entry_ts
            if clock > max_ts:
                max_ts = clock
                if max_ts - wait > horizon:
                    horizon = max_ts - wait
        self.max_ts = max_ts
        return in_time

    def _admit(self, series: SeriesKey) -> str | None:
        """None if ``series`` may open a window; else why not (the limit it would break)."""
        if series in self._series_windows:
            return None
        tenant = series[2]
        per_tenant = self.max_series_per_tenant
        if per_tenant is not None and self._tenant_series.get(tenant, 0) >= per_tenant:
            return (
                f"limit: tenant {tenant[:100]!r} already has {per_tenant} active series "
                "(MAX_SERIES_PER_TENANT); a new label value on every event?"
            )
        if self.max_series is not None and len(self._series_windows) >= self.max_series:
            return (
                f"limit: the shard already has {self.max_series} active series (MAX_SERIES); "
                f"series of tenant {tenant[:100]!r} not admitted"
            )
        return None

    def _top_opened(self, series: SeriesKey) -> None:
        count = self._series_windows.get(series, 0)
        if count == 0:
            tenant = series[2]
            self._tenant_series[tenant] = self._tenant_series.get(tenant, 0) + 1
        self._series_windows[series] = count + 1

    def _top_dropped(self, series: SeriesKey) -> None:
        count = self._series_windows[series] - 1
        if count:
            self._series_windows[series] = count
            return
        del self._series_windows[series]
        tenant = series[2]
        left = self._tenant_series[tenant] - 1
        if left:
            self._tenant_series[tenant] = left
        else:
            del self._tenant_series[tenant]

    def take_limited(self) -> list[Limited]:
        """The events set aside by the cardinality limits since the last call."""
        out, self.limited = self.limited, []
        return out

    @property
    def active_series(self) -> int:
        return len(self._series_windows)

    def _open(self, key: WindowKey) -> _Window:
        base = self.base
        window = _Window(Agg(precision_for(base.width)))
        base.windows[key] = window
        end = key[1] + base.width
        base.to_emit.setdefault(end, set()).add(key)
        base.to_drop.setdefault(end, set()).add(key)
        series = key[0]
        if not self.uppers:
            self._top_opened(series)
        for level in self.uppers:
            ukey = (series, key[1] - key[1] % level.width)
            if ukey not in level.windows:
                level.windows[ukey] = _Window(Agg(precision_for(level.width)))
                uend = ukey[1] + level.width
                level.to_emit.setdefault(uend, set()).add(ukey)
                level.to_drop.setdefault(uend, set()).add(ukey)
                if level is self.uppers[-1]:
                    self._top_opened(series)
        return window

    def _mark_dirty(self, level: _Level, key: WindowKey, window: _Window) -> None:
        window.dirty = True
        self._dirty.append((level, key))
        for upper in self.uppers:
            ukey = (key[0], key[1] - key[1] % upper.width)
            uwindow = upper.windows[ukey]
            if uwindow.emitted and not uwindow.dirty:
                uwindow.dirty = True
                self._dirty.append((upper, ukey))

    # -- time --------------------------------------------------------------------------------

    def watermark(self, now: float) -> float:
        """Current watermark: data-driven, plus wall-clock time while caught up; never falls."""
        wm = self.max_ts - self.wait
        if self.idle_since is not None and now > self.idle_since:
            wm += now - self.idle_since
        return max(wm, self.final_horizon)

    def set_caught_up(self, caught_up: bool, read_at: float, got_data: bool = True) -> None:
        """Say whether the read at wall time ``read_at`` drained the stream.

        While drained, the watermark moves on with the wall clock since the last read that
        brought data; while a backlog is being read, only the data moves it (so replays
        decide exactly alike).
        """
        if not caught_up:
            self.idle_since = None
        elif got_data or self.idle_since is None:
            self.idle_since = read_at

    def advance(self, now: float) -> list[WindowResult]:
        """Emit what the watermark closed, re-emit updated windows, drop final ones."""
        wm = self.watermark(now)
        if self._pending_first_end <= wm:
            self._fold()  # some pending event belongs to a window that is due
        out: list[WindowResult] = []
        # updated windows first: their new value supersedes the one written before
        for level, key in self._dirty:
            window = level.windows.get(key)
            if window is None or not window.dirty:
                continue
            window.dirty = False
            window.revision += 1
            out.append(self._result(level, key, window))
        self._dirty.clear()
        for level in (self.base, *self.uppers):
            for end in sorted(e for e in level.to_emit if e <= wm):
                for key in sorted(level.to_emit.pop(end)):
                    window = level.windows[key]
                    window.emitted = True
                    out.append(self._result(level, key, window))
        horizon = wm - self.lateness
        if self.base.to_drop and min(self.base.to_drop) <= horizon:
            self._finalise(horizon)
        self.final_horizon = wm
        return out

    def _finalise(self, horizon: float) -> None:
        base = self.base
        for end in sorted(e for e in base.to_drop if e <= horizon):
            for key in base.to_drop.pop(end):
                window = base.windows.pop(key)
                for level in self.uppers:
                    ukey = (key[0], key[1] - key[1] % level.width)
                    level.windows[ukey].agg.merge(window.agg)
                if not self.uppers:
                    self._top_dropped(key[0])
        top = self.uppers[-1] if self.uppers else None
        for level in self.uppers:
            for end in sorted(e for e in level.to_drop if e <= horizon):
                for ukey in level.to_drop.pop(end):
                    del level.windows[ukey]
                    if level is top:
                        self._top_dropped(ukey[0])

    def _result(self, level: _Level, key: WindowKey, window: _Window) -> WindowResult:
        series_key, start = key
        if level is self.base:
            agg = window.agg
        else:
            agg = window.agg.copy()
            base = self.base
            for s in range(start, start + level.width, base.width):
                inner = base.windows.get((series_key, s))
                if inner is not None:
                    agg.merge(inner.agg)
        name, mtype, tenant, labels = series_key
        return WindowResult(
            Series(name, mtype, tenant, labels), level.width, float(start), agg, window.revision
        )

    def take_touched(self) -> list[WindowResult]:
        """Current values of the base windows that changed since the last call."""
        self._fold()
        out = []
        for key in self.touched:
            window = self.base.windows.get(key)
            if window is not None:
                out.append(self._result(self.base, key, window))
        self.touched = set()
        return out

    # -- introspection -----------------------------------------------------------------------

    @property
    def open_windows(self) -> int:
        return len(self.base.windows) + sum(len(level.windows) for level in self.uppers)

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        if "_series_windows" not in state:  # a snapshot from before the limits: rebuild
            self.max_series_per_tenant = self.max_series = None
            self._series_windows, self._tenant_series, self.limited = {}, {}, []
            top = self.uppers[-1] if self.uppers else self.base
            for series, _ in top.windows:
                self._top_opened(series)

    def __getstate__(self) -> dict[str, object]:
        # After a restore nobody knows whether the stream is drained: start from the data.
        state = dict(self.__dict__)
        state["idle_since"] = None
        state["touched"] = set()
        return state
