"""The API app's shared resources: their typed keys and the ``cleanup_ctx`` that opens each.

Every handler and background task reads what it shares from the application under one of
these :class:`aiohttp.web.AppKey`\\s; :func:`api.app.create_app` puts the plain values there
and lists the generators, each of which creates one resource when the app starts and closes
it when the app stops::

    SETTINGS      the Settings the app was built with
    POOL          TimescaleDB connections for everything but reports   pool_ctx
                  (auth, health, alerts, actions, live feed, exporter)
    REPORT_POOL   TimescaleDB connections for reports, with a          report_pool_ctx
                  statement timeout (report_connection)
    REPORT_MERGES the threads that merge the reports' sketches          report_pool_ctx
    REDIS         the Redis client                                     redis_ctx
    HTTP          the guarded outbound session (notifier.outbound)     http_ctx
    REPORT_CACHE  finished report documents (api/respcache)            reports_ctx
    HOUR_CACHE    merged closed hours of rollups (api/store)
    KEY_CACHE     API keys recently checked (api/auth)
                  the psutil resource monitor (api/monitor)            monitor_ctx

Features with a resource of their own keep its key and generator beside them
(:data:`api.exporter.EXPORTER`, :data:`api.live.LIVE_HUB`).

Two pools, so that heavy reports cannot starve the rest: with one pool, eight slow reports
held every connection and auth, ``/health`` and the alerts waited for one until they answered
503. Reports now queue for :data:`REPORT_POOL` only (at most :data:`REPORT_POOL_SIZE` at once;
one that waits longer than :data:`POOL_WAIT` s is 503 ``reports_busy``), and each of their
statements is cancelled after ``API_REPORT_STATEMENT_TIMEOUT_SECONDS`` (504
``report_timeout``); :data:`POOL` keeps its :data:`POOL_SIZE` connections for the short
queries::

    async with report_connection(app) as conn:
        document = await dashboard.build(conn, ...)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import psycopg
import redis.asyncio as aioredis
from aiohttp import web
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from api.auth import KeyCache
from api.monitor import ResourceMonitor
from api.respcache import ReportCache
from api.store import MERGE_EXECUTOR, Conn, HourCache
from notifier import outbound
from qesmon.errors import ApiError
from qesmon.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", AsyncConnectionPool)
REPORT_POOL = web.AppKey("report_pool", AsyncConnectionPool)
REPORT_MERGES = web.AppKey("report_merges", ThreadPoolExecutor)
REDIS = web.AppKey("redis", aioredis.Redis)
HTTP = web.AppKey("http", aiohttp.ClientSession)
HOUR_CACHE = web.AppKey("hour_cache", HourCache)
KEY_CACHE = web.AppKey("key_cache", KeyCache)
REPORT_CACHE = web.AppKey("report_cache", ReportCache)


async def stop_task(task: asyncio.Task[None], grace: float = 1.0) -> None:
    """Wait for a background task that was told to stop; cancel it after ``grace`` s."""
    try:
        await asyncio.wait_for(asyncio.shield(task), grace)
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


#: connections of the pool for auth, health, alerts, actions, the live feed and the exporter
#: (the exporter and the live feed hold one each at most)
POOL_SIZE = 6
#: reports computed at once; more wait for a connection
REPORT_POOL_SIZE = 8
#: seconds a request waits for a connection before it answers 503
POOL_WAIT = 5.0
#: threads merging the reports' sketches (CPU-bound; the rest of the API keeps the default
#: executor for itself)
REPORT_MERGE_THREADS = 2


class ReportTimeout(ApiError):
    """A report's statement ran past ``API_REPORT_STATEMENT_TIMEOUT_SECONDS`` and was cancelled."""

    status = 504
    code = "report_timeout"


class ReportsBusy(ApiError):
    """Every report connection stayed busy while this report waited for one."""

    status = 503
    code = "reports_busy"


def _pool(settings: Settings, name: str, size: int, options: str) -> AsyncConnectionPool[Any]:
    return AsyncConnectionPool(
        settings.database_url,
        min_size=1,
        max_size=size,
        open=False,
        timeout=POOL_WAIT,
        name=name,
        kwargs={
            "autocommit": True,
            "application_name": name,
            "options": f"-c timezone=UTC {options}".strip(),
            "connect_timeout": 5,
        },
    )


async def pool_ctx(app: web.Application) -> AsyncIterator[None]:
    pool = _pool(app[SETTINGS], "qesmon-api", POOL_SIZE, "")
    # wait=False: the API starts (and /health says why it is unhealthy) with the DB down
    await pool.open(wait=False)
    app[POOL] = pool
    yield
    await pool.close(timeout=1.0)


async def report_pool_ctx(app: web.Application) -> AsyncIterator[None]:
    timeout_ms = max(1, round(app[SETTINGS].api.report_statement_timeout * 1000))
    pool = _pool(
        app[SETTINGS], "qesmon-api-reports", REPORT_POOL_SIZE, f"-c statement_timeout={timeout_ms}"
    )
    await pool.open(wait=False)
    app[REPORT_POOL] = pool
    merges = ThreadPoolExecutor(REPORT_MERGE_THREADS, thread_name_prefix="report-merge")
    app[REPORT_MERGES] = merges
    yield
    await pool.close(timeout=1.0)
    merges.shutdown(wait=False, cancel_futures=True)


@contextlib.asynccontextmanager
async def report_connection(app: web.Application) -> AsyncIterator[Conn]:
    """A connection of :data:`REPORT_POOL`; its cancelled statement is a 504, a wait too long
    for it a 503, each with a message that says which and what to do."""
    limit = app[SETTINGS].api.report_statement_timeout
    merges = MERGE_EXECUTOR.set(app[REPORT_MERGES])
    try:
        async with app[REPORT_POOL].connection() as conn:
            yield conn
    except psycopg.errors.QueryCanceled:
        raise ReportTimeout(
            f"the report's database query ran longer than {limit:g} s "
            "(API_REPORT_STATEMENT_TIMEOUT_SECONDS) and was cancelled; ask for a shorter "
            "period, or retry in a while"
        ) from None
    except PoolTimeout:
        raise ReportsBusy(
            f"{REPORT_POOL_SIZE} reports are being computed and none finished within "
            f"{POOL_WAIT:g} s; retry later"
        ) from None
    finally:
        MERGE_EXECUTOR.reset(merges)


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    client = aioredis.Redis.from_url(
        app[SETTINGS].redis_url, socket_timeout=5.0, socket_connect_timeout=5.0
    )
    app[REDIS] = client
    yield
    await client.aclose()


async def http_ctx(app: web.Application) -> AsyncIterator[None]:
    session = outbound.session(
        app[SETTINGS].channels.outbound_allow, timeout=aiohttp.ClientTimeout(total=15)
    )
    app[HTTP] = session
    yield
    await session.close()


async def reports_ctx(app: web.Application) -> AsyncIterator[None]:
    """Finished report documents (single flight, a few seconds old at most; api/respcache)."""
    cache = ReportCache()
    app[REPORT_CACHE] = cache
    yield
    await cache.close()


async def monitor_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    monitor = ResourceMonitor(settings, app[REDIS])
    stop = asyncio.Event()
    task = asyncio.create_task(monitor.run(stop), name="resource-monitor")
    yield
    stop.set()
    await stop_task(task)
    await monitor.close()
