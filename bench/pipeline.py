"""Pipeline benchmark: events/s end to end, against a bare XREAD+parse loop, close delay, RSS.

    . var/env.sh && .venv/bin/python bench/pipeline.py [--events 2000000] [--batch 0|1000]

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
then a live phase: events stamped now at a steady rate for 20 s, measuring the window-close
delay (window end + wait -> row committed) of every 10 s window.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import psutil
import psycopg
import redis
from _machine import machine
from _scratch import scratch_database
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import run_main

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.dataflow import build_flow
from pipeline.health import PipelineStats
from pipeline.run import tune_memory
from qesmon.contract import parse_entries
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


def generate_entries(
    n: int, batch: int, start: float, event_rate: float, chunk: int = 100_000
) -> Iterator[list[dict[str, bytes | str]]]:
    """The workload in chunks of entries (so the benchmark's own memory stays flat)."""
    rng = random.Random(1)
    endpoints = [f"/api/v1/ep{i}" for i in range(20)]
    tenants = [f"tenant-{i}" for i in range(25)]
    labels = {
        ep: orjson.dumps({"endpoint": ep, "method": "POST", "service": "api"}) for ep in endpoints
    }
    span = n / event_rate  # seconds of event time the workload covers
    for offset in range(0, n, chunk):
        count = min(chunk, n - offset)
        if batch:
            events = [
                {
                    "name": "http_request",
                    "type": "performance",
                    "value": round(rng.lognormvariate(-2.5, 0.8), 4),
                    "ts": round(start + span * (offset + i) / n, 3),
                    "tenant": rng.choice(tenants),
                    "user": f"u{rng.randint(1, 5000)}",
                    "labels": orjson.loads(labels[rng.choice(endpoints)]),
                    "success": rng.random() > 0.02,
                }
                for i in range(count)
            ]
            yield [{"events": orjson.dumps(events[i : i + batch])} for i in range(0, count, batch)]
        else:
            yield [
                {
                    "name": "http_request",
                    "type": "performance",
                    "value": str(round(rng.lognormvariate(-2.5, 0.8), 4)),
                    "ts": str(round(start + span * (offset + i) / n, 3)),
                    "tenant": rng.choice(tenants),
                    "user": f"u{rng.randint(1, 5000)}",
                    "labels": labels[rng.choice(endpoints)],
                    "success": "true" if rng.random() > 0.02 else "false",
                }
                for i in range(count)
            ]


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


def live_phase(settings: Settings, rate: int, seconds: float) -> list[float]:
    """Events stamped now at ``rate``/s; returns close delays of the 10 s windows."""
    client = redis.Redis.from_url(settings.redis_url)
    stream = settings.streams.metrics[0]
    stats = PipelineStats()
    stop_ms = int((time.time() + seconds + 10 + settings.watermark_wait + 2) * 1000)

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
    return stats.close_delays


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
    parser.add_argument("--no-live", action="store_true")
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
            rss_before = psutil.Process().memory_info().rss / 2**20
            stats = run_pipeline(settings, stop_at, args.events)
            assert stats.first_read is not None
            elapsed = stats.last_write - stats.first_read
            rate = args.events / elapsed
            rss_end = psutil.Process().memory_info().rss / 2**20
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
            with psycopg.connect(url) as conn:
                rows = conn.execute(
                    "SELECT width_s, count(*), sum(count) FROM metric_rollups GROUP BY 1 ORDER BY 1"
                ).fetchall()
            for width, n, events in rows:
                print(f"  width {width:>4} s: {n:,} rollup rows, {int(events):,} events")
            if not args.no_live:
                live = dataclasses.replace(settings, key_prefix=f"{prefix}live")
                delays = sorted(live_phase(live, args.live_rate, 20.0))
                if delays:
                    p99 = delays[min(len(delays) - 1, int(0.99 * len(delays)))]
                    print(
                        f"live at {args.live_rate:,} events/s: window-close delay (end + wait -> "
                        f"committed) p50 {statistics.median(delays):.3f} s, p99 {p99:.3f} s, "
                        f"max {delays[-1]:.3f} s over {len(delays)} windows"
                    )
        finally:
            keys = list(client.scan_iter(match=f"{prefix}*"))
            if keys:
                client.delete(*keys)
            client.close()


if __name__ == "__main__":
    main()
