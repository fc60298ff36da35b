"""Benchmark of the live feed: event pushed to Redis -> value visible in the SSE stream, and
the cost of 100 concurrent subscribers on the API process.

Creates a database of its own (dropped at the end), starts ``qesmon pipeline`` and ``qesmon
api`` as separate processes under a key prefix of its own, then

1. latency: XADDs one ``http_request`` event at a time for a tenant of its own and times how
   long until a snapshot on ``/api/v1/metrics/stream?tenant_id=<it>`` shows it (p50/p99;
   target p99 < 500 ms: the pipeline publishes every 250 ms, the API ticks every 250 ms).
   Each probe has an endpoint of its own and a duration longer than every probe before it,
   so it has arrived when the snapshot's p95 (the slowest endpoint's, newest window) is its
   duration: a count would also move when a window rolls out;
2. cost: with a steady load of events, the API process's CPU and RSS with 0 and with 100
   open streams (and how many snapshots per second each stream got).

    . var/env.sh && .venv/bin/python bench/live.py [--probes 200] [--subscribers 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson
import psutil
import psycopg
import redis
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from api.keys import create_key_sync  # noqa: E402
from bench._machine import machine  # noqa: E402
from bench._ports import free_port, wait_for_port  # noqa: E402
from qesmon.encode import encode_batch, encode_event, event_dict  # noqa: E402
from qesmon.migrate import apply_migrations  # noqa: E402


def request_event(tenant: str, seconds: float = 0.05, endpoint: str = "/x") -> dict[str, Any]:
    return event_dict(
        "http_request",
        seconds,
        type="performance",
        tenant=tenant,
        labels={"service": "bench", "endpoint": endpoint, "method": "GET", "status": "200"},
    )


async def snapshots(response: aiohttp.ClientResponse) -> Any:
    """Yield (receive time, snapshot) from an SSE response."""
    event = ""
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == "snapshot":
            yield time.perf_counter(), orjson.loads(line[6:])


async def latency(base: str, key: str, stream: str, redis_url: str, probes: int) -> list[float]:
    tenant = f"bench-{uuid.uuid4().hex[:6]}"
    client = aioredis.Redis.from_url(redis_url)
    out: list[float] = []
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        url = f"{base}/api/v1/metrics/stream?tenant_id={tenant}"
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=None)) as response:
            feed = snapshots(response)
            await anext(feed)
            for i in range(probes):
                await asyncio.sleep(random.uniform(0.05, 0.3))
                seconds = 0.001 * (i + 1)  # longer than every probe before it
                event = request_event(tenant, seconds, endpoint=f"/probe{i}")
                sent = time.perf_counter()
                await client.xadd(stream, encode_event(event))  # type: ignore[arg-type]
                async for at, snap in feed:
                    p95 = snap["requests"]["p95_s"]
                    if p95 is not None and abs(p95 - seconds) < 1e-9:
                        out.append(at - sent)
                        break
    await client.aclose()
    return out


async def cost(
    base: str,
    key: str,
    stream: str,
    redis_url: str,
    api: psutil.Process,
    subscribers: int,
    seconds: float,
) -> dict[str, float]:
    client = aioredis.Redis.from_url(redis_url)
    stop = asyncio.Event()
    received = [0] * subscribers

    async def load() -> None:  # ~500 events/s in batches, 20 tenants
        while not stop.is_set():
            batch = [request_event(f"t{random.randrange(20)}") for _ in range(50)]
            await client.xadd(stream, encode_batch(batch))  # type: ignore[arg-type]
            await asyncio.sleep(0.1)

    async def subscriber(i: int, session: aiohttp.ClientSession) -> None:
        query = "" if i % 2 else f"?tenant_id=t{i % 20}"
        url = f"{base}/api/v1/metrics/stream{query}"
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=None)) as response:
            async for _ in snapshots(response):
                received[i] += 1
                if stop.is_set():
                    return

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {key}"}, connector=connector
    ) as session:
        loader = asyncio.create_task(load())
        tasks = [asyncio.create_task(subscriber(i, session)) for i in range(subscribers)]
        await asyncio.sleep(2.0)  # connected, warmed up
        start_counts = list(received)
        cpu0 = api.cpu_times()
        t0 = time.monotonic()
        await asyncio.sleep(seconds)
        cpu1 = api.cpu_times()
        elapsed = time.monotonic() - t0
        rss = api.memory_info().rss
        counts = [b - a for a, b in zip(start_counts, received, strict=True)]
        stop.set()
        await loader
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await client.aclose()
    busy = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {
        "cpu_pct": busy / elapsed * 100,
        "rss_mb": rss / 2**20,
        "min_rate": min(counts) / elapsed if counts else 0.0,
        "avg_rate": statistics.mean(counts) / elapsed if counts else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    server_url = os.environ["DATABASE_URL"]
    redis_url = os.environ["REDIS_URL"]
    dbname = f"qesmon_bench_live_{uuid.uuid4().hex[:8]}"
    prefix = f"benchlive{uuid.uuid4().hex[:6]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    url = urlunsplit(urlsplit(server_url)._replace(path="/" + dbname))
    procs: list[subprocess.Popen[bytes]] = []
    workdir = tempfile.TemporaryDirectory(prefix="qesmon-bench-live-")
    try:
        apply_migrations(url)
        with psycopg.connect(url, autocommit=True) as conn:
            key = create_key_sync(conn, role="viewer", name="bench")
        rules = Path(workdir.name) / "rules"
        rules.mkdir()
        api_port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("QESMON_")},
            "DATABASE_URL": url,
            "REDIS_URL": redis_url,
            "QESMON_KEY_PREFIX": prefix,
            "RULES_DIR": str(rules),
            "API_PORT": str(api_port),
            "PROMETHEUS_METRICS_PORT": str(free_port()),
            "RESOURCE_MONITOR": "false",
            # every subscriber uses the one bench key
            "API_LIVE_STREAMS_PER_KEY": str(args.subscribers + 10),
            "WATERMARK_WAIT_SECONDS": "1",
            "LOG_LEVEL": "WARNING",
        }
        recovery = str(Path(workdir.name) / "recovery")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "cli", "pipeline", "--recovery-dir", recovery],
                env=env,
                cwd=ROOT,
            )
        )
        api_proc = subprocess.Popen([sys.executable, "-m", "cli", "api"], env=env, cwd=ROOT)
        procs.append(api_proc)
        base = f"http://127.0.0.1:{api_port}"
        stream = f"{prefix}:metrics"
        sync = redis.Redis.from_url(redis_url)
        deadline = time.monotonic() + 60
        sync.xadd(stream, encode_event(event_dict("warmup", 1.0)))  # type: ignore[arg-type]
        while not list(sync.scan_iter(match=f"{prefix}:live:windows:*")):
            if time.monotonic() > deadline:
                raise SystemExit("the pipeline did not publish a live window within 60 s")
            time.sleep(0.2)
        wait_for_port(api_port, deadline)

        print(machine("Redis/TimescaleDB/pipeline/API/clients on the same box"))
        lat = asyncio.run(latency(base, key, stream, redis_url, args.probes))
        lat_ms = sorted(x * 1000 for x in lat)
        p50 = statistics.median(lat_ms)
        p99 = lat_ms[min(len(lat_ms) - 1, int(len(lat_ms) * 0.99))]
        print(
            f"XADD -> SSE snapshot, {len(lat_ms)} probes: p50 {p50:.0f} ms, p99 {p99:.0f} ms, "
            f"max {lat_ms[-1]:.0f} ms (target p99 < 500 ms: {'met' if p99 < 500 else 'MISSED'})"
        )
        api = psutil.Process(api_proc.pid)
        print(f"API process cost, {args.seconds:.0f} s under ~500 events/s:")
        print(f"{'subscribers':>11} {'CPU %':>7} {'RSS MB':>7} {'snapshots/s per stream':>24}")
        for n in (0, args.subscribers):
            r = asyncio.run(cost(base, key, stream, redis_url, api, n, args.seconds))
            rates = f"min {r['min_rate']:.1f}, avg {r['avg_rate']:.1f}" if n else "-"
            print(f"{n:>11} {r['cpu_pct']:7.1f} {r['rss_mb']:7.1f} {rates:>24}")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        workdir.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
