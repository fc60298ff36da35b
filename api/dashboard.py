"""``GET /api/v1/metrics/dashboard``: the seed's dashboard document, from the rollups.

Definitions (also in the OpenAPI document):

- ``revenue``: sum of ``subscription_payment`` amounts, split by the ``kind`` label
  (``new``/``recurring``); amounts are added as sent (one reporting currency is assumed here;
  the business-intelligence endpoint splits by currency).
- ``usage``: sums of the values of ``signatures_created`` and ``documents_uploaded``.
- ``active_users``: distinct users over every event that carried a ``user`` (merged sketches);
  ``new_users``: number of ``user_signup`` events.
- ``avg_response_time``: mean ``http_request`` duration in seconds; ``error_rate``: failed
  requests in percent; ``throughput``: requests per second over the period.
- ``uptime``: percent of the period not inside a rollup window (1 h for closed hours, 1 min or
  10 s for the newest part) whose ``http_request`` error rate was 5 % or more; a window
  without traffic counts as up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from api import alerts as alert_store
from api import store
from api.store import Conn, HourCache, SeriesFilter
from api.timefmt import iso, rounded
from qesmon import vocabulary as v

DAY = 86400
DOWN_ERROR_RATE = 0.05
HIGH_ERROR_RATE_PCT = 5.0
ERROR_TREND_FACTOR = 1.5
QUOTA_NEAR_PCT = 80.0
RESOURCE_HIGH_PCT = 85.0
UPTIME_TARGET_PCT = 99.9
SLOWEST_SHOWN = 3


@dataclass(frozen=True, slots=True)
class Period:
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


def period_days(now: float, days: int) -> Period:
    """The last ``days`` days up to ``now``, the start aligned to the minute."""
    return Period(store.floor_to(now - days * DAY, 60), now)


def uptime_percent(windows: list[tuple[int, float, int, int]], period: Period) -> float:
    down = sum(
        width
        for width, _, count, errors in windows
        if count > 0 and errors / count >= DOWN_ERROR_RATE
    )
    return max(0.0, 100.0 * (1.0 - down / period.seconds)) if period.seconds > 0 else 100.0


async def build(
    conn: Conn,
    cache: HourCache,
    *,
    tenant: str | None,
    days: int,
    now: float,
    slow_threshold: float,
) -> dict[str, Any]:
    period = period_days(now, days)
    latest = await store.latest_buckets(conn)
    spans = store.plan_spans(period.start, period.end, latest)
    # uptime is judged per hour at the coarsest (a day row would judge a whole day)
    hourly = store.plan_spans(period.start, period.end, latest, max_width=store.HOUR)

    revenue = {"total": 0.0, "new": 0.0, "recurring": 0.0}
    for row in await store.totals(
        conn,
        SeriesFilter(names=(v.SUBSCRIPTION_PAYMENT,), tenant=tenant),
        spans,
        by=("kind",),
        cache=cache,
    ):
        revenue["total"] += row.sum
        if row.key[0] in ("new", "recurring"):
            revenue[row.key[0]] += row.sum

    usage = {"signatures": 0.0, "documents": 0.0}
    signups = 0
    for row in await store.totals(
        conn,
        SeriesFilter(
            names=(v.SIGNATURES_CREATED, v.DOCUMENTS_UPLOADED, v.USER_SIGNUP), tenant=tenant
        ),
        spans,
        by=("name",),
        cache=cache,
    ):
        if row.key[0] == v.SIGNATURES_CREATED:
            usage["signatures"] = row.sum
        elif row.key[0] == v.DOCUMENTS_UPLOADED:
            usage["documents"] = row.sum
        else:
            signups = row.count

    active = await store.distinct_users(
        conn, cache, SeriesFilter(tenant=tenant, with_users=True), spans
    )

    http = SeriesFilter(names=(v.HTTP_REQUEST,), tenant=tenant)
    by_endpoint = await store.totals(conn, http, spans, by=("service", "endpoint"), cache=cache)
    count = sum(r.count for r in by_endpoint)
    errors = sum(r.errors for r in by_endpoint)
    duration = sum(r.sum for r in by_endpoint)
    windows = await store.window_totals(conn, http, hourly, cache=cache)
    performance = {
        "avg_response_time": rounded(duration / count) if count else 0.0,
        "error_rate": rounded(100.0 * errors / count, 4) if count else 0.0,
        "throughput": rounded(count / period.seconds, 6),
        "uptime": rounded(uptime_percent(windows, period), 4),
    }

    active_count, open_alerts = await alert_store.list_alerts(
        conn, tenant=tenant, active_only=True, limit=20
    )
    facts = Facts(
        period=period,
        endpoints=by_endpoint,
        windows=windows,
        error_rate=performance["error_rate"] or 0.0,
        uptime=performance["uptime"] or 100.0,
        slow_threshold=slow_threshold,
        quotas=await store.latest_values(
            conn,
            SeriesFilter(names=(v.QUOTA_UTILIZATION,), tenant=tenant),
            now - DAY,
            by=("tenant", "resource"),
        ),
        resources=await store.latest_values(
            conn,
            SeriesFilter(names=(v.CPU_USAGE, v.MEMORY_USAGE, v.DISK_USAGE)),
            now - 3600,
            by=("name", "host", "mount"),
        )
        if tenant is None
        else [],
    )
    return {
        "tenant_id": tenant,
        "period": {"start": iso(period.start), "end": iso(period.end), "days": days},
        "business_metrics": {
            "revenue": {k: rounded(x, 2) for k, x in revenue.items()},
            "usage": usage,
            "activity": {"active_users": active, "new_users": signups},
        },
        "performance_metrics": performance,
        "alerts": {"active_count": active_count, "alerts": open_alerts},
        "recommendations": recommendations(facts),
    }


@dataclass(frozen=True, slots=True)
class Facts:
    """The figures recommendations are derived from."""

    period: Period
    endpoints: list[store.Totals]
    windows: list[tuple[int, float, int, int]]
    error_rate: float
    uptime: float
    slow_threshold: float
    quotas: list[tuple[tuple[str, ...], float, float]]
    resources: list[tuple[tuple[str, ...], float, float]]


def _rec(
    kind: str,
    severity: str,
    message: str,
    metric: str,
    value: float,
    threshold: float,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "type": kind,
        "severity": severity,
        "message": message,
        "metric": metric,
        "value": round(value, 4),
        "threshold": threshold,
        **extra,
    }


def recommendations(f: Facts) -> list[dict[str, Any]]:
    """Advice derived from the numbers; each item states the figure that triggered it."""
    out: list[dict[str, Any]] = []
    slow = sorted(
        (r for r in f.endpoints if r.avg is not None and r.avg > f.slow_threshold),
        key=lambda r: -(r.avg or 0),
    )
    for r in slow[:SLOWEST_SHOWN]:
        service, endpoint = r.key
        out.append(
            _rec(
                "slow_endpoint",
                "warning",
                f"{endpoint} ({service or 'any service'}) averages {r.avg:.3f} s per request over "
                f"{r.count} requests, above the {f.slow_threshold:g} s slow-request threshold: "
                "profile it or add caching",
                "avg_response_time",
                r.avg or 0.0,
                f.slow_threshold,
                endpoint=endpoint,
                service=service,
            )
        )
    if f.error_rate > HIGH_ERROR_RATE_PCT:
        out.append(
            _rec(
                "high_error_rate",
                "critical",
                f"{f.error_rate:.2f} % of requests failed over the period (threshold "
                f"{HIGH_ERROR_RATE_PCT:g} %): look at the failing endpoints",
                "error_rate",
                f.error_rate,
                HIGH_ERROR_RATE_PCT,
            )
        )
    last_day_start = f.period.end - DAY
    recent = [(c, e) for _, b, c, e in f.windows if b >= last_day_start]
    earlier = [(c, e) for _, b, c, e in f.windows if b < last_day_start]
    rc, re_ = sum(c for c, _ in recent), sum(e for _, e in recent)
    ec, ee = sum(c for c, _ in earlier), sum(e for _, e in earlier)
    if rc and ec:
        now_pct, before_pct = 100.0 * re_ / rc, 100.0 * ee / ec
        if now_pct > 1.0 and now_pct > ERROR_TREND_FACTOR * before_pct:
            out.append(
                _rec(
                    "rising_error_rate",
                    "warning",
                    f"error rate rose to {now_pct:.2f} % in the last 24 h from {before_pct:.2f} % "
                    "before: check recent deployments",
                    "error_rate_last_24h",
                    now_pct,
                    round(ERROR_TREND_FACTOR * before_pct, 4),
                    previous=round(before_pct, 4),
                )
            )
    if f.uptime < UPTIME_TARGET_PCT and any(c for _, _, c, _ in f.windows):
        out.append(
            _rec(
                "low_uptime",
                "warning",
                f"uptime was {f.uptime:.3f} % (target {UPTIME_TARGET_PCT:g} %): windows with 5 % "
                "or more failed requests count as down",
                "uptime",
                f.uptime,
                UPTIME_TARGET_PCT,
            )
        )
    for (tenant, resource), _, value in sorted(f.quotas, key=lambda q: -q[2]):
        if value >= QUOTA_NEAR_PCT:
            out.append(
                _rec(
                    "quota_near_limit",
                    "critical" if value >= 95 else "warning",
                    f"tenant {tenant or '-'} uses {value:.1f} % of its {resource or 'quota'} quota "
                    f"(threshold {QUOTA_NEAR_PCT:g} %): offer an upgrade",
                    "quota_utilization",
                    value,
                    QUOTA_NEAR_PCT,
                    tenant_id=tenant or None,
                    resource=resource,
                )
            )
    for (name, host, mount), _, value in f.resources:
        if value >= RESOURCE_HIGH_PCT:
            where = f"{host or '-'}" + (f" {mount}" if mount else "")
            out.append(
                _rec(
                    "resource_pressure",
                    "warning",
                    f"{name} on {where} is at {value:.1f} % (threshold {RESOURCE_HIGH_PCT:g} %): "
                    "add capacity",
                    name,
                    value,
                    RESOURCE_HIGH_PCT,
                    host=host,
                )
            )
    return out
