"""Windowing cost per event: Bytewax's own per-item windowing against the pipeline's columns.

    . var/env.sh && .venv/bin/python bench/windows.py [--events 400000] [--bytewax-events 200000]

No servers: the events are the workload of ``bench/pipeline.py`` (500 series, 25 tenants x
20 endpoints, 5,000 users, 20,000 events per second of event time, so ~400 events per series
per 10 s window: sketch mode), parsed once up front with the contract parser, then counted
into 10 s windows (plus the 1 min and 1 h rollups, as the pipeline does) two ways:

1. Bytewax 0.21: ``key_on`` by series + ``fold_window`` (``EventClock``, ``TumblingWindower``
   of 10 s) folding every item into the same aggregate (``Agg.add``) — what the README means
   by "Bytewax's per-item windowing"; a ``TestingSource`` feeds the items in batches of a
   read (20,000: smaller batches cost Bytewax far more per item with 500 keys, ~38 µs at
   1,000 and ~68 µs at 100 on a shared 2-vCPU EPYC box), 10 s windows only;
2. :class:`pipeline.windows.ShardWindows`: ``add`` per read of 20,000 events (columns, as
   the source delivers them), ``advance`` after each, every window closed and emitted.

Printed: µs per event for each (CPU time of this process, median of ``--repeat`` runs), and
how many windows each emitted, so the two are seen to do the same counting.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bytewax.operators as op
from _machine import machine
from _workload import generate_entries
from bytewax.dataflow import Dataflow
from bytewax.operators import windowing as win
from bytewax.testing import TestingSink, TestingSource, run_main

from pipeline.windows import ShardWindows
from qesmon.columns import EventColumns, parse_entries
from qesmon.sketch import Agg

READ_EVENTS = 20_000  # events per read, as the pipeline's source takes them


def reads(events: int, event_rate: int) -> list[EventColumns]:
    """The workload parsed into reads of ``READ_EVENTS`` events (columns)."""
    start = time.time() - 7200 - events / event_rate
    now_ms = int(time.time() * 1000)
    out: list[EventColumns] = []
    seq = 0
    for chunk in generate_entries(events, 1000, start, event_rate):
        for i in range(0, len(chunk), READ_EVENTS // 1000):
            entries = []
            for fields in chunk[i : i + READ_EVENTS // 1000]:
                entries.append((f"{now_ms}-{seq}", fields))
                seq += 1
            columns, rejected = parse_entries(entries)
            assert not rejected, rejected[:1]
            out.append(columns)
    return out


def shard_windows(batches: list[EventColumns]) -> tuple[float, int, int]:
    """(CPU seconds, events, windows emitted) of ShardWindows over the reads."""
    windows = ShardWindows(10, (60, 3600), wait=2.0, lateness=30.0)
    emitted = 0
    events = sum(len(b) for b in batches)
    started = time.process_time()
    for batch in batches:
        windows.add(batch)
        windows.set_caught_up(False, time.time())
        emitted += len(windows.advance(time.time()))
    # the end of the stream: let every window close, as a clock event would
    windows.set_caught_up(True, time.time())
    emitted += len(windows.advance(time.time() + 3 * 3600))
    return time.process_time() - started, events, emitted


def bytewax_items(batches: list[EventColumns], limit: int) -> list[tuple[Any, ...]]:
    items = []
    for b in batches:
        for i in range(len(b)):
            key = f"{b.tenants[i]}|{b.labels[i]}"
            ts = datetime.fromtimestamp(b.ts[i], UTC)
            items.append((key, ts, b.values[i], b.success[i], b.users[i]))
            if len(items) == limit:
                return items
    return items


def bytewax_windows(items: list[tuple[Any, ...]]) -> tuple[float, int, int]:
    """(CPU seconds, items, windows emitted) of key_on + fold_window over the items."""

    def fold(agg: Agg, item: tuple[Any, ...]) -> Agg:
        agg.add(item[2], item[3], item[4])
        return agg

    def merge(a: Agg, b: Agg) -> Agg:
        a.merge(b)
        return a

    out: list[Any] = []
    flow = Dataflow("bytewax_windows")
    stream = op.input("in", flow, TestingSource(items, batch_size=READ_EVENTS))
    keyed = op.key_on("series", stream, lambda item: item[0])
    clock = win.EventClock(lambda item: item[1], wait_for_system_duration=timedelta(seconds=2))
    windower = win.TumblingWindower(
        length=timedelta(seconds=10), align_to=datetime(2020, 1, 1, tzinfo=UTC)
    )
    folded = win.fold_window("fold", keyed, clock, windower, Agg, fold, merge)
    op.output("out", folded.down, TestingSink(out))
    started = time.process_time()
    run_main(flow)
    return time.process_time() - started, len(items), len(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--bytewax-events", type=int, default=200_000)
    parser.add_argument("--event-rate", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(machine("CPU time of this process; no servers involved"))
    print(
        f"workload: {args.events:,} events, 500 series, {args.event_rate:,} events per second "
        "of event time, reads of 20,000 events"
    )
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(args.repeat):
        batches = reads(args.events, args.event_rate)  # ShardWindows takes the columns over
        items = bytewax_items(batches, args.bytewax_events)
        seconds, events, emitted = shard_windows(batches)
        ours.append(seconds / events * 1e6)
        print(
            f"  ShardWindows (10 s + 1 min + 1 h): {ours[-1]:5.2f} µs/event over {events:,} "
            f"events, {emitted:,} windows emitted"
        )
        seconds, n, emitted = bytewax_windows(items)
        theirs.append(seconds / n * 1e6)
        print(
            f"  Bytewax key_on + fold_window (10 s only): {theirs[-1]:5.2f} µs/event over "
            f"{n:,} items, {emitted:,} windows emitted"
        )
    print(
        f"median of {args.repeat}: Bytewax per-item windowing {statistics.median(theirs):.2f} "
        f"µs/event; ShardWindows {statistics.median(ours):.2f} µs/event "
        f"({statistics.median(theirs) / statistics.median(ours):.1f}x less)"
    )


if __name__ == "__main__":
    main()
