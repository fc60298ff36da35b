"""Benchmark of the REST API and the exporter over 30 days of rollups for 1,000 series.

Creates a database of its own (dropped at the end), loads hourly rollups for 30 days, minute
rollups for the last 2 hours and 10 s rollups for the last 2 minutes of 1,000 series (the
pipeline's own RollupWriter writes them), starts ``qesmon api`` as a separate process and
measures, per endpoint: the first (cold) request, p50/p99 of sequential requests, and
requests/s with 8 concurrent clients (``--cold``: see below). Those repeated requests are
served from the API's report cache (a document is recomputed in the background once it is 2 s
old), so the bench then measures the computation behind it as well: the same report builders
the API runs (``dashboard.build`` ...), called in this process on a connection of its own with
a warm hour cache and no report cache — what a request pays when its document is missing or
older than 30 s. Targets: dashboard p99 < 100 ms, scrape < 50 ms.

    . var/env.sh && .venv/bin/python bench/api.py [--requests 200] [--database NAME]
    . var/env.sh && .venv/bin/python bench/api.py --cold

``--cold`` (issue 16's restart-fast targets): 335 more days of day rows before the 30 days of
hours, a ``qesmon maintain`` pass (the hours merged into day rows, users per tenant and day
counted: 1,000 series × 365 days at the day tier), then a freshly started API: the first
dashboard (7 d), business-intelligence (30 d and 365 d) request and the exporter's first scrape
with data, timed from the API's start, and the API process's peak RSS meanwhile. Targets:
dashboard ≤ 1 s, BI 30 d ≤ 2 s, BI 365 d ≤ 5 s, exporter ≤ 2 s, RSS ≤ 300 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from api import business, dashboard, performance  # noqa: E402
from api.keys import create_key_sync  # noqa: E402
from api.store import HourCache  # noqa: E402
from bench._machine import machine  # noqa: E402
from bench._ports import free_port, wait_for_port  # noqa: E402
from bench._scratch import scratch_database  # noqa: E402
from cli.maintain import run_pass  # noqa: E402
from pipeline.sinks import RollupWriter  # noqa: E402
from qesmon.series import Series, WindowResult  # noqa: E402
from qesmon.settings import Settings  # noqa: E402
from qesmon.sketch import Agg  # noqa: E402

HOUR = 3600
TENANTS = [f"tenant-{i}" for i in range(10)]


def series_mix() -> list[tuple[Series, str]]:
    """1,000 series: (series, template kind)."""
    out: list[tuple[Series, str]] = []
    endpoints = [f"/api/v1/ep{i}" for i in range(10)]
    for tenant in TENANTS:
        for ep in endpoints:
            for status in ("200", "500", "404"):
                labels = (
                    ("endpoint", ep),
                    ("method", "POST"),
                    ("service", "signing"),
                    ("status", status),
                )
                out.append((Series("http_request", "performance", tenant, labels), "http"))
        for plan in ("basic", "pro"):
            for cur in ("EUR", "USD"):
                for kind in ("new", "recurring"):
                    labels = (("currency", cur), ("kind", kind), ("plan", plan))
                    out.append((Series("subscription_payment", "revenue", tenant, labels), "pay"))
        out.append((Series("signatures_created", "usage", tenant, ()), "count"))
        out.append((Series("documents_uploaded", "usage", tenant, ()), "count"))
        out.append((Series("user_signup", "business_event", tenant, ()), "users"))
        out.append((Series("user_login", "business_event", tenant, ()), "users"))
        for feature in ("eseal", "bulk_sign", "templates", "api_access", "audit_export"):
            out.append((Series(feature, "feature_usage", tenant, ()), "users"))
        out.append(
            (Series("quota_utilization", "usage", tenant, (("resource", "signatures"),)), "gauge")
        )
    for host in range(10):
        h = (("host", f"host-{host}"),)
        out.append((Series("cpu_usage", "system", "", h), "gauge"))
        out.append((Series("memory_usage", "system", "", h), "gauge"))
        out.append((Series("disk_usage", "system", "", (*h, ("mount", "/"))), "gauge"))
    k = 0
    while len(out) < 1000:
        out.append((Series(f"custom_metric_{k}", "custom", random.choice(TENANTS), ()), "count"))
        k += 1
    return out[:1000]


def templates(rnd: random.Random, scale: float = 1.0) -> dict[str, list[Agg]]:
    """Aggregates to reuse as rows; ``scale`` shrinks them for 1 min and 10 s windows."""

    def make(n_values: int, n_users: int, low: float, high: float, err: float) -> Agg:
        agg = Agg()
        n_values = max(1, int(n_values * scale))
        n_users = int(n_users * scale) if n_users else 0
        for _ in range(n_values):
            user = f"u{rnd.randrange(n_users)}" if n_users else None
            agg.add(rnd.uniform(low, high), rnd.random() > err, user)
        return agg

    return {
        "http": [make(rnd.randint(20, 600), 400, 0.01, 1.5, 0.03) for _ in range(20)],
        "pay": [make(rnd.randint(1, 6), 0, 9, 99, 0) for _ in range(10)],
        "count": [make(rnd.randint(5, 50), 0, 1, 5, 0) for _ in range(10)],
        "users": [make(rnd.randint(5, 80), 300, 1, 1, 0) for _ in range(10)],
        "gauge": [make(rnd.randint(1, 360), 0, 20, 95, 0) for _ in range(10)],
    }


def load(database_url: str, now: float) -> int:
    rnd = random.Random(1)
    # an hour holds 60 minutes and 360 ten-second windows: smaller aggregates for those
    pools = {HOUR: templates(rnd), 60: templates(rnd, 1 / 20), 10: templates(rnd, 1 / 60)}
    mix = series_mix()
    hour_now = math.floor(now / HOUR) * HOUR
    minute_now = math.floor(now / 60) * 60
    windows = [(HOUR, float(hour_now - i * HOUR)) for i in range(1, 30 * 24 + 1)]
    windows += [(60, float(minute_now - i * 60)) for i in range(1, 121)]
    windows += [
        (10, float(minute_now - 120 + i * 10))
        for i in range(0, 12 + 6)
        if minute_now - 120 + i * 10 + 10 <= now
    ]
    return write_rollups(
        database_url,
        (
            WindowResult(series, width, start, rnd.choice(pools[width][kind]))
            for width, start in windows
            for series, kind in mix
        ),
    )


def write_rollups(database_url: str, results: Iterable[WindowResult]) -> int:
    """Write ``results`` with the pipeline's own writer, 20,000 rows a batch; how many."""
    writer = RollupWriter(database_url)
    rows = 0
    try:
        it = iter(results)
        while batch := list(itertools.islice(it, 20_000)):
            writer.write(batch)
            rows += len(batch)
    finally:
        writer.close()
    return rows


async def measure(url: str, headers: dict[str, str], n: int) -> dict[str, float]:
    async with aiohttp.ClientSession(headers=headers) as session:
        started = time.perf_counter()
        async with session.get(url) as resp:
            assert resp.status == 200, (url, resp.status, await resp.text())
            await resp.read()
        cold = time.perf_counter() - started
        lat = []
        for _ in range(n):
            t = time.perf_counter()
            async with session.get(url) as resp:
                await resp.read()
                assert resp.status == 200
            lat.append(time.perf_counter() - t)
        lat.sort()
        total = n
        done = 0

        async def worker() -> None:
            nonlocal done
            while done < total:
                done += 1
                async with session.get(url) as resp:
                    await resp.read()

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(8)))
        rps = total / (time.perf_counter() - t)
    return {
        "cold_ms": cold * 1000,
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": lat[min(len(lat) - 1, math.ceil(0.99 * len(lat)) - 1)] * 1000,
        "rps": rps,
    }


def _percentiles(lat: list[float]) -> tuple[float, float]:
    lat = sorted(lat)
    return statistics.median(lat) * 1000, lat[
        min(len(lat) - 1, math.ceil(0.99 * len(lat)) - 1)
    ] * 1000


async def computation(
    url: str, requests: int, with_bi: bool
) -> dict[str, tuple[float, float, float]]:
    """(first, p50, p99) ms of each report's computation, report cache bypassed; the
    business-intelligence report only ``with_bi`` (its first computation fills 30 days of
    merged hours: a minute or two)."""
    settings = Settings.from_env({**os.environ, "DATABASE_URL": url})
    hours = HourCache(settle_seconds=settings.pipeline.allowed_lateness + 120.0)
    slow = settings.api.slow_request_threshold
    builders = {
        "dashboard 7d": lambda conn: dashboard.build(
            conn, hours, tenant=None, days=7, now=time.time(), slow_threshold=slow
        ),
        "dashboard 7d, one tenant": lambda conn: dashboard.build(
            conn, hours, tenant="tenant-3", days=7, now=time.time(), slow_threshold=slow
        ),
        "performance 24h": lambda conn: performance.build(
            conn, hours, tenant=None, hours=24, now=time.time(), slow_threshold=slow
        ),
    }
    if with_bi:
        builders["business-intelligence 30d"] = lambda conn: business.build(
            conn, hours, tenant=None, days=30, now=time.time()
        )
    out = {}
    async with await psycopg.AsyncConnection.connect(
        url, autocommit=True, options="-c timezone=UTC"
    ) as conn:
        for name, build in builders.items():
            started = time.perf_counter()
            orjson.dumps(await build(conn))  # as the API's report cache does
            first = (time.perf_counter() - started) * 1000
            lat = []
            n = max(10, requests // 10)
            for _ in range(n):
                started = time.perf_counter()
                orjson.dumps(await build(conn))
                lat.append(time.perf_counter() - started)
            out[name] = (first, *_percentiles(lat))
    return out


def start_api(url: str) -> tuple[subprocess.Popen[bytes], int, int]:
    """``qesmon api`` on ``url``'s database, on free ports: (process, API port, exporter port)."""
    api_port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "API_PORT": str(api_port),
        "PROMETHEUS_METRICS_PORT": str(metrics_port),
        "RESOURCE_MONITOR": "false",
        "QESMON_KEY_PREFIX": f"bench{uuid.uuid4().hex[:6]}",
        "LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen([sys.executable, "-m", "cli", "api"], env=env, cwd=ROOT)
    return proc, api_port, metrics_port


def run_api(url: str, args: argparse.Namespace) -> None:
    """Start ``qesmon api`` on ``url``'s database and measure every target."""
    with psycopg.connect(url, autocommit=True) as conn:
        key = create_key_sync(conn, role="admin", name="bench")
    proc, api_port, metrics_port = start_api(url)
    served: dict[str, float] = {}  # p99 ms of the repeated requests per endpoint
    try:
        base = f"http://127.0.0.1:{api_port}"
        deadline = time.monotonic() + 60
        wait_for_port(api_port, deadline)
        print(f"API pid {proc.pid}", flush=True)
        headers = {"Authorization": f"Bearer {key}"}
        targets = [
            ("dashboard 7d", f"{base}/api/v1/metrics/dashboard?days=7"),
            (
                "dashboard 7d, one tenant",
                f"{base}/api/v1/metrics/dashboard?days=7&tenant_id=tenant-3",
            ),
            ("business-intelligence 30d", f"{base}/api/v1/metrics/business-intelligence?days=30"),
            ("performance 24h", f"{base}/api/v1/metrics/performance?hours=24"),
            ("exporter scrape", f"http://127.0.0.1:{metrics_port}/metrics"),
        ]
        print(machine("Redis, TimescaleDB and the API process on the same box"))
        print(f"{'endpoint':28} {'cold ms':>9} {'p50 ms':>8} {'p99 ms':>8} {'req/s (8 conc)':>15}")
        for name, target in targets:
            n = (
                args.requests
                if "performance" not in name and "business" not in name
                else max(20, args.requests // 5)
            )
            r = asyncio.run(measure(target, headers, n))
            print(
                f"{name:28} {r['cold_ms']:9.1f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} "
                f"{r['rps']:15.1f}",
                flush=True,
            )
            served[name] = r["p99_ms"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print("the computation behind the report cache (same builders, in this process):")
    print(f"{'report':28} {'first ms':>9} {'p50 ms':>8} {'p99 ms':>8}")
    computed = asyncio.run(computation(url, args.requests, args.bi_computation))
    for name, (first, p50, p99) in computed.items():
        print(f"{name:28} {first:9.1f} {p50:8.1f} {p99:8.1f}", flush=True)
    target = "dashboard 7d"
    print(
        f"target dashboard p99 < 100 ms: served (report cache) {served[target]:.1f} ms "
        f"{'met' if served[target] < 100 else 'MISSED'}; computation {computed[target][2]:.1f} ms "
        f"{'met' if computed[target][2] < 100 else 'MISSED'}"
    )


DAY = 86400


def load_days(database_url: str, now: float, first: int, last: int) -> int:
    """Day rows of the 1,000 series for the days ``first``..``last`` days ago (a day's
    aggregate is 24 hours' worth of the hour templates)."""
    rnd = random.Random(2)
    pool = templates(rnd, 24.0)
    mix = series_mix()
    today = math.floor(now / DAY) * DAY
    return write_rollups(
        database_url,
        (
            WindowResult(series, DAY, float(today - ago * DAY), rnd.choice(pool[kind]))
            for ago in range(first, last + 1)
            for series, kind in mix
        ),
    )


def run_cold(url: str) -> None:
    """The API's first start (no stored exporter totals yet), then a restart."""
    with psycopg.connect(url, autocommit=True) as conn:
        key = create_key_sync(conn, role="admin", name="bench")
        days = conn.execute(
            "SELECT count(*), count(DISTINCT bucket) FROM metric_rollups_1d"
        ).fetchone()
        hours = conn.execute("SELECT count(*) FROM metric_rollups_1h").fetchone()
    print(f"day tier: {days[0]:,} rows over {days[1]} days; hour tier: {hours[0]:,} rows")
    print(machine("Redis, TimescaleDB and the API process on the same box"))
    for which in ("first start (no stored exporter totals)", "restart"):
        print(f"-- {which}")
        start_cold(url, key)


def start_cold(url: str, key: str) -> None:
    """Start ``qesmon api`` and time each first request from the start, with peak RSS."""
    import psutil

    started = time.perf_counter()
    proc, api_port, metrics_port = start_api(url)
    peak = 0
    stop = False

    def sample() -> None:
        nonlocal peak
        watched = psutil.Process(proc.pid)
        while not stop:
            with contextlib.suppress(psutil.Error):
                peak = max(peak, watched.memory_info().rss)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        wait_for_port(api_port, time.monotonic() + 60)
        ready = time.perf_counter() - started
        print(f"API listening {ready * 1000:.0f} ms after its start")
        base = f"http://127.0.0.1:{api_port}/api/v1/metrics"
        headers = {"Authorization": f"Bearer {key}"}
        targets = [
            ("exporter first scrape", f"http://127.0.0.1:{metrics_port}/metrics", 2.0),
            ("dashboard 7d", f"{base}/dashboard?days=7", 1.0),
            ("business-intelligence 30d", f"{base}/business-intelligence?days=30", 2.0),
            ("business-intelligence 365d", f"{base}/business-intelligence?days=365", 5.0),
        ]
        print(f"{'first request':28} {'ms':>8} {'since start ms':>15} {'target':>8}")

        async def first(name: str, target: str) -> tuple[float, float]:
            async with aiohttp.ClientSession(headers=headers) as session:
                t = time.perf_counter()
                while True:  # the exporter: until its snapshot has the totals
                    async with session.get(target) as resp:
                        body = await resp.read()
                        assert resp.status == 200, (target, resp.status, body[:300])
                    if "exporter" not in name or b"qes_revenue_total{" in body:
                        break
                    await asyncio.sleep(0.02)
                return time.perf_counter() - t, time.perf_counter() - started

        for name, target, goal in targets:
            took, since = asyncio.run(first(name, target))
            verdict = "met" if (since if "exporter" in name else took) <= goal else "MISSED"
            now_rss = psutil.Process(proc.pid).memory_info().rss / 2**20
            print(
                f"{name:28} {took * 1000:8.0f} {since * 1000:15.0f} {goal:7.0f}s {verdict}"
                f"  (RSS now {now_rss:.0f} MiB, peak so far {peak / 2**20:.0f})"
            )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        stop = True
        sampler.join()
    print(
        f"API peak RSS {peak / 2**20:.0f} MiB (target <= 300 MiB: "
        f"{'met' if peak <= 300 * 2**20 else 'MISSED'})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument(
        "--bi-computation",
        action="store_true",
        help="also time the business-intelligence report's computation (a minute or two more)",
    )
    parser.add_argument(
        "--cold",
        action="store_true",
        help="issue 16's cold start: day tier of 365 days, first requests after an API start",
    )
    parser.add_argument(
        "--database",
        default=None,
        help="measure an already loaded database of this name on DATABASE_URL's server (kept); "
        "by default a throw-away database is created, loaded and dropped",
    )
    args = parser.parse_args()
    server_url = os.environ["DATABASE_URL"]
    if args.database is not None:
        run_api(urlunsplit(urlsplit(server_url)._replace(path="/" + args.database)), args)
        return 0
    with scratch_database(server_url) as url:
        t = time.perf_counter()
        now = time.time()
        rows = load(url, now)
        print(f"loaded {rows:,} rollup rows for 1,000 series in {time.perf_counter() - t:.1f} s")
        if args.cold:
            t = time.perf_counter()
            rows = load_days(url, now, 31, 365)
            print(f"loaded {rows:,} day rows in {time.perf_counter() - t:.1f} s")
            t = time.perf_counter()
            report = run_pass(Settings.from_env({**os.environ, "DATABASE_URL": url}))
            print(f"qesmon maintain pass in {time.perf_counter() - t:.1f} s:")
            for line in report.lines:
                print(f"  {line}")
            run_cold(url)
        else:
            run_api(url, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
