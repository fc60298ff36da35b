"""Pipeline benchmark: events/s end to end, against a bare XREAD+parse loop, close delay, RSS.

    . var/env.sh && .venv/bin/python bench/pipeline.py [--events 2000000] [--batch 0|1000]
        [--no-live] [--live-seconds 20] [--rules-share [PAIRS]] [--profile]

Pushes M events (default 2,000,000) into a throw-away stream, then, on the same entries:
(the workload: 500 series (25 tenants x 20 endpoints), 5,000 users, stamped at --event-rate
events per second of event time, 20,000 by default like the live phase; the windows' state
grows until the first windows become final, after wait + lateness + 10 s of event time, and
is flat from then on)
1. a bare loop that only reads the stream (XREAD, as many entries per read as the pipeline's
   source takes) and parses every read with the contract parser (``parse_entries``, exactly
   as the pipeline does): the ceiling of one Python process;
2. the real dataflow (one process, recovery on, 5 s snapshots) from first read to last
   rollup committed, with the RSS each time another million events were counted, and its peak;
Before it prints a rate it checks that the rollups count every pushed event (in each of the
10 s, 1 min and 1 h tiers); a run that lost or double-counted events exits with status 1.
Then a live phase: events stamped now at a steady rate for ``--live-seconds``, measuring the
window-close delay (window end + wait -> row committed) of every 10 s window that closes, as
the slowest of its series; a p99 is printed only over 100 closes or more (a 1,000 s phase).

``--rules-share [PAIRS]`` instead runs the dataflow over the same entries without rules and
with the shipped rules (``rules/*.yaml``), alternating, PAIRS times each (default 3), and
prints the rules' share of the pipeline's CPU time (median with minus median without, over
the median with). ``--profile`` instead runs it once under cProfile and prints where the
time goes (inclusive time of the pipeline's own steps; cProfile inflates Python-level calls,
so shares, not times, are the figure).
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import math
import os
import pstats
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import psutil
import psycopg
import redis
from _machine import machine
from _scratch import scratch_database
from _workload import generate_entries
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import run_main

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import alerting
from pipeline.dataflow import build_flow
from pipeline.health import PipelineStats
from pipeline.run import tune_memory
from qesmon.columns import parse_entries
from qesmon.settings import Settings

EPOCH_SECONDS = 5.0  # Bytewax epoch = snapshot interval (set by --epoch)
RSS_MARK = 1_000_000  # RSS is noted each time this many more events were counted


class BenchStats(PipelineStats):
    """Pipeline stats that also note when the first entry was read and the last row written."""

    def __init__(self, total_events: int) -> None:
        super().__init__()
        self.first_read: float | None = None
        self.last_write = 0.0
        self.total = total_events
        #: RSS (MiB) when the events counted first reached each mark (1M, 2M, ...)
        self.rss: dict[int, float] = {}
        self.peak_rss = 0.0
        self._process = psutil.Process()

    def incr(self, name: str, amount: float = 1.0) -> None:
        super().incr(name, amount)
        now = time.perf_counter()
        if name == "entries_total" and amount and self.first_read is None:
            self.first_read = now
        elif name == "sink_rows_total":
            self.last_write = now
        elif name == "events_total":
            rss = self._process.memory_info().rss / 2**20
            self.peak_rss = max(self.peak_rss, rss)
            mark = int(self.totals["events_total"] // RSS_MARK) * RSS_MARK
            if mark and mark not in self.rss:
                self.rss[mark] = rss


def push(client: redis.Redis, stream: str, entries: list[dict[str, bytes | str]]) -> int:
    for i in range(0, len(entries), 2000):
        pipe = client.pipeline(transaction=False)
        for fields in entries[i : i + 2000]:
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
        pipe.execute()
    return len(entries)


def bare_loop(redis_url: str, stream: str, count: int) -> tuple[float, int]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    last = "0-0"
    events = 0
    started = time.perf_counter()
    while True:
        reply: Any = client.xread({stream: last}, count=count)
        if not reply:
            break
        entries = reply[0][1]
        parsed, _ = parse_entries(entries)  # the pipeline's own parse of a read
        events += len(parsed)
        last = entries[-1][0]
    elapsed = time.perf_counter() - started
    client.close()
    return events / elapsed, events


def run_pipeline(settings: Settings, stop_at: str, total: int) -> BenchStats:
    tune_memory()  # as `qesmon pipeline` does
    stats = BenchStats(total)
    with tempfile.TemporaryDirectory() as tmp:
        init_db_dir(Path(tmp), 1)
        flow = build_flow(settings, stats=stats, stop_at=stop_at)
        run_main(
            flow,
            epoch_interval=timedelta(seconds=EPOCH_SECONDS),
            recovery_config=RecoveryConfig(Path(tmp)),
        )
    return stats


class CloseStats(PipelineStats):
    """Pipeline stats that keep each close delay with the end of the window it belongs to."""

    def __init__(self, wait: float) -> None:
        super().__init__()
        self.wait = wait
        #: window end -> the slowest close delay of its series
        self.closes: dict[float, float] = {}

    def record_close_delay(self, seconds: float) -> None:
        super().record_close_delay(seconds)
        end = round(time.time() - seconds - self.wait, 1)  # the sink: now - (end + wait)
        self.closes[end] = max(self.closes.get(end, 0.0), seconds)


def live_phase(settings: Settings, rate: int, seconds: float) -> list[float]:
    """Events stamped now at ``rate``/s; returns the close delay of each 10 s window."""
    client = redis.Redis.from_url(settings.redis_url)
    stream = settings.streams.metrics[0]
    stats = CloseStats(settings.pipeline.watermark_wait)
    stop_ms = int((time.time() + seconds + 10 + settings.pipeline.watermark_wait + 2) * 1000)

    def produce() -> None:
        started = time.time()
        sent = 0
        while time.time() - started < seconds:
            now = time.time()
            due = int((now - started) * rate) - sent
            if due > 0:
                batch = [
                    {
                        "name": "live_request",
                        "type": "performance",
                        "value": 0.1,
                        "ts": now,
                        "labels": {"endpoint": f"/e{i % 10}"},
                    }
                    for i in range(due)
                ]
                client.xadd(stream, {"events": orjson.dumps(batch)})
                sent += due
            time.sleep(0.02)
        # let the last windows close (end + wait), then end the run with the stop entry
        time.sleep(max(0.0, stop_ms / 1000 - time.time() + 0.05))
        client.xadd(stream, {"name": "live_stop", "value": "1"}, id=f"{stop_ms}-0")

    producer = threading.Thread(target=produce, daemon=True)
    with tempfile.TemporaryDirectory() as tmp:
        init_db_dir(Path(tmp), 1)
        flow = build_flow(settings, stats=stats, stop_at=f"{stop_ms}-0")
        producer.start()
        run_main(
            flow,
            epoch_interval=timedelta(seconds=EPOCH_SECONDS),
            recovery_config=RecoveryConfig(Path(tmp)),
        )
    client.close()
    return list(stats.closes.values())


def rollup_counts(database_url: str) -> list[tuple[int, int, int]]:
    """(width, rows, events counted) per rollup tier."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT width_s, count(*), sum(count) FROM metric_rollups GROUP BY 1 ORDER BY 1"
        ).fetchall()
    return [(int(width), int(n), int(events)) for width, n, events in rows]


def check_counted(database_url: str, events: int, *, show: bool = True) -> None:
    """Exit with status 1 unless every tier of rollups counts exactly ``events`` events."""
    tiers = rollup_counts(database_url)
    if show:
        for width, n, counted in tiers:
            print(f"  width {width:>4} s: {n:,} rollup rows, {counted:,} events")
    wrong = [t for t in tiers if t[2] != events]
    if len(tiers) != 3 or wrong:
        print(f"ERROR: the rollups do not count the {events:,} events pushed: {tiers}")
        raise SystemExit(1)


def reset_outputs(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE metric_rollups_10s, metric_rollups_1m, metric_rollups_1h, alerts,"
            " alert_events CASCADE"
        )


class RulesClock:
    """CPU time spent in the pipeline's rule steps (evaluation, alert writes), measured from
    inside the run by wrapping them."""

    def __init__(self) -> None:
        self.seconds = 0.0
        for cls, name in (
            (alerting.RulesLogic, "on_item"),
            (alerting._AlertPartition, "write_batch"),
        ):
            setattr(cls, name, self._timed(getattr(cls, name)))

    def _timed(self, method: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.process_time()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.process_time() - started

        return timed


def rules_share(settings: Settings, stop_at: str, events: int, pairs: int) -> None:
    """The dataflow without rules and with the shipped ones, alternating, on the same entries
    (after one discarded warm-up run); in the runs with rules the rule steps are also timed."""
    shipped = Path(__file__).resolve().parent.parent / "rules"
    clock = RulesClock()
    with tempfile.TemporaryDirectory() as empty:
        variants = {"without rules": Path(empty), "with the shipped rules": shipped}
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        inside: list[float] = []
        runs = [("warm-up", Path(empty))] + [v for _ in range(pairs) for v in variants.items()]
        for name, rules_dir in runs:
            reset_outputs(settings.database_url)
            clock.seconds = 0.0
            started = time.process_time()
            stats = run_pipeline(
                dataclasses.replace(settings, rules_dir=rules_dir), stop_at, events
            )
            used = time.process_time() - started
            check_counted(settings.database_url, events, show=False)
            assert stats.first_read is not None
            wall = stats.last_write - stats.first_read
            note = ""
            if name in cpu:
                cpu[name].append(used)
            if rules_dir == shipped:
                inside.append(clock.seconds / used)
                note = f"; rule steps {clock.seconds:.2f} s = {inside[-1]:.1%}"
            print(
                f"  {name:22}: {used:6.2f} s CPU, {wall:6.2f} s wall "
                f"({events / wall:,.0f} events/s){note}"
            )
    print(
        f"rules' share of the pipeline's CPU time, timed inside each run with the rules: "
        f"{', '.join(f'{x:.1%}' for x in inside)} (median {statistics.median(inside):.1%}; "
        "target <= 20 %)"
    )
    without = statistics.median(cpu["without rules"])
    with_rules = statistics.median(cpu["with the shipped rules"])
    print(
        f"cross-check, runs with vs without rules (medians of {pairs}): "
        f"{(with_rules - without) / with_rules:+.1%} ({without:.2f} s without, "
        f"{with_rules:.2f} s with; the box's noise is about ±15 %)"
    )


# The pipeline's own steps, by (module file, function): inclusive time, none nested in another.
PROFILE_STEPS = {
    "reading (XREAD)": [("pipeline/source.py", "next_batch")],
    "parsing: JSON decoding (orjson)": [],  # orjson.loads called from the contract parser
    "parsing: column checks": [  # minus the decoding
        ("qesmon/contract.py", "parse_entries"),
        ("qesmon/columns.py", "parse_entries"),
    ],
    "windowing (grouping, folding, sketches, merges)": [
        ("pipeline/windows.py", "add"),
        ("pipeline/windows.py", "advance"),
        ("pipeline/windows.py", "take_touched"),
    ],
    "rollup and dead-letter writes": [
        ("pipeline/sinks.py", "write_batch"),
    ],
    "rules": [("pipeline/alerting.py", "on_item"), ("pipeline/alerting.py", "write_batch")],
    "live cache": [("pipeline/live.py", "publish")],
    "snapshots": [
        ("pipeline/dataflow.py", "snapshot"),
        ("pipeline/alerting.py", "snapshot"),
        ("pipeline/source.py", "snapshot"),
    ],
}


def profile_breakdown(stats: pstats.Stats, events: int) -> None:
    raw: Any = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for _, _, tt, _, _ in raw.values())
    shares: dict[str, float] = {}
    for name, steps in PROFILE_STEPS.items():
        shares[name] = sum(
            ct
            for (path, _, func), (_, _, _, ct, _) in raw.items()
            for suffix, wanted in steps
            if path.endswith(suffix) and func == wanted
        )
    decoding = 0.0
    for (path, _, func), (_, _, _, _, callers) in raw.items():
        if path == "~" and "orjson.loads" in func:
            decoding += sum(
                ct
                for caller, (_, _, _, ct) in callers.items()
                if caller[0].endswith(("qesmon/contract.py", "qesmon/columns.py"))
            )
    shares["parsing: JSON decoding (orjson)"] = decoding
    shares["parsing: column checks"] -= decoding
    shares["Bytewax and the rest"] = total - sum(shares.values())
    print(f"where the time goes (cProfile, {events:,} events, {total:.1f} s profiled):")
    for name, seconds in shares.items():
        print(f"  {name:50} {seconds / total:6.1%}  {seconds / events * 1e6:6.2f} µs/event")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--batch", type=int, default=0, help="events per entry (0 = one)")
    parser.add_argument(
        "--event-rate",
        type=int,
        default=20_000,
        help="events per second of event time in the backlog (default: the live rate)",
    )
    parser.add_argument("--live-rate", type=int, default=20_000)
    parser.add_argument("--live-seconds", type=float, default=20.0)
    parser.add_argument("--no-live", action="store_true")
    parser.add_argument("--rules-share", type=int, nargs="?", const=3, default=0, metavar="PAIRS")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--epoch", type=float, default=5.0, help="snapshot interval, seconds")
    args = parser.parse_args()
    global EPOCH_SECONDS
    EPOCH_SECONDS = args.epoch
    base = Settings.from_env(os.environ)
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    with scratch_database(base.database_url) as url:
        settings = Settings(redis_url=base.redis_url, database_url=url, key_prefix=prefix)
        client = redis.Redis.from_url(settings.redis_url)
        stream = settings.streams.metrics[0]
        try:
            print(machine())
            start = time.time() - 7200 - args.events / args.event_rate
            t = time.perf_counter()
            pushed = sum(
                push(client, stream, chunk)
                for chunk in generate_entries(args.events, args.batch, start, args.event_rate)
            )
            print(
                f"pushed {args.events:,} events in {pushed:,} entries "
                f"({args.events / (time.perf_counter() - t):,.0f} events/s)"
            )
            clock = client.xadd(stream, {"name": "bench_clock", "value": "1"})
            stop_at = clock.decode() if isinstance(clock, bytes) else str(clock)
            events = args.events  # the clock event stays in its open window: not written
            if args.rules_share:
                rules_share(settings, stop_at, events, args.rules_share)
                return
            if args.profile:
                profiler = cProfile.Profile()
                profiler.enable()
                run_pipeline(settings, stop_at, events)
                profiler.disable()
                check_counted(url, events)
                profile_breakdown(pstats.Stats(profiler), events)
                return
            rss_before = psutil.Process().memory_info().rss / 2**20
            stats = run_pipeline(settings, stop_at, args.events)
            assert stats.first_read is not None
            elapsed = stats.last_write - stats.first_read
            rate = args.events / elapsed
            rss_end = psutil.Process().memory_info().rss / 2**20
            check_counted(url, events)  # before any rate is printed
            # the same entries per read as the pipeline's source takes
            count = max(1, 20_000 // args.batch) if args.batch else 1000
            bare_rate, bare_events = bare_loop(settings.redis_url, stream, count)
            print(
                f"bare loop (XREAD + parse): {bare_rate:,.0f} events/s over {bare_events:,} events"
            )
            print(
                f"pipeline: {rate:,.0f} events/s ({elapsed:.2f} s from first read to last "
                f"rollup committed); ratio pipeline / bare loop = {rate / bare_rate:.2f}"
            )
            marks = ", ".join(
                f"{rss:.0f} MiB at {mark:,}" for mark, rss in sorted(stats.rss.items())
            )
            print(
                f"RSS: {rss_before:.0f} MiB before the run; {marks} events counted; peak "
                f"{stats.peak_rss:.0f} MiB; {rss_end:.0f} MiB after it"
            )
            if len(stats.rss) >= 2:
                first, last = min(stats.rss), max(stats.rss)
                growth = stats.rss[last] / stats.rss[first] - 1
                print(f"RSS at {last:,} events vs at {first:,}: {growth:+.1%}")
            if not args.no_live:
                live = dataclasses.replace(settings, key_prefix=f"{prefix}live")
                delays = sorted(live_phase(live, args.live_rate, args.live_seconds))
                if delays:
                    p99 = (
                        f"p99 {delays[math.ceil(0.99 * len(delays)) - 1]:.3f} s, "
                        if len(delays) >= 100
                        else "(too few closes for a p99) "
                    )
                    within = "every close within it" if delays[-1] <= 1 else "no"
                    print(
                        f"live at {args.live_rate:,} events/s for {args.live_seconds:g} s: "
                        f"window-close delay (end + wait -> committed, slowest series) over "
                        f"{len(delays)} closes of 10 s windows: p50 {statistics.median(delays):.3f}"
                        f" s, {p99}max {delays[-1]:.3f} s "
                        f"(target p99 <= 1 s: {within})"
                    )
        finally:
            keys = list(client.scan_iter(match=f"{prefix}*"))
            if keys:
                client.delete(*keys)
            client.close()


if __name__ == "__main__":
    main()
