"""``/health`` shows the last ``qesmon maintain`` pass beside its checks, never as a 503."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from aiohttp.test_utils import TestClient

from cli.maintain import run_pass
from qesmon.settings import Settings

P = "/api/v1/metrics"


async def test_health_shows_the_last_maintenance_pass_and_a_failed_one_says_why(
    client: TestClient[Any, Any], settings: Settings, db: psycopg.Connection[Any]
) -> None:
    before = await (await client.get(f"{P}/health")).json()
    assert before["maintenance"] == {"ran": False}
    db.execute(
        "INSERT INTO audit_log (at, action) VALUES (now() - interval '400 days', 'configure')"
    )
    await asyncio.to_thread(run_pass, settings)
    section = (await (await client.get(f"{P}/health")).json())["maintenance"]
    assert section["ran"] and section["ok"] and section["error"] is None
    assert 0 <= section["age_seconds"] < 60
    assert section["deleted"]["audit_log"] == 1 and section["dropped"] == {}
    # a step that fails is recorded with its reason; the other steps still ran
    db.execute("ALTER TABLE audit_log RENAME TO audit_log_away")
    try:
        report = await asyncio.to_thread(run_pass, settings)
    finally:
        db.execute("ALTER TABLE audit_log_away RENAME TO audit_log")
    assert not report.ok and "deleted" in report.summary
    resp = await client.get(f"{P}/health")
    section = (await resp.json())["maintenance"]
    assert not section["ok"] and "prune audit_log" in section["error"]
    assert "audit_log" in section["error"] and section["deleted"]["alerts"] == 0
