"""Benchmark of the Python SDK: the caller's cost of ``record_*`` and the flush rate into Redis.

    . var/env.sh && .venv/bin/python bench/sdk.py [--quick]

Uses ``REDIS_URL`` and throw-away stream keys (``bench:sdk:<random>:*``) that it deletes.
Prints:
- median and p99 of one ``record_*`` call (targets: median < 20 µs), with Redis up and with
  Redis unreachable (a closed port), to show the call never waits for the network;
- the sustained flush rate of one process, for one event per entry and for batched entries
  (targets: >= 40,000 and >= 200,000 events/s): the buffer is filled first, then the time to
  deliver everything is measured; and the same with the process also making the
  ``record_*`` calls (what an application doing nothing else could push).
Every run checks that the stream holds exactly the events sent.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import statistics
import sys
import time
import uuid
from typing import Any

import redis.asyncio
from _machine import machine

from qesmon.sdk import MetricsCollector, MetricType
from qesmon.sdk.events import performance_event

LABELS = {"endpoint": "/api/v1/documents/{id}", "method": "GET", "status": "200", "service": "api"}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def stream_events(r: redis.asyncio.Redis, key: str) -> int:
    """Events in a stream: one per flat entry, len(events) per batched entry."""
    import orjson

    total = 0
    last = "-"
    while True:
        chunk = await r.xrange(key, min=last, count=1000)
        if last != "-":
            chunk = chunk[1:]
        if not chunk:
            return total
        for _, fields in chunk:
            batch = fields.get(b"events")
            total += len(orjson.loads(batch)) if batch is not None else 1
        last = chunk[-1][0].decode()


async def record_latency(url: str, key: str, calls: int) -> dict[str, float]:
    """Per-call time of record_performance_metric / record_metric, in microseconds."""
    results: dict[str, float] = {}
    for label, target in (("Redis up", url), ("Redis down", f"redis://127.0.0.1:{closed_port()}")):
        collector = MetricsCollector(target, streams=key, max_buffer=calls * 2 + 10)
        await collector.start()
        perf: list[int] = []
        revenue: list[int] = []
        clock = time.perf_counter_ns
        for i in range(calls):
            t0 = clock()
            await collector.record_performance_metric(
                "http_request", 0.0123, True, LABELS, tenant_id="tenant-1"
            )
            t1 = clock()
            await collector.record_metric(
                metric_type=MetricType.REVENUE,
                name="subscription_payment",
                value=49.0,
                labels={"plan": "pro", "currency": "EUR", "kind": "new"},
                tenant_id="tenant-1",
            )
            t2 = clock()
            perf.append(t1 - t0)
            revenue.append(t2 - t1)
            if i % 500 == 0:
                await asyncio.sleep(0)  # let the flusher run, as an application would
        for name, samples in (("record_performance_metric", perf), ("record_metric", revenue)):
            samples.sort()
            med = statistics.median(samples) / 1000
            p99 = samples[int(len(samples) * 0.99)] / 1000
            print(f"  {name:26s} {label:10s}  median {med:6.2f} µs   p99 {p99:7.2f} µs")
            results[f"{name} {label}"] = med
        await collector.close(timeout=0.5 if label == "Redis down" else 10)
    return results


async def delivered_rate(
    collector: MetricsCollector, r: redis.asyncio.Redis, key: str, n: int, started: float
) -> float:
    """Close ``collector`` (delivering all), check that all ``n`` events arrived, and return
    events/s since ``started``; the stream is deleted."""
    await collector.close(timeout=120)
    elapsed = time.perf_counter() - started
    stats = collector.stats
    delivered = await stream_events(r, key)
    assert stats.sent == n == delivered and stats.dropped == 0, (stats, delivered)
    await r.delete(key)
    return n / elapsed


async def flush_rate(url: str, r: redis.asyncio.Redis, key: str, batch: int, n: int) -> float:
    """Fill the buffer with n events, then time their delivery."""
    template = performance_event("http_request", 0.0123, True, LABELS, "tenant-1")
    collector = MetricsCollector(url, streams=key, batch_size=batch, max_buffer=n)
    for i in range(n):
        event = dict(template)
        event["value"] = i / 1000.0
        collector.submit(event)
    started = time.perf_counter()
    await collector.start()
    return await delivered_rate(collector, r, key, n, started)


async def end_to_end_rate(url: str, r: redis.asyncio.Redis, key: str, batch: int, n: int) -> float:
    """One process calling record_* as fast as it can while the flusher delivers."""
    collector = MetricsCollector(url, streams=key, batch_size=batch, max_buffer=100_000)
    started = time.perf_counter()
    await collector.start()
    for i in range(n):
        await collector.record_performance_metric(
            "http_request", 0.0123, True, LABELS, tenant_id="tenant-1"
        )
        if i % 1000 == 999:
            await asyncio.sleep(0)
            while collector.stats.buffered > 50_000:  # a real app would not outrun it
                await asyncio.sleep(0.001)
    return await delivered_rate(collector, r, key, n, started)


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the Redis-down run warns on purpose
    url = os.environ.get("REDIS_URL")
    if not url:
        print("REDIS_URL is not set (run `. var/env.sh` first)", file=sys.stderr)
        return 2
    scale = 0.1 if args.quick else 1.0
    prefix = f"bench:sdk:{uuid.uuid4().hex[:8]}"
    r = redis.asyncio.Redis.from_url(url)
    print(machine("expect noise"))
    print(f"redis: {(await r.info('server'))['redis_version']}")
    figures: dict[str, Any] = {}
    try:
        print("caller's path (per call):")
        figures.update(await record_latency(url, f"{prefix}:latency", int(20_000 * scale)))
        print("flush rate (buffer filled first, then delivered):")
        for name, batch, n in (
            ("one event per entry", 1, int(200_000 * scale)),
            ("batched, 1000 per entry", 1000, int(1_000_000 * scale)),
        ):
            rates = [await flush_rate(url, r, f"{prefix}:flush", batch, n) for _ in range(3)]
            rate = statistics.median(rates)
            figures[name] = rate
            print(f"  {name:26s} {rate:12,.0f} events/s (median of 3)")
        print("record_* + flush in one process:")
        for name, batch, n in (
            ("one event per entry", 1, int(100_000 * scale)),
            ("batched, 1000 per entry", 1000, int(300_000 * scale)),
        ):
            rate = await end_to_end_rate(url, r, f"{prefix}:e2e", batch, n)
            print(f"  {name:26s} {rate:12,.0f} events/s")
    finally:
        keys = [k async for k in r.scan_iter(match=f"{prefix}:*")]
        if keys:
            await r.delete(*keys)
        await r.aclose()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
