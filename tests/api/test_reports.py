"""Performance and business-intelligence reports against a ground truth from the events."""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient

from api import store
from qesmon.settings import Settings
from tests.api.conftest import Ev, Keys, auth, load_events
from tests.api.test_dashboard import _ts
from tests.api.workload import DAY, HOUR, floor_to, in_period, nearest_rank, workload

P = "/api/v1/metrics"


async def test_performance_percentiles_are_merged_not_averaged(
    client: TestClient[Any, Any], keys: Keys, settings: Settings
) -> None:
    now = time.time()
    events = workload(now)
    load_events(settings, events)
    resp = await client.get(f"{P}/performance", params={"hours": "24"}, headers=auth(keys.viewer))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    start, end = _ts(body["period"]["start"]), _ts(body["period"]["end"])
    http = [e for e in in_period(events, start, end + 1) if e.name == "http_request"]
    durations = [e.value for e in http]
    summary = body["summary"]
    assert summary["count"] == len(http)
    assert summary["errors"] == sum(not e.success for e in http)
    for q, key in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
        assert summary[key] == pytest.approx(nearest_rank(durations, q), abs=1e-6)
    by_endpoint: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for e in http:
        by_endpoint[(e.labels["service"], e.labels["endpoint"], e.labels["method"])].append(e.value)
    assert body["slowest_endpoints"][0]["endpoint"] == "/slow"
    for item in body["slowest_endpoints"]:
        values = by_endpoint[(item["service"], item["endpoint"], item["method"])]
        assert item["count"] == len(values)
        assert item["p95"] == pytest.approx(nearest_rank(values, 0.95), abs=1e-6)
        assert item["slow_requests"] == sum(v > 1.0 for v in values)
    assert body["slow_requests"]["count"] == sum(v > 1.0 for v in durations)
    # one point per hour; the points add up to the whole
    per_hour: dict[float, list[float]] = defaultdict(list)
    for e in http:
        per_hour[floor_to(e.ts, HOUR)].append(e.value)
    points = {_ts(p["time"]): p for p in body["timeline"]}
    assert set(points) == set(per_hour)
    for hour, values in per_hour.items():
        assert points[hour]["count"] == len(values)
        assert points[hour]["p99"] == pytest.approx(nearest_rank(values, 0.99), abs=1e-6)


async def test_performance_reports_resources_per_host(
    client: TestClient[Any, Any], keys: Keys, settings: Settings
) -> None:
    now = time.time()
    events = [
        Ev("cpu_usage", "system", now - 600 + i * 60, 10.0 * i, labels={"host": "h1"})
        for i in range(1, 6)
    ]
    events += [
        Ev("disk_usage", "system", now - 300, 70.0, labels={"host": "h1", "mount": "/"}),
        Ev("network_bytes_sent", "system", now - 200, 3600.0, labels={"host": "h1"}),
    ]
    load_events(settings, events)
    body = await (
        await client.get(f"{P}/performance", params={"hours": "1"}, headers=auth(keys.viewer))
    ).json()
    assert body["period"]["step_seconds"] == 60
    (cpu,) = body["resources"]["cpu"]
    assert cpu == {"host": "h1", "avg_percent": 30.0, "max_percent": 50.0, "latest_percent": 50.0}
    assert body["resources"]["disk"][0]["mount"] == "/"
    seconds = _ts(body["period"]["end"]) - _ts(body["period"]["start"])
    assert body["resources"]["network"][0]["sent_bytes_per_second"] == pytest.approx(
        3600.0 / seconds, rel=1e-2
    )


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


async def test_business_intelligence_revenue_users_features_and_forecast(
    client: TestClient[Any, Any], keys: Keys, settings: Settings
) -> None:
    now = time.time()
    today = floor_to(now, DAY)
    events: list[Ev] = []
    # revenue rising by exactly 10 EUR a day over the 10 complete days before today
    for d in range(1, 11):
        day = today - d * DAY
        events.append(
            Ev(
                "subscription_payment",
                "revenue",
                day + 3600,
                200.0 - 10 * d,
                "t1",
                labels={"plan": "pro", "currency": "EUR", "kind": "recurring"},
            )
        )
    events.append(
        Ev(
            "subscription_payment",
            "revenue",
            now - 30,
            7.0,
            "t1",
            labels={"plan": "basic", "currency": "USD", "kind": "new"},
        )
    )
    # cohort: 4 users sign up 3 days ago; 2 are back the day after
    signup_day = today - 3 * DAY
    for i in range(4):
        events.append(Ev("user_signup", "business_event", signup_day + 100 + i, 1.0, "t1", f"n{i}"))
    for i in range(2):
        events.append(
            Ev("user_login", "business_event", signup_day + DAY + 100, 1.0, "t1", f"n{i}")
        )
    # features: e-seal used by 3 of t1's users
    for i in range(3):
        events.append(Ev("eseal", "feature_usage", now - 7200, 1.0, "t1", f"n{i}"))
    load_events(settings, events)

    resp = await client.get(
        f"{P}/business-intelligence", params={"days": "30"}, headers=auth(keys.viewer)
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    revenue = body["revenue"]
    assert {(p["plan"], p["currency"], p["total"]) for p in revenue["by_plan"]} == {
        ("pro", "EUR", sum(200.0 - 10 * d for d in range(1, 11))),
        ("basic", "USD", 7.0),
    }
    daily_eur = {d["date"]: d["amount"] for d in revenue["daily"] if d["currency"] == "EUR"}
    assert daily_eur[_day(today - DAY)] == 190.0 and daily_eur[_day(today - 10 * DAY)] == 100.0
    (eur,) = [f for f in revenue["forecast"]["by_currency"] if f["currency"] == "EUR"]
    # the days before the payments started are zeros; on the linear part the backtest is exact
    assert revenue["forecast"]["method"] == "ols_linear_trend"
    assert eur["backtest"]["days"] > 0 and eur["backtest"]["mae"] is not None
    assert eur["daily"][0]["date"] == _day(today + DAY)
    assert eur["next_period_total"] > 0

    users = body["users"]
    assert users["new_users"] == 4
    (cohort,) = users["retention"]
    assert cohort == {
        "signup_date": _day(signup_day),
        "size": 4,
        "day_1_percent": 50.0,
        "day_7_percent": None,
    }
    assert users["mau"] == 4 and users["dau"] == 3  # n0..n2 used e-seal 2 hours ago
    (feature,) = body["features"]["features"]
    assert feature == {"feature": "eseal", "uses": 3, "users": 3, "tenants": 1}
    assert body["features"]["by_tenant"][0]["adoption_percent"] == 75.0


async def test_forecast_of_a_straight_line_is_the_line_with_zero_backtest_error(
    client: TestClient[Any, Any], keys: Keys, settings: Settings
) -> None:
    now = time.time()
    today = floor_to(now, DAY)
    days = 7
    complete = [today - d * DAY for d in range(days, 0, -1) if today - d * DAY >= now - days * DAY]
    events = [
        Ev(
            "subscription_payment",
            "revenue",
            day + 60,
            100.0 + 5 * i,
            "t",
            labels={"plan": "pro", "currency": "EUR", "kind": "recurring"},
        )
        for i, day in enumerate(complete)
    ]
    load_events(settings, events)
    body = await (
        await client.get(
            f"{P}/business-intelligence", params={"days": str(days)}, headers=auth(keys.admin)
        )
    ).json()
    (eur,) = body["revenue"]["forecast"]["by_currency"]
    n = len(complete)
    expected = [100.0 + 5 * (n + 1 + i) for i in range(days)]  # today is skipped
    assert [d["amount"] for d in eur["daily"]] == pytest.approx(expected, abs=0.01)
    assert eur["backtest"]["mae"] == pytest.approx(0.0, abs=1e-6)
    assert eur["backtest"]["days"] == n - 3


async def test_a_gauges_latest_value_is_its_last_window_not_the_closed_hour_around_it(
    settings: Settings,
) -> None:
    # all in an hour that is over: that hour's window ends after the last 10 s window of its
    # events, and its mean (30) is not the latest value (50); the last window is
    hour = floor_to(time.time(), HOUR) - 2 * HOUR
    events = [
        Ev("cpu_usage", "system", hour + 60 * i + 5, 10.0 * i, labels={"host": "h1"})
        for i in range(1, 6)
    ]
    load_events(settings, events)
    flt = store.SeriesFilter(names=("cpu_usage",))
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        ((key, end, value),) = await store.latest_values(conn, flt, hour, by=("host",))
    assert (key, value) == (("h1",), 50.0)
    assert end == hour + 300 + 10  # the end of the 10 s window of the last event
