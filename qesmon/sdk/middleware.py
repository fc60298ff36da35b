"""aiohttp middleware: every request becomes an ``http_request`` performance event.

::

    metrics = MetricsCollector(redis_url)
    app = web.Application(middlewares=[metrics_middleware(metrics, service="signing-api")])

Put it first in ``middlewares`` so that it sees the final status of every request. Each
event has ``value`` = duration in seconds and labels ``endpoint`` (the route's canonical path,
``/docs/{id}``, never the raw path, so the number of series stays bounded; ``unmatched`` when
no route matched, as for 404 and 405), ``method`` (``OTHER`` for non-standard methods),
``status`` and ``service``; ``success`` is ``status < 500``.

Every response carries ``X-Request-ID``: the caller's own if it looks sane (1-128 visible
ASCII characters), else a new UUID4; handlers find it in ``request[REQUEST_ID]``. An
exception that escapes the handler is recorded as 500, logged with the request id, and
answered with a plain 500 that carries the id too.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from qesmon.errors import ContractError
from qesmon.sdk.collector import EventSink
from qesmon.sdk.events import http_request_event

__all__ = ["REQUEST_ID", "REQUEST_ID_HEADER", "metrics_middleware"]

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
#: where handlers find the request id: ``request[REQUEST_ID]``
REQUEST_ID = web.RequestKey("request_id", str)
_SANE_ID = re.compile(r"[!-~]{1,128}")  # visible ASCII, no spaces or control characters
# Methods outside this set are counted as OTHER, so a client cannot invent new series.
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
UNMATCHED = "unmatched"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


def request_id(request: web.Request) -> str:
    """The caller's ``X-Request-ID`` if it is sane, else a new UUID4."""
    incoming = request.headers.get(REQUEST_ID_HEADER)
    if incoming is not None and _SANE_ID.fullmatch(incoming):
        return incoming
    return str(uuid.uuid4())


def endpoint_of(request: web.Request) -> str:
    """The canonical path of the route that matched (``/docs/{id}``), or ``unmatched``."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


def metrics_middleware(
    collector: EventSink,
    *,
    service: str,
    slow_threshold: float = 1.0,
    tenant_of: Callable[[web.Request], str | None] | None = None,
) -> Middleware:
    """Build the middleware; requests slower than ``slow_threshold`` seconds are logged.

    ``tenant_of`` (optional) returns the tenant of a request after the handler ran (e.g.
    what an auth middleware stored on it), so events can be broken down by tenant.
    """
    if not slow_threshold > 0:
        raise ValueError(f"slow_threshold must be > 0 seconds, got {slow_threshold}")
    # fail at start-up, not per request, if the service name breaks the contract
    http_request_event(0.0, endpoint="/", method="GET", status=200, service=service)

    def record(request: web.Request, rid: str, status: int, started: float) -> None:
        duration = time.perf_counter() - started
        endpoint = endpoint_of(request)
        method = request.method if request.method in _METHODS else "OTHER"
        try:
            tenant = tenant_of(request) if tenant_of is not None else None
            collector.submit(
                http_request_event(
                    duration,
                    endpoint=endpoint,
                    method=method,
                    status=status,
                    service=service,
                    tenant_id=tenant,
                )
            )
        except ContractError as exc:  # e.g. an absurd route; never fail the request for it
            log.warning("request %s not recorded: %s", rid, exc)
        if duration >= slow_threshold:
            log.warning(
                "slow request: %s %s -> %d took %.3fs (request id %s)",
                method,
                endpoint,
                status,
                duration,
                rid,
            )

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        rid = request_id(request)
        request[REQUEST_ID] = rid
        started = time.perf_counter()
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers[REQUEST_ID_HEADER] = rid
            record(request, rid, exc.status, started)
            raise
        except Exception:
            record(request, rid, 500, started)
            log.exception(
                "unhandled error in %s %s (request id %s)", request.method, request.path, rid
            )
            raise web.HTTPInternalServerError(headers={REQUEST_ID_HEADER: rid}) from None
        if not response.prepared:  # a streamed response has sent its headers already
            response.headers[REQUEST_ID_HEADER] = rid
        record(request, rid, response.status, started)
        return response

    return middleware
