"""The aiohttp application: app factory, error middleware and ``main``; the top of ``api/``.

Shared resources live under typed :class:`aiohttp.web.AppKey`s, each created and closed in one
``cleanup_ctx`` generator (:mod:`api.resources`): the TimescaleDB pools, the Redis client, the
outbound HTTP session, the report cache, and the psutil resource monitor; the exporter's
snapshot refresher (:mod:`api.exporter`) and the live hub (:mod:`api.live`) keep theirs beside
them. This module assembles them and imports the rest of the package; nothing in it imports
this module back::

    app = create_app(settings)              # nothing connects until the app starts
    web.run_app(app, port=settings.api.port)

:func:`main` (``qesmon api``) serves the API on ``API_HOST:API_PORT`` and the Prometheus exporter
on ``PROMETHEUS_METRICS_HOST:PROMETHEUS_METRICS_PORT`` (loopback unless credentials guard it) in
the same process and stops cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Awaitable, Callable

import psycopg
import redis.exceptions
from aiohttp import web
from psycopg_pool import PoolTimeout

from api.auth import KeyCache
from api.exporter import create_exporter_app, exporter_ctx
from api.exporter_auth import ScrapeAuth
from api.live import add_live_routes, live_ctx, live_shutdown
from api.resources import (
    HOUR_CACHE,
    KEY_CACHE,
    SETTINGS,
    http_ctx,
    monitor_ctx,
    pool_ctx,
    redis_ctx,
    report_pool_ctx,
    reports_ctx,
)
from api.routes import add_routes, dashboard_document
from api.store import HourCache
from notifier.actions import InvalidChannelConfig, TooManyReceivers, UnknownReceiver
from qesmon.errors import ApiError, ChannelError
from qesmon.settings import Settings, is_loopback

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


class ServiceUnavailable(ApiError):
    """A backing service (TimescaleDB, Redis) did not answer; the request may be retried."""

    status = 503
    code = "unavailable"


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


#: the notifier's domain errors as HTTP answers (the first that matches)
_CHANNEL_ERRORS: tuple[tuple[type[ChannelError], tuple[int, str]], ...] = (
    (InvalidChannelConfig, (400, "invalid_channel_config")),
    (TooManyReceivers, (409, "too_many_receivers")),
    (UnknownReceiver, (404, "receiver_not_found")),
)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map every failure to ``{"error": {"code", "message"}}``; never show a stack trace.

    The one place errors become HTTP answers: an :class:`~qesmon.errors.ApiError` (an unknown
    alert, ``notifier.store.UnknownAlert``, is a ``NotFound``) by its own status and code; a
    ``ChannelError`` from the notifier's actions as :data:`_CHANNEL_ERRORS` says (400
    ``invalid_channel`` for a channel a test cannot use)."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except ChannelError as exc:
        status, code = next(
            (answer for kind, answer in _CHANNEL_ERRORS if isinstance(exc, kind)),
            (400, "invalid_channel"),
        )
        return error_response(status, code, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.reason
        if exc.status == 405:
            allowed = sorted(getattr(exc, "allowed_methods", ()) or ())
            message = f"method {request.method} is not allowed here (allowed: {', '.join(allowed)})"
        elif exc.status == 413:
            message = f"request body is larger than {MAX_BODY_BYTES} bytes"
        elif exc.status == 404:
            message = f"no such resource: {request.path[:200]}"
        response = error_response(exc.status, _HTTP_CODES.get(exc.status, "http_error"), message)
        for header in ("Allow",):
            if header in exc.headers:
                response.headers[header] = exc.headers[header]
        return response
    except (
        PoolTimeout,
        psycopg.OperationalError,
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
    ) as exc:
        log.warning("%s %s: backing service unavailable: %s", request.method, request.path, exc)
        return error_response(
            503, "unavailable", "a backing service (database or Redis) is unavailable; retry later"
        )
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, "internal_error", "internal error; it has been logged")


def create_app(settings: Settings, *, monitor: bool | None = None) -> web.Application:
    """Build the API application; ``monitor`` overrides ``settings.api.resource_monitor``."""
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY_BYTES)
    app[SETTINGS] = settings
    app[HOUR_CACHE] = HourCache(settle_seconds=settings.pipeline.allowed_lateness + 120.0)
    app[KEY_CACHE] = KeyCache()
    app.cleanup_ctx.extend(
        [pool_ctx, report_pool_ctx, redis_ctx, http_ctx, reports_ctx, exporter_ctx]
    )
    if settings.api.resource_monitor if monitor is None else monitor:
        app.cleanup_ctx.append(monitor_ctx)
    app.cleanup_ctx.append(live_ctx)
    app.on_shutdown.append(live_shutdown)
    add_routes(app)
    add_live_routes(app)
    return app


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run the API and the exporter until ``stop`` is set."""
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    exporter = web.AppRunner(create_exporter_app(app), access_log=None)
    await exporter.setup()
    try:
        await web.TCPSite(runner, settings.api.host, settings.api.port).start()
        await web.TCPSite(exporter, settings.api.metrics_host, settings.api.metrics_port).start()
        log.info(
            "API on http://%s:%d/api/v1/, exporter on http://%s:%d/metrics (%s)",
            settings.api.host,
            settings.api.port,
            settings.api.metrics_host,
            settings.api.metrics_port,
            _scrape_policy(settings),
        )
        warm = asyncio.create_task(_warm(app), name="warm-up")
        await stop.wait()
        log.info("stopping")
        warm.cancel()
    finally:
        await exporter.cleanup()
        await runner.cleanup()


def _scrape_policy(settings: Settings) -> str:
    """What a scrape needs, for the start-up log (a warning when nothing guards an exposed
    exporter: Settings.validate lets that through only with the explicit opt-out)."""
    auth = ScrapeAuth.from_settings(settings.api)
    if auth is not None:
        return f"scrapes need the {auth.schemes}"
    if is_loopback(settings.api.metrics_host):
        return "no credentials: loopback only"
    log.warning(
        "the exporter on %s serves every tenant's business series without credentials "
        "(PROMETHEUS_METRICS_ALLOW_UNAUTHENTICATED=true)",
        settings.api.metrics_host,
    )
    return "no credentials"


SHUTDOWN_GRACE = 4.0


def _exit_if_stuck(grace: float) -> None:
    """Leave the process after ``grace`` s even when the clean stop hangs.

    A clean stop waits for background tasks, and psycopg and the pool can each wait for a
    server that is gone; a daemon timer makes SIGTERM final whatever they do (a second
    SIGTERM or SIGINT leaves at once).
    """

    def leave() -> None:
        log.error("clean stop took more than %.0f s; exiting now", grace)
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(grace, leave)
    timer.daemon = True
    timer.start()


async def _warm(app: web.Application) -> None:
    """Compute the default dashboard once in the background, so the first reader finds the
    merged hours cached (only in a served process: a test's app starts before its data)."""
    try:
        await dashboard_document(app, None, 7)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning("warm-up of the dashboard failed: %s: %s", type(exc).__name__, exc)


def main(settings: Settings) -> int:
    """``qesmon api``: serve until SIGTERM or SIGINT, then close everything and return 0.

    The stop is bounded: after :data:`SHUTDOWN_GRACE` s (a database that vanished can hold
    connections and tasks), or on a second signal, the process exits anyway.
    """

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if stop.is_set():
                log.error("second stop signal; exiting now")
                os._exit(1)
            stop.set()
            _exit_if_stuck(SHUTDOWN_GRACE)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        await serve(settings, stop)

    asyncio.run(run())
    return 0
