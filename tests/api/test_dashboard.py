"""The dashboard against rollups written the way the pipeline writes them."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient

from qesmon.settings import Settings
from tests.api.conftest import Keys, auth, load_events
from tests.api.workload import HOUR, floor_to, in_period, workload

URL = "/api/v1/metrics/dashboard"


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _insert_alert(db: psycopg.Connection[Any], tenant: str, state: str, severity: str) -> int:
    row = db.execute(
        "INSERT INTO alerts (fingerprint, rule_id, rule_name, severity, state, tenant_id, "
        "labels, started_at, fired_at, resolved_at) VALUES (%s, 'r1', 'High errors', %s, %s, "
        "%s, '{}', now() - interval '10 minutes', now(), "
        "CASE WHEN %s = 'resolved' THEN now() END) RETURNING id",
        (f"fp-{tenant}-{state}", severity, state, tenant, state),
    ).fetchone()
    assert row is not None
    return int(row[0])


def expected(events: list[Any], start: float, end: float, tenant: str | None) -> dict[str, Any]:
    period = in_period(events, start, end, tenant)
    pay = [e for e in period if e.name == "subscription_payment"]
    http = [e for e in period if e.name == "http_request"]
    errors = sum(not e.success for e in http)
    return {
        "revenue": {
            "total": round(sum(e.value for e in pay), 2),
            "new": round(sum(e.value for e in pay if e.labels["kind"] == "new"), 2),
            "recurring": round(sum(e.value for e in pay if e.labels["kind"] == "recurring"), 2),
        },
        "usage": {
            "signatures": sum(e.value for e in period if e.name == "signatures_created"),
            "documents": sum(e.value for e in period if e.name == "documents_uploaded"),
        },
        "activity": {
            "active_users": len({e.user for e in period if e.user}),
            "new_users": sum(1 for e in period if e.name == "user_signup"),
        },
        "avg": sum(e.value for e in http) / len(http),
        "error_rate": 100 * errors / len(http),
        "throughput": len(http) / (end - start),
    }


@pytest.mark.parametrize("tenant", [None, "tenant-a"])
async def test_dashboard_numbers_equal_the_ground_truth(
    client: TestClient[Any, Any],
    keys: Keys,
    settings: Settings,
    db: psycopg.Connection[Any],
    tenant: str | None,
) -> None:
    now = time.time()
    events = workload(now)
    load_events(settings, events)
    firing = _insert_alert(db, "tenant-a", "firing", "critical")
    _insert_alert(db, "tenant-a", "resolved", "warning")
    _insert_alert(db, "tenant-b", "pending", "warning")

    query = {"days": "7"} | ({"tenant_id": tenant} if tenant else {})
    resp = await client.get(URL, params=query, headers=auth(keys.viewer))
    assert resp.status == 200, await resp.text()
    body = await resp.json()

    assert set(body) == {
        "tenant_id",
        "period",
        "business_metrics",
        "performance_metrics",
        "alerts",
        "recommendations",
    }
    assert body["tenant_id"] == tenant
    start, end = _ts(body["period"]["start"]), _ts(body["period"]["end"])
    assert body["period"]["days"] == 7
    assert start == floor_to(end - 7 * 86400, 60) or start == floor_to(end - 7 * 86400 + 1, 60)
    truth = expected(events, start, end + 1, tenant)

    business = body["business_metrics"]
    assert business["revenue"] == truth["revenue"]
    assert business["usage"] == truth["usage"]
    assert business["activity"] == truth["activity"]

    perf = body["performance_metrics"]
    assert perf["avg_response_time"] == pytest.approx(truth["avg"], abs=1e-6)
    assert perf["error_rate"] == pytest.approx(truth["error_rate"], abs=1e-4)
    assert perf["throughput"] == pytest.approx(truth["throughput"], abs=2e-6)
    # exactly one closed hour (30 h ago) had failing requests: it is the only down window
    assert perf["uptime"] == pytest.approx(100 * (1 - HOUR / (end - start)), abs=1e-3)

    alerts = body["alerts"]
    assert alerts["active_count"] == (1 if tenant else 2)
    assert alerts["alerts"][0]["id"] == firing
    assert alerts["alerts"][0]["severity"] == "critical"

    kinds = {r["type"]: r for r in body["recommendations"]}
    slow = [r for r in body["recommendations"] if r["type"] == "slow_endpoint"]
    assert [r["endpoint"] for r in slow] == ["/slow"]
    slow_http = [
        e.value
        for e in in_period(events, start, end + 1, tenant)
        if e.labels.get("endpoint") == "/slow"
    ]
    assert slow[0]["value"] == pytest.approx(sum(slow_http) / len(slow_http), abs=1e-4)
    assert f"{slow[0]['value']:.3f} s" in slow[0]["message"]
    quota = kinds["quota_near_limit"]
    assert quota["value"] == 92.0 and quota["tenant_id"] == "tenant-a"
    assert "92.0 %" in quota["message"]


async def test_dashboard_of_a_tenant_excludes_other_tenants_and_old_events(
    client: TestClient[Any, Any], keys: Keys, settings: Settings
) -> None:
    now = time.time()
    events = workload(now)
    load_events(settings, events)
    resp = await client.get(
        URL, params={"days": "1", "tenant_id": "tenant-b"}, headers=auth(keys.admin)
    )
    body = await resp.json()
    start, end = _ts(body["period"]["start"]), _ts(body["period"]["end"])
    truth = expected(events, start, end + 1, "tenant-b")
    assert body["business_metrics"]["revenue"] == truth["revenue"]
    assert body["performance_metrics"]["uptime"] == 100.0
    assert all(r["type"] != "quota_near_limit" for r in body["recommendations"])


async def test_dashboard_on_an_empty_database_answers_zeros(
    client: TestClient[Any, Any], keys: Keys
) -> None:
    resp = await client.get(URL, headers=auth(keys.viewer))
    assert resp.status == 200
    body = await resp.json()
    assert body["business_metrics"]["revenue"] == {"total": 0.0, "new": 0.0, "recurring": 0.0}
    assert body["performance_metrics"]["uptime"] == 100.0
    assert body["recommendations"] == []


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ({"days": "0"}, "days: must be between 1 and 365"),
        ({"days": "abc"}, "days: 'abc' is not an integer"),
        ({"days": "400"}, "days: must be between 1 and 365"),
        ({"day": "7"}, "unknown parameter 'day'"),
        ({"tenant_id": "x" * 300}, "tenant_id: must be printable"),
    ],
)
async def test_dashboard_rejects_bad_parameters_with_a_400_naming_them(
    client: TestClient[Any, Any], keys: Keys, query: dict[str, str], fragment: str
) -> None:
    resp = await client.get(URL, params=query, headers=auth(keys.viewer))
    assert resp.status == 400
    body = await resp.json()
    assert body["error"]["code"] == "invalid_parameter"
    assert fragment in body["error"]["message"]
