"""Cardinality benchmark: the pipeline's peak RSS under a label explosion, with and without limits.

    . var/env.sh && .venv/bin/python bench/cardinality.py [--events 100000] [--limit 1000]

Pushes ``--events`` events of one tenant, each with a new label value (so each is a new series),
then runs the real pipeline (``python -m cli pipeline``) over them twice, each time for
``--seconds`` (default 40), noting the process's peak RSS: once with MAX_SERIES_PER_TENANT and
MAX_SERIES far above the event count (no limit reached), once with MAX_SERIES_PER_TENANT =
``--limit``. Prints both peaks and how many events each run set aside as ``limit``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
import psutil
import redis
from _machine import machine
from _scratch import scratch_database

ROOT = Path(__file__).resolve().parent.parent


def push(client: redis.Redis, stream: str, events: int) -> None:
    now = time.time()
    pipe = client.pipeline(transaction=False)
    batch: list[dict[str, object]] = []
    for i in range(events):
        batch.append(
            {"name": "req", "value": 1.0, "tenant": "noisy", "ts": now, "labels": {"id": f"{i}"}}
        )
        if len(batch) == 500:
            pipe.xadd(stream, {b"events": orjson.dumps(batch)})
            batch = []
    if batch:
        pipe.xadd(stream, {b"events": orjson.dumps(batch)})
    pipe.execute()


def run(
    redis_url: str, database_url: str, events: int, limit: int, seconds: float
) -> tuple[int, float]:
    """One pipeline run over a fresh stream; (peak RSS in bytes, events set aside as 'limit')."""
    prefix = f"bc{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "rules"
        rules.mkdir()
        push(client, f"{prefix}:metrics", events)
        env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
            "QESMON_KEY_PREFIX": prefix,
            "RULES_DIR": str(rules),
            "MAX_SERIES_PER_TENANT": str(limit),
            "MAX_SERIES": str(max(limit, 100_000)),
            "LOG_LEVEL": "WARNING",
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "pipeline", "--recovery-dir", f"{tmp}/recovery"],
            env=env,
            cwd=ROOT,
        )
        peak = 0
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                peak = max(peak, psutil.Process(proc.pid).memory_info().rss)
                time.sleep(0.2)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        limited = float(client.hget(f"{prefix}:health:pipeline", "limited_events_total") or 0)
        for key in client.scan_iter(match=f"{prefix}:*"):
            client.delete(key)
    client.close()
    return peak, limited


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--limit", type=int, default=1_000)
    parser.add_argument("--seconds", type=float, default=40.0)
    args = parser.parse_args()
    print(machine())
    redis_url, server_url = os.environ["REDIS_URL"], os.environ["DATABASE_URL"]
    for label, limit in (("no limit reached", args.events * 10), ("limit", args.limit)):
        with scratch_database(server_url) as database_url:
            peak, limited = run(redis_url, database_url, args.events, limit, args.seconds)
        print(
            f"{args.events:,} new series, {label} (MAX_SERIES_PER_TENANT={limit:,}): "
            f"peak RSS {peak / 2**20:.0f} MiB, {limited:,.0f} events set aside as 'limit'"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
