"""Reports and the exporter read merged days from the day tier: the same answers as from the
hours, and still the same once the finer rows of those days are gone (as retention drops them)."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import redis.asyncio
from psycopg_pool import AsyncConnectionPool

from api import business, dashboard, store
from api.exporter import Exporter
from api.store import HourCache, SeriesFilter
from cli.maintain import run_pass
from qesmon.settings import Settings
from qesmon.sketch import Agg
from tests.api.conftest import load_events
from tests.api.workload import workload

#: lines of the exporter's text that depend on when and how fast it ran, not on the data
VOLATILE = re.compile(r"^qes_(exporter_|pipeline_|notifier_|database_)|^# ")


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[AsyncConnectionPool[Any]]:
    p: AsyncConnectionPool[Any] = AsyncConnectionPool(
        settings.database_url, min_size=1, max_size=4, open=False, kwargs={"autocommit": True}
    )
    await p.open()
    yield p
    await p.close()


async def _answers(
    settings: Settings, pool: AsyncConnectionPool[Any], aredis: redis.asyncio.Redis, now: float
) -> dict[str, Any]:
    """The dashboard (7 d), business intelligence (30 d) and the exporter's counters and
    histograms, each computed afresh (empty caches, a new exporter: as after a restart)."""
    async with pool.connection() as conn:
        dash = await dashboard.build(
            conn, HourCache(), tenant=None, days=7, now=now, slow_threshold=1.0
        )
        bi = await business.build(conn, HourCache(), tenant=None, days=30, now=now)
    exporter = Exporter(settings, pool, aredis, HourCache())
    await exporter.refresh()
    lines = exporter.render().decode().splitlines()
    # sums of floats added in another order differ in the last digit: compared to 1e-12
    samples = (line.rpartition(" ") for line in lines if not VOLATILE.match(line))
    return {
        "dashboard": dash,
        "business": bi,
        "exporter": {
            series: pytest.approx(float(value), rel=1e-12) for series, _, value in samples
        },
    }


async def test_merged_days_answer_as_their_hours_did_and_alone_once_the_hours_are_gone(
    settings: Settings,
    pool: AsyncConnectionPool[Any],
    aredis: redis.asyncio.Redis,
    db: psycopg.Connection[Any],
) -> None:
    now = time.time()
    load_events(settings, workload(now))
    run_pass(settings)  # merges the final days (and drops what the default retention drops)
    days = db.execute("SELECT count(DISTINCT bucket) FROM metric_rollups_1d").fetchone()
    assert days is not None and days[0] >= 4, days  # 6.5 days of events: at least 4 final ones
    hours = db.execute("SELECT count(*) FROM tenant_users_done WHERE width_s = 3600").fetchone()
    assert hours is not None and hours[0] >= 30, hours  # the final hours of the last two days
    with_days = await _answers(settings, pool, aredis, now)
    assert with_days["exporter"] and with_days["business"]["revenue"]

    # the users per tenant and hour or day are what the rollups would have given
    db.execute("TRUNCATE tenant_users_done")
    assert await _answers(settings, pool, aredis, now) == with_days

    # the hours alone (no day tier): what the reports read before it existed
    db.execute("CREATE TEMP TABLE saved AS SELECT * FROM metric_rollups_1d")
    db.execute("TRUNCATE metric_rollups_1d")
    hours_only = await _answers(settings, pool, aredis, now)
    assert with_days == hours_only

    # the day rows alone for the days they cover: the finer rows of days older than the
    # rolling 24 h of daily active users gone (retention keeps hours 90 days; the dashboard
    # reads hours, so it is left out here)
    cutoff = datetime.fromtimestamp((now // 86400 - 2) * 86400, UTC)
    db.execute("INSERT INTO metric_rollups_1d SELECT * FROM saved")
    for table in ("metric_rollups_1h", "metric_rollups_1m", "metric_rollups_10s"):
        gone = db.execute(f"DELETE FROM {table} WHERE bucket < %s", (cutoff,)).rowcount
        assert table != "metric_rollups_1h" or gone > 100
    days_only = await _answers(settings, pool, aredis, now)
    for key in ("business", "exporter"):
        assert days_only[key] == hours_only[key], key


async def test_distinct_users_of_whole_days_come_from_the_users_per_tenant_and_day(
    settings: Settings, pool: AsyncConnectionPool[Any], db: psycopg.Connection[Any]
) -> None:
    now = time.time()
    load_events(settings, workload(now))
    run_pass(settings)
    done = db.execute("SELECT count(*) FROM tenant_users_done WHERE width_s = 86400").fetchone()
    per_day = db.execute("SELECT count(*) FROM tenant_users WHERE width_s = 86400").fetchone()
    assert done is not None and done[0] >= 4 and per_day is not None and per_day[0] >= done[0]
    # every tenant's hour and day made of one user: the report's merged days follow them
    one = Agg()
    one.add(1.0, True, "the-only-user")
    db.execute("UPDATE tenant_users SET sketch = %s", (one.to_bytes(),))
    async with pool.connection() as conn:
        bi = await business.build(conn, HourCache(), tenant=None, days=30, now=now)
    merged = db.execute(
        "SELECT DISTINCT to_char(bucket, 'YYYY-MM-DD') FROM tenant_users"
        " WHERE width_s = 86400 AND bucket >= now() - interval '29 days'"
    ).fetchall()
    daily = {d["date"]: d["active_users"] for d in bi["users"]["daily"]}
    assert merged and all(daily[day] == 1 for (day,) in merged), daily
    # and the final hours of the last two days
    first, last = db.execute(
        "SELECT extract(epoch FROM min(bucket)), extract(epoch FROM max(bucket))"
        " FROM tenant_users_done WHERE width_s = 3600"
    ).fetchone()
    hours = [store.Span(store.HOUR, float(first), float(last) + store.HOUR)]
    async with pool.connection() as conn:
        users = await store.distinct_users(conn, HourCache(), SeriesFilter(with_users=True), hours)
    assert users == 1
    # a day not marked done is merged from its rows again
    db.execute("TRUNCATE tenant_users_done")
    async with pool.connection() as conn:
        again = await business.build(conn, HourCache(), tenant=None, days=30, now=now)
    assert any(d["active_users"] > 1 for d in again["users"]["daily"])
