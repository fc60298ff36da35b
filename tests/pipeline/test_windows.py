"""ShardWindows without servers: emission on the watermark, late updates, finality, restore."""

from __future__ import annotations

import itertools
import pickle
import random

from pipeline.windows import ShardWindows
from qesmon.columns import EventColumns
from qesmon.contract import Event
from qesmon.series import WindowResult

T0 = 1_700_000_000  # a multiple of 10, 60 and 3600? 1_700_000_000 % 3600 == 3200


def ev(
    ts: float,
    value: float = 1.0,
    name: str = "m",
    success: bool = True,
    user: str | None = None,
    tenant: str = "",
) -> tuple[Event, float, str]:
    return Event(name, value, "custom", ts, tenant, user, (), success), ts, f"{int(ts * 1000)}-0"


def cols(events: list[tuple[Event, float, str]]) -> EventColumns:
    out = EventColumns()
    for event, entry_ts, entry_id in events:
        out.append(event, entry_ts, entry_id)
    return out


def latest(results: list[WindowResult]) -> dict[tuple[str, int, float], WindowResult]:
    out: dict[tuple[str, int, float], WindowResult] = {}
    for r in results:
        out[(r.series.name, r.width_s, r.start)] = r
    return out


def test_window_is_emitted_once_the_watermark_passes_its_end() -> None:
    w = ShardWindows(10, (60,), wait=2, lateness=30)
    w.add(cols([ev(T0 + 1), ev(T0 + 5)]))
    assert w.advance(0) == []
    w.add(cols([ev(T0 + 11.9)]))  # wm = 9.9 < 10
    assert w.advance(0) == []
    w.add(cols([ev(T0 + 12)]))  # wm = 10: [0, 10) closes
    (result,) = w.advance(0)
    assert (result.width_s, result.start, result.agg.count, result.revision) == (10, T0, 2, 0)


def test_idle_stream_closes_windows_with_the_wall_clock() -> None:
    w = ShardWindows(10, (), wait=2, lateness=30)
    w.add(cols([ev(T0 + 3)]))
    w.set_caught_up(True, read_at=100.0)
    assert w.advance(100.0) == []
    # the watermark T0+1 reaches the window's end T0+10 after 9 s of wall clock
    assert w.advance(108.9) == []
    (result,) = w.advance(109.0)
    assert result.agg.count == 1


def test_backlog_does_not_advance_with_the_wall_clock() -> None:
    w = ShardWindows(10, (), wait=2, lateness=30)
    w.add(cols([ev(T0 + 3)]))
    w.set_caught_up(False, read_at=100.0)
    assert w.advance(1e12) == []


def test_late_event_inside_lateness_reemits_window_and_its_minute_with_full_value() -> None:
    w = ShardWindows(10, (60,), wait=0, lateness=60)
    minute_start = T0 - T0 % 60  # T0 is 20 s into its minute
    w.add(cols([ev(T0 + 1, 1.0), ev(T0 + 45, 1.0)]))  # wm = T0+45: [T0, T0+10) and the minute close
    first = latest(w.advance(0))
    assert first[("m", 10, T0)].agg.sum == 1.0
    assert first[("m", 60, minute_start)].agg.sum == 1.0
    w.add(cols([ev(T0 + 2, 5.0)]))  # 43 s behind the newest event, inside the allowed 60 s
    updated = latest(w.advance(0))
    base = updated[("m", 10, T0)]
    assert (base.agg.count, base.agg.sum, base.revision) == (2, 6.0, 1)
    minute = updated[("m", 60, minute_start)]
    assert (minute.agg.count, minute.agg.sum, minute.revision) == (2, 6.0, 1)


def test_event_behind_the_lateness_is_late_and_not_counted() -> None:
    w = ShardWindows(10, (60,), wait=2, lateness=30)
    w.add(cols([ev(T0 + 1)]))
    late = w.add(cols([ev(T0 + 100), ev(T0 + 5, 7.0)]))  # window [0,10) ended 88 s before wm 98
    assert [x.event.value for x in late] == [7.0]
    results = latest(w.advance(0))
    assert results[("m", 10, T0)].agg.count == 1


def test_final_windows_fold_into_minute_and_hour_with_exact_totals() -> None:
    rng = random.Random(7)
    w = ShardWindows(10, (60, 3600), wait=2, lateness=30)
    truth: dict[tuple[int, int], list[float]] = {}
    results: list[WindowResult] = []
    ts = float(T0)
    for _ in range(50):
        batch = []
        for _ in range(40):
            ts += rng.uniform(0, 2)
            event_ts = ts - rng.choice([0, 0, 0, 5, 25])  # out of order, inside lateness
            value = rng.randint(1, 100) / 4
            batch.append(ev(event_ts, value))
            for width in (10, 60, 3600):
                truth.setdefault((width, int(event_ts // width) * width), []).append(value)
        assert w.add(cols(batch)) == []
        results += w.advance(0)
    w.set_caught_up(True, read_at=0)
    results += w.advance(1e6)  # everything closes and becomes final
    assert w.open_windows == 0
    got = latest(results)
    assert {(width, start) for (_, width, start) in got} == set(truth)
    for (width, start), values in truth.items():
        agg = got[("m", width, float(start))].agg
        assert (agg.count, agg.sum, agg.min, agg.max) == (
            len(values),
            sum(values),
            min(values),
            max(values),
        ), (width, start)


def test_state_survives_pickling_and_replays_identically() -> None:
    w = ShardWindows(10, (60,), wait=2, lateness=30)
    w.add(cols([ev(T0 + 1, user="a"), ev(T0 + 15, user="b")]))
    w.advance(0)
    w.set_caught_up(True, read_at=50.0)
    restored = pickle.loads(pickle.dumps(w))
    assert restored.idle_since is None  # a restored shard is not assumed to be drained
    batch = [ev(T0 + 30, 2.0, user="a"), ev(T0 + 3, 4.0)]
    assert w.add(cols(batch)) == restored.add(cols(batch)) == []
    original = [(r.series, r.width_s, r.start, r.agg.count, r.agg.sum) for r in w.advance(0)]
    replayed = [(r.series, r.width_s, r.start, r.agg.count, r.agg.sum) for r in restored.advance(0)]
    assert original == replayed and original


def test_empty_reads_do_not_hold_the_idle_watermark_back() -> None:
    w = ShardWindows(10, (), wait=2, lateness=30)
    w.add(cols([ev(T0 + 3)]))
    w.set_caught_up(True, read_at=100.0, got_data=True)
    for t in (100.05, 100.1, 105.0, 108.0):
        w.set_caught_up(True, read_at=t, got_data=False)
        assert w.advance(t) == []
    w.set_caught_up(True, read_at=109.0, got_data=False)
    assert [r.agg.count for r in w.advance(109.0)] == [1]


def test_how_the_stream_is_cut_into_reads_changes_nothing() -> None:
    """Lateness is decided event by event in stream order, whatever the reads look like."""
    rng = random.Random(11)
    stream = []
    ts = float(T0)
    for i in range(3000):
        ts += rng.uniform(0, 0.2)
        lag = rng.choice([0, 0, 0, 0, 3, 20, 45, 90])  # some inside lateness, some beyond
        stream.append(ev(ts - lag, float(i % 7), name=f"m{i % 3}", user=f"u{i % 50}"))

    def run(cut: list[int]) -> tuple[list[tuple[float, float]], dict[object, tuple[object, ...]]]:
        w = ShardWindows(10, (60, 3600), wait=2, lateness=30)
        late: list[tuple[float, float]] = []
        results: list[WindowResult] = []
        for a, b in itertools.pairwise(cut):
            late += [(x.event.ts, x.event.value) for x in w.add(cols(stream[a:b]))]
            results += w.advance(0)
        w.set_caught_up(True, read_at=0)
        results += w.advance(1e6)
        final = {
            k: (r.agg.count, r.agg.errors, r.agg.sum, r.agg.min, r.agg.max, r.agg.distinct_users())
            for k, r in latest(results).items()
        }
        return late, final

    one_read = run([0, len(stream)])
    assert one_read[0], "the workload must have late events"
    assert run(list(range(len(stream) + 1))) == one_read  # one event per read
    cuts = sorted({0, len(stream), *rng.sample(range(len(stream)), 40)})
    assert run(cuts) == one_read
