"""A generated workload and its ground truth, computed independently of the pipeline.

The workload is written with explicit stream IDs (so entry times are known) an hour or two in
the past: several tenants and series, out-of-order events inside the allowed lateness, events
far behind it (late), and bad entries. A final "clock" event stamped now drives the watermark
past every window, so every window of the workload becomes final.

The ground truth applies the documented semantics directly: an event is late when its base
window ended ``lateness`` or more before ``max(previous event times, capped at their entry
times) - wait``; every other event counts in its 10 s, 1 min and 1 h window.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import orjson
import psycopg
import redis

WIDTHS = (10, 60, 3600)
CLOCK_METRIC = "test_clock"


@dataclass
class Workload:
    entries: list[tuple[str, dict[str, str]]]  # (id, fields) in stream order
    bad: int  # entries that must be dead-lettered as invalid
    start_ms: int


@dataclass
class Truth:
    values: list[float] = field(default_factory=list)
    errors: int = 0
    users: set[str] = field(default_factory=set)


SeriesKey = tuple[str, str, tuple[tuple[str, str], ...]]  # name, tenant, labels


def nearest_rank(values: list[float], q: float) -> float:
    """The nearest-rank q-quantile, straight from its definition and independent of the
    package's own: the smallest value with at least ``q`` of all values at or below it."""
    ordered = sorted(values)
    for rank, value in enumerate(ordered, start=1):
        if rank >= q * len(ordered):
            return value
    return ordered[-1]


def generate(
    n: int, *, seed: int = 1, span_s: float = 600.0, lateness: float = 30.0, batch: int = 0
) -> Workload:
    """``n`` events spread over ``span_s`` seconds ending an hour ago.

    ``batch`` > 0 packs that many events per entry (the ``events`` field).
    """
    rng = random.Random(seed)
    start = (int(time.time()) - 3600 - int(span_s)) // 3600 * 3600 + 17  # not window aligned
    entries: list[tuple[str, dict[str, str]]] = []
    bad = 0
    pending: list[dict[str, object]] = []
    seq_ms = start * 1000
    for i in range(n):
        t = start + span_s * i / n
        ms = int(t * 1000)
        seq_ms = max(seq_ms + 1, ms)
        r = rng.random()
        if r < 0.05:
            ts = t - rng.uniform(0, lateness * 0.6)  # out of order, inside lateness
        elif r < 0.07:
            ts = t - lateness - 20 - rng.uniform(0, 60)  # behind the lateness: late
        else:
            ts = t
        tenant = f"tenant-{rng.randint(1, 3)}"
        endpoint = rng.choice(["/sign", "/verify", "/upload"])
        event = {
            "name": "http_request",
            "type": "performance",
            "value": rng.randint(1, 4000) / 8,
            "ts": round(ts, 3),
            "tenant": tenant,
            "user": f"u{rng.randint(1, 40)}",
            "labels": {"endpoint": endpoint, "service": "api"},
            "success": rng.random() > 0.1,
        }
        if rng.random() < 0.2:
            event = {
                "name": "subscription_payment",
                "type": "revenue",
                "value": rng.choice([9.5, 49.0, 99.25]),
                "ts": round(ts, 3),
                "tenant": tenant,
                "labels": {"plan": rng.choice(["basic", "pro"])},
            }
        if batch:
            pending.append(event)
            if len(pending) == batch:
                entries.append((f"{seq_ms}-0", {"events": orjson.dumps(pending).decode()}))
                pending = []
        else:
            entries.append((f"{seq_ms}-0", _flat(event)))
        if rng.random() < 0.01 and not batch:
            seq_ms += 1
            entries.append((f"{seq_ms}-0", {"name": "bad name", "value": "1"}))
            bad += 1
    if pending:
        entries.append((f"{seq_ms + 1}-0", {"events": orjson.dumps(pending).decode()}))
    return Workload(entries, bad, start * 1000)


def _flat(event: dict[str, object]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in event.items():
        if k == "labels":
            out[k] = orjson.dumps(v).decode()
        elif k == "success":
            out[k] = "true" if v else "false"
        else:
            out[k] = str(v)
    return out


def push(client: redis.Redis, stream: str, entries: list[tuple[str, dict[str, str]]]) -> None:
    pipe = client.pipeline(transaction=False)
    for i, (entry_id, fields) in enumerate(entries):
        pipe.xadd(stream, fields, id=entry_id)  # type: ignore[arg-type]
        if i % 2000 == 1999:
            pipe.execute()
    pipe.execute()


def push_clock(client: redis.Redis, stream: str) -> None:
    """An event stamped now: its watermark makes every window of the workload final."""
    client.xadd(stream, {"name": CLOCK_METRIC, "value": "1"})


def ground_truth(
    workload: Workload, *, wait: float, lateness: float, base: int = 10
) -> tuple[dict[tuple[SeriesKey, int, int], Truth], int]:
    """Expected windows and the number of late events."""
    windows: dict[tuple[SeriesKey, int, int], Truth] = {}
    newest = -math.inf
    late = 0
    for entry_id, fields in workload.entries:
        entry_ts = int(entry_id.split("-")[0]) / 1000
        events = orjson.loads(fields["events"]) if "events" in fields else [fields]
        for e in events:
            if e.get("name") == "bad name":
                continue
            ts = float(e["ts"])
            labels = e["labels"] if isinstance(e["labels"], dict) else orjson.loads(e["labels"])
            success = e.get("success", True) not in (False, "false")
            if (ts // base) * base + base + lateness <= newest - wait:
                late += 1
                continue
            key: SeriesKey = (str(e["name"]), str(e["tenant"]), tuple(sorted(labels.items())))
            for width in WIDTHS:
                truth = windows.setdefault((key, width, int(ts // width) * width), Truth())
                truth.values.append(float(e["value"]))
                truth.errors += 0 if success else 1
                if e.get("user"):
                    truth.users.add(str(e["user"]))
            newest = max(newest, min(ts, entry_ts))
    return windows, late


def fetch_rollups(database_url: str) -> dict[tuple[SeriesKey, int, int], dict[str, float]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT name, coalesce(tenant_id, ''), labels, width_s,"
            " extract(epoch from bucket)::bigint, count, errors, sum, min, max, p50, p95, p99,"
            " distinct_users FROM metrics_rollup WHERE name <> %s",
            (CLOCK_METRIC,),
        ).fetchall()
    out = {}
    for name, tenant, labels, width, bucket, *numbers in rows:
        key = ((name, tenant, tuple(sorted(labels.items()))), width, bucket)
        out[key] = dict(
            zip(
                ("count", "errors", "sum", "min", "max", "p50", "p95", "p99", "distinct_users"),
                numbers,
                strict=True,
            )
        )
    return out


def compare(
    expected: dict[tuple[SeriesKey, int, int], Truth],
    got: dict[tuple[SeriesKey, int, int], dict[str, float]],
) -> list[str]:
    """Differences between the ground truth and the stored rollups (empty = equal)."""
    problems: list[str] = []
    missing = set(expected) - set(got)
    extra = set(got) - set(expected)
    problems += [f"missing window {k}" for k in sorted(missing)[:5]]
    problems += [f"unexpected window {k}" for k in sorted(extra)[:5]]
    for key in sorted(set(expected) & set(got)):
        truth, row = expected[key], got[key]
        values = sorted(truth.values)
        want = {
            "count": len(values),
            "errors": truth.errors,
            "sum": math.fsum(values),
            "min": values[0],
            "max": values[-1],
            "distinct_users": len(truth.users),
        }
        for name, value in want.items():
            if not math.isclose(row[name], value, rel_tol=1e-9, abs_tol=1e-9):
                problems.append(f"{key}: {name} = {row[name]}, expected {value}")
        for q, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
            if len(values) <= 256:
                if row[name] != nearest_rank(values, q):
                    problems.append(
                        f"{key}: {name} = {row[name]}, expected {nearest_rank(values, q)}"
                    )
            else:  # a KLL sketch: the value's rank must be within 3 % of q
                lo = nearest_rank(values, max(0.0, q - 0.03))
                hi = nearest_rank(values, min(1.0, q + 0.03))
                if not lo <= row[name] <= hi:
                    problems.append(f"{key}: {name} = {row[name]} outside [{lo}, {hi}]")
    return problems
