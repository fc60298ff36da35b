"""The live page's HTTP handlers: the page, log-in and log-out, and the event stream."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from api import params
from api.auth import authenticate, scoped_tenant
from api.keys import Principal
from api.live.hub import LIVE_CONFIG, LIVE_HUB, LiveConfig
from api.live.sessions import COOKIE, live_principal, sign_session
from api.live.state import LiveFilter
from api.resources import KEY_CACHE, POOL
from qesmon.errors import BadRequest

STATIC_DIR = Path(__file__).parent.parent / "static"
STREAM_PATH = "/api/v1/metrics/stream"
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


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
    principal = await authenticate(f"Bearer {key.strip()}", app[POOL], app[KEY_CACHE])
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
    # before the answer starts, so that a key over its limit gets a JSON 429
    sub = hub.subscribe(flt, transport, principal.key_id)
    try:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
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


def add_live_routes(app: web.Application) -> None:
    if LIVE_CONFIG not in app:
        app[LIVE_CONFIG] = LiveConfig()
    app.router.add_get("/live", get_page)
    app.router.add_get("/live/session", get_session)
    app.router.add_post("/live/session", post_session)
    app.router.add_delete("/live/session", delete_session)
    app.router.add_get(STREAM_PATH, get_stream)
    app.router.add_static("/live/static", STATIC_DIR, append_version=False)
