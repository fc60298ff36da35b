"""The API app's shared resources: their typed keys and the ``cleanup_ctx`` that opens each.

Every handler and background task reads what it shares from the application under one of
these :class:`aiohttp.web.AppKey`\\s; :func:`api.app.create_app` puts the plain values there
and lists the generators, each of which creates one resource when the app starts and closes
it when the app stops::

    SETTINGS      the Settings the app was built with
    POOL          the TimescaleDB connection pool                      pool_ctx
    REDIS         the Redis client                                     redis_ctx
    HTTP          the outbound aiohttp.ClientSession (channel tests)   http_ctx
    REPORT_CACHE  finished report documents (api/respcache)            reports_ctx
    HOUR_CACHE    merged closed hours of rollups (api/store)
    KEY_CACHE     API keys recently checked (api/auth)
                  the psutil resource monitor (api/monitor)            monitor_ctx

Features with a resource of their own keep its key and generator beside them
(:data:`api.exporter.EXPORTER`, :data:`api.live.LIVE_HUB`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from api.auth import KeyCache
from api.monitor import ResourceMonitor
from api.respcache import ReportCache
from api.store import HourCache
from qesmon.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", AsyncConnectionPool)
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


async def pool_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        settings.database_url,
        min_size=1,
        max_size=8,
        open=False,
        timeout=5.0,
        kwargs={
            "autocommit": True,
            "application_name": "qesmon-api",
            "options": "-c timezone=UTC",
            "connect_timeout": 5,
        },
    )
    # wait=False: the API starts (and /health says why it is unhealthy) with the DB down
    await pool.open(wait=False)
    app[POOL] = pool
    yield
    await pool.close(timeout=1.0)


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    client = aioredis.Redis.from_url(
        app[SETTINGS].redis_url, socket_timeout=5.0, socket_connect_timeout=5.0
    )
    app[REDIS] = client
    yield
    await client.aclose()


async def http_ctx(app: web.Application) -> AsyncIterator[None]:
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
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
