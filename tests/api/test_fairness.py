"""Heavy reports cannot starve the rest of the API (issue 15, item 9).

Reports run on a pool of their own with a statement timeout (``api/resources.py``); auth,
``/health`` and the alerts keep theirs. A slow report is made here the test-only way: the
dashboard's builder is replaced by one that sleeps in the database (``pg_sleep``) on the
connection it is given, so it holds a report connection exactly as a cold 365-day report
does, for a known time, without loading a year of rollups.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient

from api import dashboard
from api.app import create_app
from api.resources import POOL, REPORT_POOL, REPORT_POOL_SIZE
from qesmon.settings import Settings
from tests.api.conftest import Keys, auth

P = "/api/v1/metrics"
#: how long a slow report sleeps in the database (s)
SLOW = 4.0


@pytest.fixture
def slow_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every dashboard is one ``pg_sleep(SLOW)`` statement on its report connection."""

    async def build(conn: Any, cache: Any, **kw: Any) -> dict[str, Any]:
        await conn.execute("SELECT pg_sleep(%s)", (SLOW,))
        return {"days": kw["days"], "tenant_id": kw["tenant"]}

    monkeypatch.setattr(dashboard, "build", build)


async def sleeping_reports(settings: Settings) -> int:
    """Report statements of this test's database sleeping right now."""
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'qesmon-api-reports' AND state = 'active' "
            "AND query LIKE 'SELECT pg_sleep%%'"
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def until_sleeping(settings: Settings, n: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while (found := await sleeping_reports(settings)) < n:
        assert time.monotonic() < deadline, f"{found} of {n} reports reached the database"
        await asyncio.sleep(0.05)


async def timed_get(
    client: TestClient[Any, Any], path: str, key: str | None = None
) -> tuple[float, int, Any]:
    started = time.monotonic()
    r = await client.get(path, headers=auth(key) if key else {})
    body = await r.json()
    return time.monotonic() - started, r.status, body


async def test_eight_slow_365_day_reports_leave_health_and_alerts_answering_within_a_second(
    client: TestClient[Any, Any], keys: Keys, settings: Settings, slow_reports: None
) -> None:
    assert REPORT_POOL_SIZE == 8  # the reports below take every report connection

    async def report(tenant: str) -> tuple[int, str]:
        r = await client.get(
            f"{P}/dashboard", params={"days": "365", "tenant_id": tenant}, headers=auth(keys.admin)
        )
        return r.status, await r.text()

    # eight tenants: eight cache keys, so eight computations rather than one shared
    reports = [asyncio.create_task(report(f"tenant-{i}")) for i in range(8)]
    await until_sleeping(settings, 8)
    started = time.monotonic()

    seconds, status, body = await timed_get(client, f"{P}/health")
    assert seconds < 1.0, f"/health took {seconds:.2f} s"
    assert body["checks"]["database"]["ok"], body["checks"]["database"]
    assert status in (200, 503)  # no pipeline runs here: unhealthy, but answered at once
    # a key not looked up yet: authentication reads the database too
    for key in (keys.viewer, keys.tenant_a, keys.viewer):
        seconds, status, body = await timed_get(client, f"{P}/alerts", key)
        assert status == 200, body
        assert seconds < 1.0, f"GET /alerts took {seconds:.2f} s"

    # all of it happened while the eight reports held their connections
    assert time.monotonic() - started < SLOW - 0.5
    assert await sleeping_reports(settings) == 8
    for task in reports:
        status, text = await task
        assert status == 200, text


async def test_a_report_query_over_the_statement_timeout_answers_504_saying_so(
    aiohttp_client: Any, settings: Settings, keys: Keys, slow_reports: None
) -> None:
    limited = dataclasses.replace(
        settings, api=dataclasses.replace(settings.api, report_statement_timeout=0.5)
    )
    client: TestClient[Any, Any] = await aiohttp_client(create_app(limited, monitor=False))
    seconds, status, body = await timed_get(client, f"{P}/dashboard?days=365", keys.viewer)
    assert status == 504, body
    assert body["error"]["code"] == "report_timeout"
    message = body["error"]["message"]
    assert "0.5 s" in message and "API_REPORT_STATEMENT_TIMEOUT_SECONDS" in message
    assert seconds < SLOW - 1, "the statement was not cancelled at the timeout"
    # the rest of the API is untouched, and the next report gets a working connection
    seconds, status, _ = await timed_get(client, f"{P}/alerts", keys.viewer)
    assert status == 200
    seconds, status, body = await timed_get(client, f"{P}/dashboard?days=364", keys.viewer)
    assert status == 504 and body["error"]["code"] == "report_timeout"


async def test_reports_run_with_the_statement_timeout_and_the_rest_without(
    client: TestClient[Any, Any], keys: Keys
) -> None:
    """Only report connections carry the timeout: a long alert action must not be cut."""
    async with client.app[REPORT_POOL].connection() as conn:
        cur = await conn.execute("SHOW statement_timeout")
        assert (await cur.fetchone()) == ("30s",)
    async with client.app[POOL].connection() as conn:
        cur = await conn.execute("SHOW statement_timeout")
        assert (await cur.fetchone()) == ("0",)
