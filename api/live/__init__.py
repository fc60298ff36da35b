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
key behind the token again (a revoked key loses the page within ``KeyCache.ttl``). One key holds
at most ``API_LIVE_STREAMS_PER_KEY`` streams at once per process, cookie and header alike; one
more is refused with 429 ``too_many_streams`` (:class:`~api.live.hub.TooManyStreams`).

Modules, one idea each: :mod:`.state` (what the hub holds and the snapshot read from it,
pure), :mod:`.hub` (the Redis subscription and the fan-out, one per process),
:mod:`.sessions` (the page's signed session cookie), :mod:`.routes` (the HTTP handlers).
"""

from __future__ import annotations

from api.live.hub import (
    LIVE_CONFIG,
    LIVE_HUB,
    LiveConfig,
    LiveHub,
    Subscriber,
    TooManyStreams,
    live_ctx,
    live_shutdown,
    sse,
)
from api.live.routes import STREAM_PATH, add_live_routes
from api.live.sessions import COOKIE, live_principal, sign_session, verify_session
from api.live.state import LiveFilter, LiveState

__all__ = [
    "COOKIE",
    "LIVE_CONFIG",
    "LIVE_HUB",
    "STREAM_PATH",
    "LiveConfig",
    "LiveFilter",
    "LiveHub",
    "LiveState",
    "Subscriber",
    "TooManyStreams",
    "add_live_routes",
    "live_ctx",
    "live_principal",
    "live_shutdown",
    "sign_session",
    "sse",
    "verify_session",
]
