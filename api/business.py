"""``GET /api/v1/metrics/business-intelligence``: revenue, user activity, feature adoption.

- Revenue (``subscription_payment``) by plan and currency, per UTC day, and a forecast of the
  next period of the same length per currency: an ordinary-least-squares linear trend over
  the complete days of the period, with its one-step-ahead backtest error (MAE and MAPE, each
  past day predicted from the days before it only). Currencies are never added together.
- Users: DAU/WAU/MAU = distinct users over the last 1/7/30 days up to now (every event that
  carried a ``user``), distinct users per day, ``user_signup`` counts per day, and retention
  by signup cohort: of the users who signed up on day D, the share active on day D+1 and on
  day D+7 (``null`` until that day is complete). Intersections of user sets are exact below
  256 users per window and HLL estimates (inclusion–exclusion) above.
- Features (``type=feature_usage``, the event name is the feature): uses and distinct users
  per feature and tenant, adoption = feature users / active users of that tenant, percent.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from api import store
from api.dashboard import DAY, period_days
from api.stats import linear_forecast, overlap
from api.store import Conn, HourCache, SeriesFilter
from api.timefmt import iso, rounded
from qesmon import vocabulary as v
from qesmon.contract import MetricType
from qesmon.sketch import Agg


def _date(ts: float) -> str:
    return (iso(ts) or "")[:10]


async def build(
    conn: Conn, cache: HourCache, *, tenant: str | None, days: int, now: float
) -> dict[str, Any]:
    period = period_days(now, days)
    latest = await store.latest_buckets(conn)
    spans = store.plan_spans(period.start, period.end, latest)
    first_day = store.floor_to(period.start, DAY)
    today = store.floor_to(now, DAY)
    day_starts = [first_day + i * DAY for i in range(int((today - first_day) // DAY) + 1)]
    # complete days only feed the forecast: the first one may start mid-day, today is running
    full_days = [d for d in day_starts if d >= period.start and d + DAY <= now]

    pay = SeriesFilter(names=(v.SUBSCRIPTION_PAYMENT,), tenant=tenant)
    rows = await store.totals(
        conn, pay, spans, by=("plan", "currency", "kind"), step=DAY, cache=cache
    )
    by_plan: dict[tuple[str, str], dict[str, Any]] = {}
    daily: dict[tuple[str, float], float] = defaultdict(float)
    for row in rows:
        plan, currency, kind = row.key
        item = by_plan.setdefault(
            (plan, currency),
            {
                "plan": plan,
                "currency": currency,
                "total": 0.0,
                "new": 0.0,
                "recurring": 0.0,
                "payments": 0,
            },
        )
        item["total"] += row.sum
        item["payments"] += row.count
        if kind in ("new", "recurring"):
            item[kind] += row.sum
        assert row.step is not None
        daily[(currency, row.step)] += row.sum
    currencies = sorted({c for c, _ in daily})
    forecasts = []
    for currency in currencies:
        series = [daily.get((currency, d), 0.0) for d in full_days]
        fc = linear_forecast(series, days, skip=1)
        forecasts.append(
            {
                "currency": currency,
                "next_period_total": rounded(fc.total, 2),
                "daily": [
                    {"date": _date(today + (i + 1) * DAY), "amount": rounded(p, 2)}
                    for i, p in enumerate(fc.predictions)
                ],
                "backtest": {
                    "mae": rounded(fc.mae, 4),
                    "mape_percent": rounded(fc.mape, 4),
                    "days": fc.backtest_days,
                },
            }
        )
    revenue = {
        "by_plan": sorted(
            (
                {
                    **p,
                    "total": rounded(p["total"], 2),
                    "new": rounded(p["new"], 2),
                    "recurring": rounded(p["recurring"], 2),
                }
                for p in by_plan.values()
            ),
            key=lambda p: (p["currency"], -p["total"]),
        ),
        "by_currency": [
            {"currency": c, "total": rounded(sum(x for (cc, _), x in daily.items() if cc == c), 2)}
            for c in currencies
        ],
        "daily": [
            {"date": _date(d), "currency": c, "amount": rounded(daily[(c, d)], 2)}
            for c in currencies
            for d in day_starts
            if (c, d) in daily
        ],
        "forecast": {
            "method": "ols_linear_trend",
            "description": "least-squares line through the daily totals of the complete days "
            "of the period, extended over the next period; backtest = "
            "one-step-ahead errors on those days",
            "horizon_days": days,
            "fitted_days": len(full_days),
            "by_currency": forecasts,
        },
    }
    return {
        "tenant_id": tenant,
        "period": {"start": iso(period.start), "end": iso(period.end), "days": days},
        "revenue": revenue,
        "users": await _users(conn, cache, tenant, spans, latest, now, day_starts),
        "features": await _features(conn, cache, tenant, spans),
    }


async def _distinct(
    conn: Conn,
    cache: HourCache,
    flt: SeriesFilter,
    start: float,
    end: float,
    latest: dict[int, float | None],
) -> int:
    spans = store.plan_spans(start, end, latest)
    merged = await store.sketches(conn, cache, flt, spans)
    return sum(agg.distinct_users() for agg in merged.values())


async def _users(
    conn: Conn,
    cache: HourCache,
    tenant: str | None,
    spans: list[store.Span],
    latest: dict[int, float | None],
    now: float,
    day_starts: list[float],
) -> dict[str, Any]:
    active_flt = SeriesFilter(tenant=tenant, with_users=True)
    per_day = {
        at: agg
        for (at, _), agg in (await store.sketches(conn, cache, active_flt, spans, step=DAY)).items()
    }
    signup_flt = SeriesFilter(names=(v.USER_SIGNUP,), tenant=tenant)
    cohorts_raw = {
        at: agg
        for (at, _), agg in (await store.sketches(conn, cache, signup_flt, spans, step=DAY)).items()
    }
    signup_counts = {
        r.step: r.count for r in await store.totals(conn, signup_flt, spans, step=DAY, cache=cache)
    }
    minute = store.floor_to(now, 60)
    windows = {}
    for label, n_days in (("dau", 1), ("wau", 7), ("mau", 30)):
        windows[label] = await _distinct(
            conn, cache, active_flt, minute - n_days * DAY, now, latest
        )
    cohorts = []
    for day in day_starts:
        cohort = cohorts_raw.get(day)
        if cohort is None:
            continue
        size = cohort.distinct_users()
        entry: dict[str, Any] = {"signup_date": _date(day), "size": size}
        for offset in (1, 7):
            later = day + offset * DAY
            active = per_day.get(later)
            if later + DAY > now or size == 0:
                entry[f"day_{offset}_percent"] = None
            else:
                kept = overlap(cohort, active) if active is not None else 0
                entry[f"day_{offset}_percent"] = rounded(100.0 * min(kept, size) / size, 2)
        cohorts.append(entry)
    return {
        **windows,
        "daily": [
            {
                "date": _date(d),
                "active_users": per_day[d].distinct_users() if d in per_day else 0,
                "new_users": signup_counts.get(d, 0),
            }
            for d in day_starts
        ],
        "new_users": sum(signup_counts.values()),
        "retention": cohorts,
    }


async def _features(
    conn: Conn, cache: HourCache, tenant: str | None, spans: list[store.Span]
) -> dict[str, Any]:
    flt = SeriesFilter(types=(MetricType.FEATURE_USAGE.value,), tenant=tenant)
    merged = await store.sketches(conn, cache, flt, spans, by=("name", "tenant"))
    active = {
        key[0]: agg.distinct_users()
        for (_, key), agg in (
            await store.sketches(
                conn, cache, SeriesFilter(tenant=tenant, with_users=True), spans, by=("tenant",)
            )
        ).items()
    }
    per_feature: dict[str, Agg] = {}
    tenants_using: dict[str, int] = defaultdict(int)
    by_tenant = []
    for (_, (feature, who)), agg in sorted(merged.items(), key=lambda kv: kv[0][1]):
        users = agg.distinct_users()
        base = active.get(who, 0)
        by_tenant.append(
            {
                "feature": feature,
                "tenant_id": who or None,
                "uses": agg.count,
                "users": users,
                "adoption_percent": rounded(100.0 * min(users, base) / base, 2) if base else None,
            }
        )
        per_feature.setdefault(feature, Agg()).merge(agg)
        tenants_using[feature] += 1
    return {
        "features": sorted(
            (
                {
                    "feature": f,
                    "uses": a.count,
                    "users": a.distinct_users(),
                    "tenants": tenants_using[f],
                }
                for f, a in per_feature.items()
            ),
            key=lambda x: -x["uses"],
        ),
        "by_tenant": by_tenant,
    }
