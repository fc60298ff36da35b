"""``GET /api/v1/metrics/performance``: latency percentiles, errors, throughput, resources.

Percentiles are read from merged sketches per time step and per endpoint, never averaged.
Points are per hour, or per minute when ``hours`` <= 3. Slow requests are the requests
slower than ``SLOW_REQUEST_THRESHOLD`` seconds, counted from the merged sketch's CDF (exact
below 256 values per window, within about 1.3 % of the count otherwise).
"""

from __future__ import annotations

from typing import Any

from api import store
from api.stats import count_at_most
from api.store import HOUR, MINUTE, Conn, HourCache, SeriesFilter
from api.timefmt import iso, rounded
from qesmon import vocabulary as v
from qesmon.sketch import Agg

SLOWEST_SHOWN = 10
RESOURCES = (v.CPU_USAGE, v.MEMORY_USAGE, v.DISK_USAGE)
NETWORK = (v.NETWORK_BYTES_SENT, v.NETWORK_BYTES_RECV)


def _quantiles(agg: Agg) -> dict[str, float | None]:
    p50, p95, p99 = agg.quantiles()
    return {"p50": rounded(p50), "p95": rounded(p95), "p99": rounded(p99)}


async def build(
    conn: Conn,
    cache: HourCache,
    *,
    tenant: str | None,
    hours: int,
    now: float,
    slow_threshold: float,
) -> dict[str, Any]:
    step = MINUTE if hours <= 3 else HOUR
    start = store.floor_to(now - hours * HOUR, MINUTE)
    spans = store.plan_spans(start, now, await store.latest_buckets(conn), max_width=step)
    http = SeriesFilter(names=(v.HTTP_REQUEST,), tenant=tenant)
    per_step = await store.sketches(conn, cache, http, spans, step=step)
    timeline = []
    for (at, _), agg in sorted(per_step.items(), key=lambda kv: kv[0][0] or 0.0):
        assert at is not None
        width = min(step, now - at)
        timeline.append(
            {
                "time": iso(at),
                **_quantiles(agg),
                "count": agg.count,
                "error_rate": rounded(100.0 * agg.errors / agg.count, 4) if agg.count else 0.0,
                "throughput": rounded(agg.count / width, 4) if width > 0 else 0.0,
            }
        )
    per_endpoint = await store.sketches(
        conn, cache, http, spans, by=("service", "endpoint", "method")
    )
    total = Agg()
    endpoints: list[dict[str, Any]] = []
    slow_total = 0.0
    for (_, (service, endpoint, method)), agg in per_endpoint.items():
        total.merge(agg)
        slow = agg.count - count_at_most(agg, slow_threshold)
        slow_total += slow
        endpoints.append(
            {
                "service": service,
                "endpoint": endpoint,
                "method": method,
                "count": agg.count,
                "avg": rounded(agg.avg),
                **_quantiles(agg),
                "max": rounded(agg.max),
                "error_rate": rounded(100.0 * agg.errors / agg.count, 4) if agg.count else 0.0,
                "slow_requests": round(slow),
            }
        )
    endpoints.sort(key=lambda e: -float(e["p95"] or 0.0))
    seconds = now - start
    return {
        "tenant_id": tenant,
        "period": {"start": iso(start), "end": iso(now), "hours": hours, "step_seconds": step},
        "summary": {
            "count": total.count,
            "errors": total.errors,
            "error_rate": rounded(100.0 * total.errors / total.count, 4) if total.count else 0.0,
            "throughput": rounded(total.count / seconds, 4),
            "avg_response_time": rounded(total.avg),
            **_quantiles(total),
        },
        "timeline": timeline,
        "slowest_endpoints": endpoints[:SLOWEST_SHOWN],
        "slow_requests": {
            "threshold_seconds": slow_threshold,
            "count": round(slow_total),
            "share_percent": rounded(100.0 * slow_total / total.count, 4) if total.count else 0.0,
            "by_endpoint": [
                {
                    "service": e["service"],
                    "endpoint": e["endpoint"],
                    "method": e["method"],
                    "count": e["slow_requests"],
                }
                for e in sorted(endpoints, key=lambda e: -int(e["slow_requests"]))
                if e["slow_requests"] > 0
            ][:SLOWEST_SHOWN],
        },
        "resources": await _resources(conn, cache, spans, now, seconds) if tenant is None else None,
    }


async def _resources(
    conn: Conn, cache: HourCache, spans: list[store.Span], now: float, seconds: float
) -> dict[str, Any]:
    """CPU/memory/disk per host (and mount): mean, max and latest; network bytes per second."""
    gauges = await store.totals(
        conn, SeriesFilter(names=RESOURCES), spans, by=("name", "host", "mount"), cache=cache
    )
    latest = {
        key: value
        for key, _, value in await store.latest_values(
            conn, SeriesFilter(names=RESOURCES), now - seconds, by=("name", "host", "mount")
        )
    }
    out: dict[str, list[dict[str, Any]]] = {"cpu": [], "memory": [], "disk": [], "network": []}
    section = {v.CPU_USAGE: "cpu", v.MEMORY_USAGE: "memory", v.DISK_USAGE: "disk"}
    for row in gauges:
        name, host, mount = row.key
        item: dict[str, Any] = {
            "host": host,
            "avg_percent": rounded(row.avg, 3),
            "max_percent": rounded(row.max, 3),
            "latest_percent": rounded(latest.get(row.key), 3),
        }
        if name == v.DISK_USAGE:
            item["mount"] = mount
        out[section[name]].append(item)
    network: dict[str, dict[str, Any]] = {}
    for row in await store.totals(
        conn, SeriesFilter(names=NETWORK), spans, by=("name", "host"), cache=cache
    ):
        name, host = row.key
        entry = network.setdefault(
            host, {"host": host, "sent_bytes_per_second": 0.0, "recv_bytes_per_second": 0.0}
        )
        field = "sent_bytes_per_second" if name == v.NETWORK_BYTES_SENT else "recv_bytes_per_second"
        entry[field] = rounded(row.sum / seconds, 3)
    out["network"] = list(network.values())
    return out
