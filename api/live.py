"""The live dashboard: ``GET /live`` (the page) and ``GET /api/v1/metrics/stream`` (its feed).

The pipeline publishes the running aggregates of its open windows on ``<prefix>:live`` every
250 ms (:mod:`pipeline.live`). One :class:`LiveHub` per API process holds a single Redis
subscription, keeps the windows of the last few minutes in memory, follows the alerts (the
``<prefix>:alerts`` stream, and the ``alerts`` table for what the stream does not carry, such
as a manual resolve; an entry that does not parse is skipped and counted, the notifier parks
it) and, every ``tick``, turns them into one snapshot per distinct filter and
hands it to every subscriber with that filter::

    event: snapshot
    data: {"at": ..., "requests": {"rate", "error_pct", "p95_s", "count"}, "revenue_today":
           {"EUR": 123.0}, "alerts": [...], "tenants": [...], "services": [...], "stale": false}

A subscriber gets ``event: history`` first (one point per closed window still in memory, for
the charts), then a snapshot per tick, and a ``: heartbeat`` comment when the hub has sent
nothing for ``heartbeat`` seconds. Each subscriber has a bounded queue: one that cannot keep
up (its queue is full) is disconnected, so a slow client never slows the others. Its browser
reconnects by itself (EventSource).

Definitions (what the numbers mean):

* request rate: ``http_request`` events per second over the current and the previous base
  window (a sliding 10-20 s view); error rate: their ``success=false`` share in percent;
* p95 latency: the highest p95 of any ``http_request`` series (endpoint, method, status) in
  the newest window that has requests. The live feed carries per-series percentiles, not
  sketches, and percentiles do not add up, so this is "the slowest endpoint's p95", not a p95
  over all requests;
* revenue today (UTC day): the ``revenue``-type rollups already closed in TimescaleDB (cached,
  refreshed every ``revenue_refresh`` s) plus the live windows newer than the cached cut-off,
  per ``currency`` label;
* active alerts: pending and firing.

Filters: ``tenant_id`` (a tenant-scoped key gets its own tenant, and 403 for another one) and
``service`` (the ``service`` label; it narrows requests and alerts, not revenue, which has no
service).

Auth: API clients send ``Authorization: Bearer <key>``. The browser cannot send headers with
EventSource, so the page posts the key once to ``POST /live/session``, which answers with an
HttpOnly, SameSite=Strict cookie holding a signed, expiring session token (key id + expiry,
HMAC-SHA256 with a secret kept in Redis so that every API process and a restarted one accept
it). The key itself never appears in a URL, a cookie or a log. Each stream request checks the
key behind the token again (a revoked key loses the page within ``KeyCache.ttl``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import math
import secrets
import socket
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
import redis.asyncio as aioredis
import redis.exceptions
from aiohttp import web
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from api import alerts as alert_store
from api import params, store
from api.app import KEYS, POOL, REDIS, SETTINGS
from api.auth import KeyCache, authenticate, scoped_tenant
from api.keys import Principal
from qesmon import vocabulary
from qesmon.alerts import AlertState, AlertTransition
from qesmon.errors import BadRequest, ContractError, Unauthorized
from qesmon.settings import Settings

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
STREAM_PATH = "/api/v1/metrics/stream"
COOKIE = "qes_live"
MAX_LIST = 200
#: a bad alert entry is logged at most this often (seconds)
SKIP_LOG_EVERY = 10.0
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


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


# -- what the hub holds ----------------------------------------------------------------------

SeriesKey = tuple[str, str, str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True, slots=True)
class LiveFilter:
    """What one subscriber sees: a tenant (or all), a service (or all).

    ``restricted``: the tenant comes from the key, so the tenant list shows that one only.
    """

    tenant: str | None = None
    service: str | None = None
    restricted: bool = False

    def series(self, w: dict[str, Any]) -> bool:
        if self.tenant is not None and (w.get("tenant") or "") != self.tenant:
            return False
        return self.service is None or w["labels"].get("service") == self.service

    def alert(self, a: dict[str, Any]) -> bool:
        if self.tenant is not None and (a.get("tenant_id") or "") != self.tenant:
            return False
        return self.service is None or (a.get("labels") or {}).get("service") == self.service


def series_key(w: dict[str, Any]) -> SeriesKey:
    return (w["name"], w["type"], w.get("tenant") or "", tuple(sorted(w["labels"].items())))


@dataclass
class LiveState:
    """The open and recent windows per start, the active alerts, the closed revenue of today.

    Pure data and arithmetic: fed by :class:`LiveHub`, read by :meth:`snapshot`.
    """

    history_s: float = 300.0
    width: float = 10.0
    windows: dict[float, dict[SeriesKey, dict[str, Any]]] = field(default_factory=dict)
    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: when each alert was last set from the stream (a DB resync keeps newer ones)
    alert_seen: dict[str, float] = field(default_factory=dict)
    #: closed revenue rollups of the day: (day start, cut-off, {(tenant, currency): sum})
    revenue: tuple[float, float, dict[tuple[str, str], float]] = (0.0, 0.0, {})
    updated_at: float = 0.0

    def add_windows(self, windows: Iterable[dict[str, Any]], now: float) -> None:
        for w in windows:
            start = float(w["start"])
            self.width = float(w.get("width_s") or self.width)
            self.windows.setdefault(start, {})[series_key(w)] = w
        self.updated_at = now

    def prune(self, now: float) -> None:
        horizon = now - self.history_s - self.width
        for start in [s for s in self.windows if s < horizon]:
            del self.windows[start]

    def apply_transition(self, t: AlertTransition, now: float) -> None:
        if t.to_state in (AlertState.RESOLVED, AlertState.INACTIVE):
            self.alerts.pop(t.fingerprint, None)
        else:
            previous = self.alerts.get(t.fingerprint, {})
            self.alerts[t.fingerprint] = {
                "fingerprint": t.fingerprint,
                "rule_id": t.rule_id,
                "rule_name": t.rule_name,
                "severity": t.severity.value,
                "state": t.to_state.value,
                "tenant_id": t.tenant or None,
                "labels": dict(t.labels),
                "summary": t.annotations.get("summary", ""),
                "value": t.value,
                "since": previous.get("since", t.at),
            }
        self.alert_seen[t.fingerprint] = now

    def replace_alerts(self, rows: list[dict[str, Any]], now: float, keep_s: float) -> None:
        """Take the table's open alerts; keep what the stream changed in the last ``keep_s``."""
        fresh: dict[str, dict[str, Any]] = {}
        for row in rows:
            fresh[row["fingerprint"]] = {
                "fingerprint": row["fingerprint"],
                "rule_id": row["rule_id"],
                "rule_name": row["rule_name"],
                "severity": row["severity"],
                "state": row["state"],
                "tenant_id": row["tenant_id"],
                "labels": row["labels"] or {},
                "summary": (row["annotations"] or {}).get("summary", ""),
                "value": row["value"],
                "since": _unix(row["fired_at"] or row["started_at"]),
            }
        for fp, seen in list(self.alert_seen.items()):
            if now - seen < keep_s:
                if fp in self.alerts:
                    fresh[fp] = self.alerts[fp]
                else:
                    fresh.pop(fp, None)
            else:
                del self.alert_seen[fp]
        self.alerts = fresh

    # -- reading -------------------------------------------------------------------------

    def _requests(self, flt: LiveFilter, starts: list[float]) -> list[dict[str, Any]]:
        out = []
        for start in starts:
            for w in self.windows.get(start, {}).values():
                if w["name"] == vocabulary.HTTP_REQUEST and flt.series(w):
                    out.append(w)
        return out

    def requests_now(self, flt: LiveFilter, now: float) -> dict[str, Any]:
        width = self.width
        current = math.floor(now / width) * width
        starts = sorted(s for s in self.windows if s >= current - width)
        ws = self._requests(flt, starts)
        count = sum(int(w["count"]) for w in ws)
        errors = sum(int(w["errors"]) for w in ws)
        elapsed = max(now - (current - width), width)
        p95: float | None = None
        for start in reversed(starts):
            values = [
                float(w["p95"])
                for w in self._requests(flt, [start])
                if w.get("p95") is not None and w["count"]
            ]
            if values:
                p95 = max(values)
                break
        return {
            "rate": count / elapsed,
            "error_pct": errors / count * 100.0 if count else 0.0,
            "p95_s": p95,
            "count": count,
        }

    def history(self, flt: LiveFilter, now: float) -> list[dict[str, Any]]:
        """One point per closed window in memory (oldest first), for the charts."""
        width = self.width
        current = math.floor(now / width) * width
        points = []
        for start in sorted(s for s in self.windows if s < current):
            ws = self._requests(flt, [start])
            count = sum(int(w["count"]) for w in ws)
            errors = sum(int(w["errors"]) for w in ws)
            p95s = [float(w["p95"]) for w in ws if w.get("p95") is not None and w["count"]]
            points.append(
                {
                    "at": start + width,
                    "rate": count / width,
                    "error_pct": errors / count * 100.0 if count else 0.0,
                    "p95_s": max(p95s) if p95s else None,
                }
            )
        return points

    def revenue_today(self, flt: LiveFilter, now: float) -> dict[str, float]:
        day_start, cutoff, closed = self.revenue
        today = _day_start(now)
        if day_start != today:  # the cache is from yesterday: the live part only
            closed, cutoff = {}, today
        out: dict[str, float] = {}
        for (tenant, currency), amount in closed.items():
            if flt.tenant is None or tenant == flt.tenant:
                out[currency] = out.get(currency, 0.0) + amount
        for start, ws in self.windows.items():
            if start < cutoff:
                continue
            for w in ws.values():
                if w["type"] == "revenue" and (
                    flt.tenant is None or (w.get("tenant") or "") == flt.tenant
                ):
                    currency = w["labels"].get("currency", "")
                    out[currency] = out.get(currency, 0.0) + float(w["sum"])
        return {k: round(v, 6) for k, v in sorted(out.items())}

    def snapshot(self, flt: LiveFilter, now: float, stale: bool) -> dict[str, Any]:
        tenants: set[str] = set()
        services: set[str] = set()
        for ws in self.windows.values():
            for w in ws.values():
                tenant = w.get("tenant") or ""
                if tenant:
                    tenants.add(tenant)
                service = w["labels"].get("service")
                if service and (flt.tenant is None or tenant == flt.tenant):
                    services.add(service)
        if flt.restricted:
            tenants = {flt.tenant} if flt.tenant else set()
        alerts = sorted(
            (a for a in self.alerts.values() if flt.alert(a)),
            key=lambda a: (_SEVERITY_RANK.get(a["severity"], 3), -float(a["since"] or 0)),
        )
        return {
            "at": now,
            "tenant_id": flt.tenant,
            "service": flt.service,
            "requests": self.requests_now(flt, now),
            "revenue_today": self.revenue_today(flt, now),
            "alerts": alerts[:MAX_LIST],
            "active_alerts": len(alerts),
            "tenants": sorted(tenants)[:MAX_LIST],
            "services": sorted(services)[:MAX_LIST],
            "stale": stale,
        }


_SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}


def _unix(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(str(value)).timestamp()


def _day_start(now: float) -> float:
    return math.floor(now / 86400) * 86400.0


def sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


# -- the hub ---------------------------------------------------------------------------------

_CLOSE = b""


class Subscriber:
    """One open stream: its filter and its bounded queue of encoded SSE messages."""

    def __init__(self, flt: LiveFilter, queue_size: int, transport: asyncio.BaseTransport | None):
        self.filter = flt
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(queue_size)
        self.transport = transport
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
        self.state = LiveState(history_s=config.history_s, width=float(settings.window_seconds))
        self.subscribers: set[Subscriber] = set()
        self.channel = settings.streams.key("live")
        self.stop = asyncio.Event()
        self.connected = False
        self.dropped_total = 0
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
        from api.exporter import stop_task

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

    def subscribe(self, flt: LiveFilter, transport: asyncio.BaseTransport | None) -> Subscriber:
        sub = Subscriber(flt, self.config.queue_size, transport)
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
        day_start = _day_start(now)
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


# -- session tokens --------------------------------------------------------------------------


def sign_session(secret: bytes, key_id: int, expires: float) -> str:
    body = f"{key_id}.{int(expires)}"
    mac = hmac.new(secret, body.encode(), hashlib.sha256).digest()
    return f"v1.{body}." + base64.urlsafe_b64encode(mac).decode().rstrip("=")


def verify_session(secret: bytes, token: str, now: float) -> int:
    """The key id of a valid, unexpired token; Unauthorized otherwise."""
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != "v1" or not parts[1].isdigit() or not parts[2].isdigit():
        raise Unauthorized("session is not valid; log in again", "session_invalid")
    expected = sign_session(secret, int(parts[1]), int(parts[2]))
    if not hmac.compare_digest(expected, token):
        raise Unauthorized("session is not valid; log in again", "session_invalid")
    if int(parts[2]) < now:
        raise Unauthorized("session has expired; log in again", "session_expired")
    return int(parts[1])


async def _principal_by_id(
    pool: AsyncConnectionPool[Any], cache: KeyCache, key_id: int
) -> Principal:
    cache_key = f"id:{key_id}"
    known, principal = cache.get(cache_key)
    if not known:
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT id, name, role, tenant_id FROM api_keys "
                "WHERE id = %s AND revoked_at IS NULL",
                (key_id,),
            )
            row = await cur.fetchone()
        principal = None if row is None else Principal(int(row[0]), row[1], row[2], row[3])
        cache.put(cache_key, principal)
    if principal is None:
        raise Unauthorized(
            "the API key of this session was revoked; log in again", "session_invalid"
        )
    return principal


async def live_principal(request: web.Request) -> Principal:
    """The caller: ``Authorization: Bearer`` when sent, else the session cookie."""
    app = request.app
    header = request.headers.get("Authorization")
    if header is not None:
        return await authenticate(header, app[POOL], app[KEYS])
    token = request.cookies.get(COOKIE)
    if not token:
        raise Unauthorized(
            "log in at /live, or send 'Authorization: Bearer <key>'", "missing_api_key"
        )
    key_id = verify_session(await app[LIVE_HUB].secret(), token, time.time())
    return await _principal_by_id(app[POOL], app[KEYS], key_id)


def _who(principal: Principal) -> dict[str, Any]:
    return {"role": principal.role, "tenant_id": principal.tenant, "name": principal.name}


# -- handlers --------------------------------------------------------------------------------


async def get_page(request: web.Request) -> web.StreamResponse:
    response = web.FileResponse(STATIC_DIR / "index.html")
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["Cache-Control"] = "no-cache"
    return response


async def post_session(request: web.Request) -> web.StreamResponse:
    """Log in: take an API key once (JSON ``{"key": ...}``), answer with the session cookie."""
    if request.content_type != "application/json":
        raise BadRequest("body: send JSON with Content-Type: application/json", "invalid_body")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise BadRequest("body: not valid JSON", "invalid_body") from None
    key = body.get("key") if isinstance(body, dict) else None
    if not isinstance(key, str) or not key.strip():
        raise BadRequest("key: required, an API key such as qes_...", "invalid_body")
    app = request.app
    principal = await authenticate(f"Bearer {key.strip()}", app[POOL], app[KEYS])
    ttl = app[LIVE_CONFIG].session_ttl
    token = sign_session(await app[LIVE_HUB].secret(), principal.key_id, time.time() + ttl)
    response = web.json_response(_who(principal))
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(ttl),
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    return response


async def get_session(request: web.Request) -> web.StreamResponse:
    return web.json_response(_who(await live_principal(request)))


async def delete_session(request: web.Request) -> web.StreamResponse:
    response = web.json_response({"logged_out": True})
    response.del_cookie(COOKIE, path="/")
    return response


async def get_stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: history, then a snapshot per tick, for the caller's filter."""
    principal = await live_principal(request)
    q = request.query
    params.only_known(q, ("tenant_id", "service"))
    tenant = scoped_tenant(principal, params.text(q, "tenant_id"))
    flt = LiveFilter(tenant, params.text(q, "service"), restricted=principal.tenant is not None)
    app = request.app
    hub = app[LIVE_HUB]
    config = app[LIVE_CONFIG]
    transport = request.transport
    if transport is not None:
        # Bound what a stalled client can hold in buffers; past that its queue fills up.
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, config.send_buffer)
        transport.set_write_buffer_limits(high=config.send_buffer)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    sub = hub.subscribe(flt, transport)
    try:
        await response.write(hub.greeting(flt, time.time()))
        while not sub.dropped:
            try:
                message = await asyncio.wait_for(sub.queue.get(), config.heartbeat)
            except TimeoutError:
                message = b": heartbeat\n\n"
            if not message:  # _CLOSE: the hub is shutting down
                break
            await response.write(message)
    except (ConnectionResetError, ConnectionError):
        pass  # the client left, or was dropped for being slow
    finally:
        hub.unsubscribe(sub)
    return response


# -- wiring ----------------------------------------------------------------------------------


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


def add_live_routes(app: web.Application) -> None:
    if LIVE_CONFIG not in app:
        app[LIVE_CONFIG] = LiveConfig()
    app.router.add_get("/live", get_page)
    app.router.add_get("/live/session", get_session)
    app.router.add_post("/live/session", post_session)
    app.router.add_delete("/live/session", delete_session)
    app.router.add_get(STREAM_PATH, get_stream)
    app.router.add_static("/live/static", STATIC_DIR, append_version=False)
