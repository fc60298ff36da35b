"""The exporter's running totals are stored: a restarted exporter reads them instead of the
history (it gives the same counters with the history gone), and they only move forward."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
import redis.asyncio
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from api.exporter import Exporter
from api.store import HourCache
from qesmon.settings import Settings
from tests.api.conftest import load_events
from tests.api.workload import workload


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[AsyncConnectionPool[Any]]:
    p: AsyncConnectionPool[Any] = AsyncConnectionPool(
        settings.database_url, min_size=1, max_size=4, open=False, kwargs={"autocommit": True}
    )
    await p.open()
    yield p
    await p.close()


async def _totals(
    settings: Settings, pool: AsyncConnectionPool[Any], aredis: redis.asyncio.Redis
) -> dict[str, float]:
    """The counters and histogram sums of a freshly started exporter."""
    exporter = Exporter(settings, pool, aredis, HourCache())
    await exporter.refresh()
    out = {}
    for line in exporter.render().decode().splitlines():
        series, _, value = line.rpartition(" ")
        if series.startswith(("qes_revenue_total", "qes_requests_total", "qes_usage_total")) or (
            series.startswith("qes_request_duration_seconds_") and "_created" not in series
        ):
            out[series] = float(value)
    return out


async def test_a_restart_reads_the_stored_totals_not_the_history(
    settings: Settings,
    pool: AsyncConnectionPool[Any],
    aredis: redis.asyncio.Redis,
    db: psycopg.Connection[Any],
) -> None:
    load_events(settings, workload(time.time()))
    first = await _totals(settings, pool, aredis)
    stored = db.execute(
        "SELECT extract(epoch FROM upto), state->'v' FROM exporter_state"
    ).fetchone()
    assert stored is not None and stored[1] == 1 and stored[0] > time.time() - 3 * 3600
    assert first and any(v > 0 for k, v in first.items() if k.startswith("qes_revenue_total"))

    # the hours the totals cover are gone (as if dropped): a restart still counts them
    db.execute("DELETE FROM metric_rollups_1h WHERE bucket < to_timestamp(%s)", (stored[0],))
    assert await _totals(settings, pool, aredis) == first

    # without the stored totals the same restart counts only what is left: the test above
    # really read them
    db.execute("TRUNCATE exporter_state")
    assert await _totals(settings, pool, aredis) != first


async def test_stored_totals_only_move_forward_and_a_foreign_format_is_recomputed(
    settings: Settings,
    pool: AsyncConnectionPool[Any],
    aredis: redis.asyncio.Redis,
    db: psycopg.Connection[Any],
) -> None:
    load_events(settings, workload(time.time()))
    first = await _totals(settings, pool, aredis)
    # another API process stored totals further ahead: this one's older ones never replace them
    db.execute(
        "UPDATE exporter_state SET upto = upto + interval '1 hour', state = %s",
        (Jsonb({"v": 1, "totals": [], "hists": []}),),
    )
    ahead = db.execute("SELECT upto, state FROM exporter_state").fetchone()
    exporter = Exporter(settings, pool, aredis, HourCache())
    exporter._state_read = True  # as a process running since before the other one stored
    await exporter.refresh()
    assert db.execute("SELECT upto, state FROM exporter_state").fetchone() == ahead

    # a stored document of another version, or garbage, is not trusted: recomputed from history
    for doc in ({"v": 99, "totals": [], "hists": []}, {"v": 1, "totals": [["x"]]}, [1, 2]):
        db.execute(
            "UPDATE exporter_state SET upto = upto - interval '10 days', state = %s", (Jsonb(doc),)
        )
        assert await _totals(settings, pool, aredis) == first
