"""The live hub: one Redis subscription per API process, fanned out to every stream subscriber.

It follows the pipeline's ``<prefix>:live`` channel and the alerts (stream and table), keeps
them in a :class:`~api.live.state.LiveState`, and every ``tick`` queues one encoded snapshot
per distinct filter for its subscribers; a subscriber whose queue is full is disconnected.
One API key holds at most ``API_LIVE_STREAMS_PER_KEY`` streams at once per process (a new one
beyond is refused with 429), so one client cannot take every subscriber slot and queue.
:func:`live_ctx` starts it with the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
import redis.asyncio as aioredis
import redis.exceptions
from aiohttp import web
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from api import alerts as alert_store
from api import store
from api.live.state import LiveFilter, LiveState, utc_day_start
from api.resources import POOL, REDIS, SETTINGS, stop_task
from qesmon.alerts import AlertTransition
from qesmon.errors import ApiError, ContractError, Unauthorized
from qesmon.settings import Settings

log = logging.getLogger(__name__)

#: a bad alert entry is logged at most this often (seconds)
SKIP_LOG_EVERY = 10.0


@dataclass(frozen=True, slots=True)
class LiveConfig:
    """Timing and bounds of the live feed (tests shrink them)."""

    tick: float = 0.25
    #: after new windows arrive, wait this long for more before publishing
    coalesce: float = 0.02
    heartbeat: float = 5.0
    queue_size: int = 32
    #: per-connection kernel send buffer and transport high-water mark (bytes)
    send_buffer: int = 64 * 1024
    history_s: float = 300.0
    alert_resync: float = 5.0
    revenue_refresh: float = 10.0
    session_ttl: float = 12 * 3600.0
    reconnect_backoff: float = 1.0


def sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


_CLOSE = b""


class TooManyStreams(ApiError):
    """The API key already holds as many live streams as it may (``API_LIVE_STREAMS_PER_KEY``)."""

    status = 429
    code = "too_many_streams"


class Subscriber:
    """One open stream: its filter, the key that opened it and its bounded queue of encoded
    SSE messages."""

    def __init__(
        self,
        flt: LiveFilter,
        queue_size: int,
        transport: asyncio.BaseTransport | None,
        key_id: int | None = None,
    ):
        self.filter = flt
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(queue_size)
        self.transport = transport
        self.key_id = key_id
        self.dropped = False


class LiveHub:
    """One Redis subscription per process, fanned out to every subscriber.

    Start it with :meth:`run` (a task), end it with :meth:`close`; :meth:`subscribe` and
    :meth:`unsubscribe` are called by the stream handler.
    """

    def __init__(
        self,
        settings: Settings,
        redis_client: aioredis.Redis,
        pool: AsyncConnectionPool[Any],
        config: LiveConfig,
    ) -> None:
        self.settings = settings
        self.redis = redis_client
        self.pool = pool
        self.config = config
        self.state = LiveState(
            history_s=config.history_s, width=float(settings.pipeline.window_seconds)
        )
        self.subscribers: set[Subscriber] = set()
        self.channel = settings.streams.key("live")
        self.stop = asyncio.Event()
        self.connected = False
        self.dropped_total = 0
        #: streams refused because their key held too many
        self.refused_total = 0
        #: alert entries that did not parse (skipped)
        self.skipped_alerts = 0
        self._skip_logged_at = -SKIP_LOG_EVERY
        self.ticks = 0
        self._secret: bytes | None = None
        #: set when the subscription brought new windows (publish without waiting for a tick)
        self._fresh = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        for name, coro in (
            ("live-subscribe", self._subscribe_loop()),
            ("live-alerts", self._alerts_loop()),
            ("live-db", self._db_loop()),
            ("live-tick", self._tick_loop()),
        ):
            self._tasks.append(asyncio.create_task(coro, name=name))

    async def close(self) -> None:
        """End every stream (its handler returns) and stop the background tasks."""
        self.stop.set()
        for sub in list(self.subscribers):
            self._end(sub)
        self.subscribers.clear()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            # Redis reads and sleeps are cancelled; the database task is told to stop and
            # waited for (psycopg swallows a cancellation in the middle of a query).
            if task.get_name() != "live-db":
                task.cancel()
        for task in tasks:
            try:
                await stop_task(task, grace=2.0)
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("live task %s failed", task.get_name())

    def subscribe(
        self,
        flt: LiveFilter,
        transport: asyncio.BaseTransport | None,
        key_id: int | None = None,
    ) -> Subscriber:
        """A new subscriber for ``key_id``'s stream; TooManyStreams when that key already
        holds ``API_LIVE_STREAMS_PER_KEY`` of them (a stream leaving frees its slot at once)."""
        limit = self.settings.api.live_streams_per_key
        if key_id is not None:
            held = sum(1 for sub in self.subscribers if sub.key_id == key_id)
            if held >= limit:
                self.refused_total += 1
                raise TooManyStreams(
                    f"this API key already has {held} live streams open (at most {limit}, "
                    "API_LIVE_STREAMS_PER_KEY); close one first"
                )
        sub = Subscriber(flt, self.config.queue_size, transport, key_id)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def _end(self, sub: Subscriber) -> None:
        try:
            sub.queue.put_nowait(_CLOSE)
        except asyncio.QueueFull:
            self._drop(sub)

    def _drop(self, sub: Subscriber) -> None:
        """Disconnect a subscriber that cannot keep up; its handler sees a reset."""
        sub.dropped = True
        self.subscribers.discard(sub)
        self.dropped_total += 1
        if sub.transport is not None:
            sub.transport.abort()  # type: ignore[attr-defined]
        log.info("live: dropped a slow subscriber (%d queued messages)", sub.queue.qsize())

    # -- fan-out -------------------------------------------------------------------------

    def publish(self, now: float) -> None:
        """Encode one snapshot per distinct filter and queue it for its subscribers."""
        self.ticks += 1
        self.state.prune(now)
        stale = not self.connected
        encoded: dict[LiveFilter, bytes] = {}
        for sub in list(self.subscribers):
            message = encoded.get(sub.filter)
            if message is None:
                message = sse("snapshot", self.state.snapshot(sub.filter, now, stale))
                encoded[sub.filter] = message
            try:
                sub.queue.put_nowait(message)
            except asyncio.QueueFull:
                self._drop(sub)

    def greeting(self, flt: LiveFilter, now: float) -> bytes:
        """What a new subscriber gets first: the reconnect delay, history and a snapshot."""
        retry = int(self.config.reconnect_backoff * 1000)
        return (
            f"retry: {retry}\n\n".encode()
            + sse("history", {"width_s": self.state.width, "points": self.state.history(flt, now)})
            + sse("snapshot", self.state.snapshot(flt, now, not self.connected))
        )

    async def _tick_loop(self) -> None:
        """Publish every ``tick``, and as soon as new windows arrive (bursts coalesced)."""
        while not self.stop.is_set():
            self._fresh.clear()
            self.publish(time.time())
            try:
                await asyncio.wait_for(self._fresh.wait(), self.config.tick)
            except TimeoutError:
                continue
            await asyncio.sleep(self.config.coalesce)

    # -- inputs --------------------------------------------------------------------------

    async def _seed_windows(self) -> None:
        """Windows published before we subscribed, from the ``live:windows:*`` hashes."""
        pattern = self.settings.streams.key("live", "windows", "*")
        windows = []
        async for key in self.redis.scan_iter(match=pattern, count=500):
            for raw in (await self.redis.hgetall(key)).values():
                windows.append(orjson.loads(raw))
        self.state.add_windows(windows, time.time())

    async def _subscribe_loop(self) -> None:
        backoff = self.config.reconnect_backoff
        while not self.stop.is_set():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                await self._seed_windows()
                self.connected = True
                while not self.stop.is_set():
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    try:
                        data = orjson.loads(message["data"])
                        self.state.add_windows(data["windows"], time.time())
                        self._fresh.set()
                    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                        log.warning("live: malformed message on %s: %s", self.channel, exc)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as e:
                self.connected = False
                log.warning("live: Redis subscription lost (%s); retrying", e)
                await self._pause(backoff)
            finally:
                self.connected = False
                with contextlib.suppress(Exception):  # the connection may be gone already
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _alerts_loop(self) -> None:
        """Follow the alerts stream; an entry that does not parse is skipped (and logged, at
        most every ``SKIP_LOG_EVERY`` seconds), and no error ends this task."""
        stream = self.settings.streams.alerts
        last: str | None = None
        while not self.stop.is_set():
            try:
                if last is None:
                    newest: Any = await self.redis.xrevrange(stream, count=1)
                    last = newest[0][0].decode() if newest else "0-0"
                    await self._resync_alerts()
                replies: Any = await self.redis.xread({stream: last}, count=500, block=1000)
                for _, entries in replies:
                    for entry_id, fields in entries:
                        last = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                        try:
                            transition = AlertTransition.from_fields(fields or {})
                        except ContractError as exc:
                            self._skip(last, exc)
                            continue
                        self.state.apply_transition(transition, time.time())
            except (
                redis.exceptions.ConnectionError,
                redis.exceptions.TimeoutError,
                OSError,
                PoolTimeout,
                psycopg.OperationalError,
            ) as e:
                # the resync reads the database: an outage there must not end this task
                log.warning("live: reading %s failed (%s); retrying", stream, e)
                last = None
                await self._pause(self.config.reconnect_backoff)
            except asyncio.CancelledError:
                raise
            except Exception:
                # a bug or an entry we did not foresee: the live view goes on without it
                log.exception("live: following %s failed; going on after the last entry", stream)
                await self._pause(self.config.reconnect_backoff)

    def _skip(self, entry_id: str, exc: ContractError) -> None:
        self.skipped_alerts += 1
        now = time.monotonic()
        if now - self._skip_logged_at >= SKIP_LOG_EVERY:
            log.warning(
                "live: skipping alert entry %s: %s (%d skipped so far)",
                entry_id,
                exc,
                self.skipped_alerts,
            )
            self._skip_logged_at = now

    async def _resync_alerts(self) -> None:
        async with self.pool.connection() as conn:
            _, rows = await alert_store.list_alerts(conn, tenant=None, active_only=True, limit=1000)
        self.state.replace_alerts(rows, time.time(), keep_s=self.config.alert_resync)

    async def _refresh_revenue(self, now: float) -> None:
        width = int(self.state.width)
        # Older than this, windows are closed and written (60 s of hash life, minus margin).
        cutoff = math.floor((now - 50) / width) * width
        day_start = utc_day_start(now)
        end = max(cutoff, day_start)
        sums: dict[tuple[str, str], float] = {}
        if end > day_start:
            async with self.pool.connection() as conn:
                spans = store.plan_spans(day_start, end, await store.latest_buckets(conn))
                rows = await store.totals(
                    conn, store.SeriesFilter(types=("revenue",)), spans, by=("tenant", "currency")
                )
            for row in rows:
                key = (str(row.key[0] or ""), str(row.key[1] or ""))
                sums[key] = sums.get(key, 0.0) + row.sum
        self.state.revenue = (day_start, float(end), sums)

    async def _db_loop(self) -> None:
        """Closed revenue of today and the alert table, re-read on their own clocks."""
        next_revenue = next_alerts = 0.0
        backoff = self.config.reconnect_backoff
        while not self.stop.is_set():
            now = time.monotonic()
            try:
                if now >= next_revenue:
                    await self._refresh_revenue(time.time())
                    next_revenue = now + self.config.revenue_refresh
                if now >= next_alerts:
                    await self._resync_alerts()
                    next_alerts = now + self.config.alert_resync
                backoff = self.config.reconnect_backoff
            except (PoolTimeout, psycopg.OperationalError) as exc:
                # an error can come back at once (a closed pool, a dropped database): back off
                # exponentially rather than retrying every 50 ms
                log.warning("live: database unavailable (%s); retrying in %.1f s", exc, backoff)
                await self._pause(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            await self._pause(min(next_revenue, next_alerts) - time.monotonic())

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), max(seconds, 0.05))

    # -- sessions ------------------------------------------------------------------------

    async def secret(self) -> bytes:
        """The session signing secret shared by every API process (created once, in Redis)."""
        if self._secret is None:
            key = self.settings.streams.key("live", "session_secret")
            await self.redis.set(key, secrets.token_hex(32), nx=True)
            value = await self.redis.get(key)
            if value is None:
                raise Unauthorized("session secret unavailable; log in again", "session_invalid")
            self._secret = value if isinstance(value, bytes) else str(value).encode()
        return self._secret


LIVE_CONFIG = web.AppKey("live_config", LiveConfig)
LIVE_HUB = web.AppKey("live_hub", LiveHub)


async def live_ctx(app: web.Application) -> AsyncIterator[None]:
    """The hub of this process: started with the app, its streams ended at shutdown."""
    hub = LiveHub(app[SETTINGS], app[REDIS], app[POOL], app.get(LIVE_CONFIG, LiveConfig()))
    app[LIVE_HUB] = hub
    hub.start()
    yield
    await hub.close()


async def live_shutdown(app: web.Application) -> None:
    """End the open streams before aiohttp waits for handlers to finish."""
    hub = app.get(LIVE_HUB)
    if hub is not None:
        await hub.close()
