"""The pipeline benchmarks' workload (bench/pipeline.py, bench/windows.py): 500 series
(25 tenants x 20 endpoints of ``http_request``), 5,000 users, lognormal durations, 2 % errors,
stamped at ``event_rate`` events per second of event time."""

from __future__ import annotations

import random
from collections.abc import Iterator

import orjson


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
