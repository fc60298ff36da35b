"""Firing-to-delivered latency of the notifier to a local webhook receiver.

Starts ``qesmon notifier`` as a subprocess against a scratch database (created, migrated and
dropped here) and a scratch Redis key prefix, pushes firing transitions to ``qes:alerts`` at a
steady rate, and measures the time from XADD to the webhook request arriving on a loopback
aiohttp receiver. Target: p99 < 250 ms at 100 alerts/s.

    . var/env.sh && .venv/bin/python bench/notifier.py --rate 100 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
import redis.asyncio
from _machine import machine
from _scratch import scratch_database
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qesmon.alerts import AlertState, AlertTransition, Severity  # noqa: E402


async def run(rate: float, seconds: float, group_wait: str) -> None:
    server_url = os.environ["DATABASE_URL"]
    redis_url = os.environ["REDIS_URL"]
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    with scratch_database(server_url) as db_url:
        arrivals: dict[str, float] = {}

        async def hook(request: web.Request) -> web.Response:
            now = time.time()
            body = orjson.loads(await request.read())
            for alert in body["alerts"]:
                arrivals.setdefault(alert["fingerprint"], now)
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/hook", hook)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        rules = Path(tempfile.mkdtemp(prefix="qesmon-bench-rules-"))
        (rules / "notifications.yaml").write_text(
            "routing:\n  defaults: {channels: [webhook], group_by: [fingerprint],"
            f" group_wait: {group_wait}, repeat_interval: 0s}}\n"
        )
        env = {
            **os.environ,
            "DATABASE_URL": db_url,
            "QESMON_KEY_PREFIX": prefix,
            "RULES_DIR": str(rules),
            "WEBHOOK_URL": f"http://127.0.0.1:{port}/hook",
            "LOG_LEVEL": "WARNING",
        }
        proc = subprocess.Popen([sys.executable, "-m", "cli", "notifier"], cwd=ROOT, env=env)
        r = redis.asyncio.Redis.from_url(redis_url)
        stream = f"{prefix}:alerts"
        sent: dict[str, float] = {}
        try:
            await asyncio.sleep(2.0)  # let the notifier start and create its group
            n = int(rate * seconds)
            start = time.perf_counter()
            for i in range(n):
                due = start + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                fp = f"bench-{i:06d}"
                t = AlertTransition(
                    fp,
                    "bench_rule",
                    "Bench rule",
                    Severity.CRITICAL,
                    AlertState.PENDING,
                    AlertState.FIRING,
                    time.time(),
                    1.0,
                    tenant="t",
                    labels={"i": str(i)},
                )
                sent[fp] = time.time()
                await r.xadd(stream, t.to_fields())  # type: ignore[arg-type]
            deadline = time.time() + 30
            while len(arrivals) < n and time.time() < deadline:
                await asyncio.sleep(0.1)
        finally:
            proc.terminate()
            proc.wait(20)
            keys = [k async for k in r.scan_iter(match=f"{prefix}:*")]
            if keys:
                await r.delete(*keys)
            await r.aclose()
            await runner.cleanup()
    lat = sorted((arrivals[fp] - sent[fp]) * 1000 for fp in sent if fp in arrivals)
    lost = len(sent) - len(lat)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p / 100 * len(lat)))]

    print(machine())
    print(
        f"rate {rate:g} alerts/s for {seconds:g} s, group_wait {group_wait}: "
        f"{len(lat)} delivered, {lost} missing"
    )
    if lat:
        print(
            f"firing-to-delivered latency ms: p50 {pct(50):.1f}  p90 {pct(90):.1f}  "
            f"p99 {pct(99):.1f}  max {lat[-1]:.1f}  mean {statistics.fmean(lat):.1f}"
        )
        print("target p99 < 250 ms:", "met" if pct(99) < 250 else "NOT met")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--group-wait", default="0s")
    args = parser.parse_args()
    asyncio.run(run(args.rate, args.seconds, args.group_wait))


if __name__ == "__main__":
    main()
