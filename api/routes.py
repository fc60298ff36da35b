"""The route table and its handlers: thin glue between HTTP, auth, validation and the reports.

:data:`ROUTES` is the single list of (method, path, handler, policy); ``api/openapi.py``
documents exactly these, each operation's policy as ``x-required-role`` (a test checks both
ways). A policy is ``public`` or the least role a key needs (:data:`api.auth.POLICIES`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from api import alerts as alert_store
from api import audit, business, dashboard, health, params, performance
from api.auth import authenticate, authorize, scoped_tenant
from api.keys import Principal
from api.openapi import document
from api.resources import (
    HOUR_CACHE,
    HTTP,
    KEY_CACHE,
    POOL,
    REDIS,
    REPORT_CACHE,
    SETTINGS,
    report_connection,
)
from notifier import actions
from notifier.receivers import receiver_id
from qesmon.contract import parse_entry
from qesmon.encode import encode_event
from qesmon.errors import BadRequest, NotFound

PRINCIPAL = web.RequestKey("principal", Principal)
PREFIX = "/api/v1/metrics"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    policy: str


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _principal(request: web.Request) -> Principal | None:
    return request.get(PRINCIPAL)


def _caller(request: web.Request) -> Principal:
    """The principal of a route that needs a key (set by the guard)."""
    return request[PRINCIPAL]


def _guard(handler: Handler, policy: str) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        if policy != "public":
            app = request.app
            principal = await authenticate(
                request.headers.get("Authorization"), app[POOL], app[KEY_CACHE]
            )
            authorize(principal, policy)
            request[PRINCIPAL] = principal
        return await handler(request)

    guarded.__name__ = handler.__name__
    return guarded


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise BadRequest("body: send JSON with Content-Type: application/json", "invalid_body")
    raw = await request.read()
    try:
        return params.body_object(orjson.loads(raw))
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body: not valid JSON ({exc})", "invalid_body") from None


# -- reports -------------------------------------------------------------------------------


def _document(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


async def get_dashboard(request: web.Request) -> web.StreamResponse:
    q = request.query
    params.only_known(q, ("days", "tenant_id"))
    days = params.integer(q, "days", 7, 1, 365)
    tenant = scoped_tenant(_principal(request), params.text(q, "tenant_id"))
    return _document(await dashboard_document(request.app, tenant, days))


async def dashboard_document(app: web.Application, tenant: str | None, days: int) -> bytes:
    """The dashboard as JSON bytes, from the report cache (computed once when missing)."""
    return await _report(
        app,
        ("dashboard", tenant, days),
        lambda conn: dashboard.build(
            conn,
            app[HOUR_CACHE],
            tenant=tenant,
            days=days,
            now=time.time(),
            slow_threshold=app[SETTINGS].api.slow_request_threshold,
        ),
    )


async def get_business_intelligence(request: web.Request) -> web.StreamResponse:
    q = request.query
    params.only_known(q, ("days", "tenant_id"))
    days = params.integer(q, "days", 30, 1, 365)
    tenant = scoped_tenant(_principal(request), params.text(q, "tenant_id"))
    app = request.app
    report = await _report(
        app,
        ("business", tenant, days),
        lambda conn: business.build(
            conn, app[HOUR_CACHE], tenant=tenant, days=days, now=time.time()
        ),
    )
    return _document(report)


async def get_performance(request: web.Request) -> web.StreamResponse:
    q = request.query
    params.only_known(q, ("hours", "tenant_id"))
    hours = params.integer(q, "hours", 24, 1, 24 * 31)
    tenant = scoped_tenant(_principal(request), params.text(q, "tenant_id"))
    app = request.app
    report = await _report(
        app,
        ("performance", tenant, hours),
        lambda conn: performance.build(
            conn,
            app[HOUR_CACHE],
            tenant=tenant,
            hours=hours,
            now=time.time(),
            slow_threshold=app[SETTINGS].api.slow_request_threshold,
        ),
    )
    return _document(report)


async def _report(
    app: web.Application,
    key: tuple[Any, ...],
    build: Callable[[Any], Awaitable[dict[str, Any]]],
) -> bytes:
    """A report as JSON bytes from the report cache, built when missing on a connection of
    the report pool, whose statement timeout bounds each query (504 past it)."""

    async def compute() -> bytes:
        async with report_connection(app) as conn:
            return orjson.dumps(await build(conn))

    return await app[REPORT_CACHE].get(key, compute)


# -- recording -----------------------------------------------------------------------------

_RECORD_FIELDS = {
    "name": "name",
    "value": "value",
    "type": "type",
    "metric_type": "type",
    "tenant": "tenant",
    "tenant_id": "tenant",
    "user": "user",
    "user_id": "user",
    "labels": "labels",
    "ts": "ts",
    "timestamp": "ts",
    "success": "success",
}


async def post_record(request: web.Request) -> web.StreamResponse:
    """Validate one event with the contract parser and XADD it like the SDK would."""
    params.only_known(request.query, ())
    body = await _body(request)
    event: dict[str, Any] = {}
    for key, value in body.items():
        target = _RECORD_FIELDS.get(key)
        if target is None:
            raise BadRequest(
                f"body: unknown field {key[:50]!r} (allowed: {', '.join(sorted(_RECORD_FIELDS))})",
                "invalid_event",
            )
        if target in event:
            raise BadRequest(f"body: {key!r} given twice (with its alias)", "invalid_event")
        if value is not None:
            event[target] = value
    for required in ("name", "value"):
        if required not in event:
            raise BadRequest(f"{required}: missing", "invalid_event")
    tenant_value = event.get("tenant")
    if tenant_value is not None and not isinstance(tenant_value, str):
        raise BadRequest("tenant: expected a string", "invalid_event")
    tenant = scoped_tenant(_principal(request), tenant_value)
    if tenant is not None:
        event["tenant"] = tenant
    if "success" in event and not isinstance(event["success"], bool):
        raise BadRequest("success: expected true or false", "invalid_event")
    fields = encode_event(event)
    _, rejected = parse_entry(f"{int(time.time() * 1000)}-0", fields)
    if rejected:
        raise BadRequest(rejected[0].error, "invalid_event")
    stream = request.app[SETTINGS].streams.shard_for(tenant)
    entry_id = await request.app[REDIS].xadd(stream, fields)  # type: ignore[arg-type]
    return _json(
        {
            "accepted": True,
            "stream": stream,
            "id": entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
        },
        status=202,
    )


# -- health --------------------------------------------------------------------------------


async def health_check(request: web.Request) -> web.StreamResponse:
    params.only_known(request.query, ())
    app = request.app
    healthy, report = await health.check(app[SETTINGS], app[REDIS], app[POOL])
    return _json(report, status=200 if healthy else 503)


# -- alerts --------------------------------------------------------------------------------


async def get_alerts(request: web.Request) -> web.StreamResponse:
    q = request.query
    params.only_known(q, ("active_only", "tenant_id", "limit"))
    active_only = params.boolean(q, "active_only", True)
    limit = params.integer(q, "limit", 100, 1, 1000)
    tenant = scoped_tenant(_principal(request), params.text(q, "tenant_id"))
    async with request.app[POOL].connection() as conn:
        total, items = await alert_store.list_alerts(
            conn, tenant=tenant, active_only=active_only, limit=limit
        )
    return _json({"tenant_id": tenant, "active_only": active_only, "count": total, "alerts": items})


async def _alert_for_action(request: web.Request) -> tuple[int, Principal]:
    params.only_known(request.query, ())
    alert_id = params.path_id(request.match_info["alert_id"], "alert_id")
    principal = _caller(request)
    async with request.app[POOL].connection() as conn:
        owner = await alert_store.alert_tenant(conn, alert_id)
    if owner is None or (principal.tenant is not None and owner != principal.tenant):
        raise NotFound(f"alert {alert_id} does not exist", "alert_not_found")
    return alert_id, principal


async def post_acknowledge(request: web.Request) -> web.StreamResponse:
    alert_id, principal = await _alert_for_action(request)
    app = request.app
    result = await actions.acknowledge_alert(
        app[POOL], app[SETTINGS], alert_id, principal.label, who=principal.who
    )
    return _json(result)


async def post_resolve(request: web.Request) -> web.StreamResponse:
    alert_id, principal = await _alert_for_action(request)
    app = request.app
    result = await actions.resolve_alert(
        app[POOL], app[SETTINGS], alert_id, principal.label, who=principal.who
    )
    return _json(result)


def _receiver_owner(request: web.Request, requested: Any) -> str:
    """Whose receiver a request is about: a tenant-scoped key's own tenant (403 for another),
    for a platform key the ``tenant_id`` asked for, else the platform ("")."""
    if requested is not None and not isinstance(requested, str):
        raise BadRequest("tenant_id: expected a string", "invalid_body")
    tenant = params.text({"tenant_id": requested} if requested else {}, "tenant_id")
    return scoped_tenant(_caller(request), tenant) or ""


async def post_configure(request: web.Request) -> web.StreamResponse:
    params.only_known(request.query, ())
    body = await _body(request)
    allowed = ("channel", "enabled", "config", "receiver", "tenant_id")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise BadRequest(
            f"body: unknown field {unknown[0][:50]!r} (allowed: {', '.join(allowed)})",
            "invalid_body",
        )
    channel = body.get("channel")
    if not isinstance(channel, str) or not channel:
        raise BadRequest("channel: required, a channel name such as 'slack'", "invalid_body")
    enabled = body.get("enabled", True)
    if not isinstance(enabled, bool):
        raise BadRequest("enabled: expected true or false", "invalid_body")
    config = body.get("config", {})
    if not isinstance(config, dict):
        raise BadRequest("config: expected a JSON object", "invalid_body")
    name = body.get("receiver")
    if name is not None and not isinstance(name, str):
        raise BadRequest("receiver: expected a string", "invalid_body")
    tenant = _receiver_owner(request, body.get("tenant_id"))
    app = request.app
    caller = _caller(request)
    result = await actions.configure_channel(
        app[POOL], app[SETTINGS], channel, enabled, config, tenant=tenant, name=name, who=caller.who
    )
    target = receiver_id(tenant, result["receiver"])
    await audit.record(app[POOL], caller, "configure", target, {"enabled": enabled})
    return _json(result)


async def post_test(request: web.Request) -> web.StreamResponse:
    q = request.query
    params.only_known(q, ("channel", "receiver", "tenant_id"))
    channel = params.text(q, "channel", max_len=50)
    if channel is None:
        raise BadRequest("channel: required, e.g. ?channel=slack", "invalid_parameter")
    name = params.text(q, "receiver", max_len=63)
    tenant = _receiver_owner(request, q.get("tenant_id"))
    app = request.app
    result = await actions.send_test(
        app[POOL], app[SETTINGS], app[HTTP], channel, tenant=tenant, name=name
    )
    target = receiver_id(tenant, result["receiver"])
    await audit.record(app[POOL], _caller(request), "test", target, {"ok": result["ok"]})
    return _json(result)


async def get_receivers(request: web.Request) -> web.StreamResponse:
    q = request.query
    params.only_known(q, ("tenant_id",))
    tenant = scoped_tenant(_caller(request), params.text(q, "tenant_id"))
    app = request.app
    items = await actions.list_channels(app[POOL], app[SETTINGS], tenant=tenant)
    return _json({"tenant_id": tenant, "count": len(items), "receivers": items})


async def delete_receiver(request: web.Request) -> web.StreamResponse:
    q = request.query
    params.only_known(q, ("tenant_id",))
    name = request.match_info["receiver"]
    tenant = _receiver_owner(request, q.get("tenant_id"))
    app = request.app
    await actions.delete_receiver(app[POOL], tenant, name)
    await audit.record(app[POOL], _caller(request), "delete", receiver_id(tenant, name), {})
    return _json({"receiver": name, "tenant_id": tenant or None, "deleted": True})


# -- the document ------------------------------------------------------------------------


async def get_openapi(request: web.Request) -> web.StreamResponse:
    return _json(document())


ROUTES: tuple[Route, ...] = (
    Route("GET", f"{PREFIX}/dashboard", get_dashboard, "viewer"),
    Route("GET", f"{PREFIX}/business-intelligence", get_business_intelligence, "viewer"),
    Route("GET", f"{PREFIX}/performance", get_performance, "viewer"),
    Route("POST", f"{PREFIX}/record", post_record, "admin"),
    Route("GET", f"{PREFIX}/health", health_check, "public"),
    Route("POST", f"{PREFIX}/health", health_check, "public"),
    Route("GET", f"{PREFIX}/alerts", get_alerts, "viewer"),
    Route("POST", f"{PREFIX}/alerts/{{alert_id}}/acknowledge", post_acknowledge, "responder"),
    Route("POST", f"{PREFIX}/alerts/{{alert_id}}/resolve", post_resolve, "responder"),
    Route("POST", f"{PREFIX}/alerts/configure", post_configure, "admin"),
    Route("POST", f"{PREFIX}/alerts/test", post_test, "admin"),
    Route("GET", f"{PREFIX}/alerts/receivers", get_receivers, "admin"),
    Route("DELETE", f"{PREFIX}/alerts/receivers/{{receiver}}", delete_receiver, "admin"),
    Route("GET", "/api/v1/openapi.json", get_openapi, "public"),
)


def add_routes(app: web.Application) -> None:
    for route in ROUTES:
        app.router.add_route(route.method, route.path, _guard(route.handler, route.policy))
