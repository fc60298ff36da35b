"""The aiohttp middleware, served on a loopback port and called with a real client."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
import redis.asyncio
from aiohttp import web

from qesmon.contract import Event
from qesmon.sdk import MetricsCollector, metrics_middleware
from qesmon.sdk.middleware import REQUEST_ID
from qesmon.settings import Settings

from .conftest import stream_events


async def get_doc(request: web.Request) -> web.Response:
    return web.json_response({"id": request.match_info["id"], "rid": request[REQUEST_ID]})


async def create_doc(request: web.Request) -> web.Response:
    return web.json_response({}, status=201)


async def boom(request: web.Request) -> web.Response:
    raise RuntimeError("handler failed")


async def gone(request: web.Request) -> web.Response:
    raise web.HTTPGone()


SLOW = 0.3  # seconds the /slow handler takes; the middleware's slow_threshold is below it
THRESHOLD = 0.2


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(SLOW)
    return web.json_response({})


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[tuple[str, MetricsCollector]]:
    metrics = MetricsCollector(settings.redis_url, streams=settings.streams, flush_interval=0.01)
    app = web.Application(
        middlewares=[
            metrics_middleware(
                metrics,
                service="signing-api",
                slow_threshold=THRESHOLD,
                tenant_of=lambda request: request.headers.get("X-Tenant"),
            ),
        ]
    )
    app.router.add_get("/docs/{id}", get_doc)
    app.router.add_post("/docs", create_doc)
    app.router.add_get("/boom", boom)
    app.router.add_get("/gone", gone)
    app.router.add_get("/slow", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", metrics
    await runner.cleanup()
    await metrics.close()


async def requests_recorded(
    served: tuple[str, MetricsCollector], aredis: redis.asyncio.Redis, settings: Settings
) -> list[Event]:
    await served[1].close()
    return await stream_events(aredis, settings.streams.metrics[0])


async def test_every_request_is_an_http_request_event_with_the_route_not_the_path(
    served: tuple[str, MetricsCollector], aredis: redis.asyncio.Redis, settings: Settings
) -> None:
    base, _ = served
    async with aiohttp.ClientSession() as http:
        for doc in ("a1", "b2", "c3"):
            async with http.get(f"{base}/docs/{doc}", headers={"X-Tenant": "t-7"}) as resp:
                assert resp.status == 200
        async with http.post(f"{base}/docs") as resp:
            assert resp.status == 201
        async with http.get(f"{base}/no/such/page") as resp:
            assert resp.status == 404
        async with http.get(f"{base}/gone") as resp:
            assert resp.status == 410
        async with http.request("TRACE", f"{base}/docs/x") as resp:
            assert resp.status == 405
    events = await requests_recorded(served, aredis, settings)
    seen = [(e.name, e.type, dict(e.labels), e.success, e.tenant) for e in events]
    route = {"endpoint": "/docs/{id}", "method": "GET", "status": "200", "service": "signing-api"}
    assert seen == [
        ("http_request", "performance", route, True, "t-7"),
        ("http_request", "performance", route, True, "t-7"),
        ("http_request", "performance", route, True, "t-7"),
        (
            "http_request",
            "performance",
            {**route, "endpoint": "/docs", "method": "POST", "status": "201"},
            True,
            "",
        ),
        (
            "http_request",
            "performance",
            {**route, "endpoint": "unmatched", "status": "404"},
            True,
            "",
        ),
        ("http_request", "performance", {**route, "endpoint": "/gone", "status": "410"}, True, ""),
        (
            "http_request",
            "performance",
            {**route, "endpoint": "unmatched", "method": "OTHER", "status": "405"},
            True,
            "",
        ),
    ]
    assert all(0 < e.value < 5 for e in events)


async def test_the_duration_is_in_seconds_and_slow_requests_are_logged(
    served: tuple[str, MetricsCollector],
    aredis: redis.asyncio.Redis,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    base, _ = served
    caplog.set_level(logging.WARNING, logger="qesmon.sdk.middleware")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/slow") as resp:
            assert resp.status == 200
            slow_id = resp.headers["X-Request-ID"]
        async with http.get(f"{base}/docs/1") as resp:
            fast_id = resp.headers["X-Request-ID"]
    slow_event, fast_event = await requests_recorded(served, aredis, settings)
    # seconds: a handler that sleeps 0.3 s is 0.3 (not 300, not 0.0003), plus the overhead
    # of one loopback request on a loaded machine
    assert SLOW <= slow_event.value < SLOW + 0.5, slow_event.value
    assert 0 < fast_event.value < THRESHOLD, fast_event.value
    logged = [r.getMessage() for r in caplog.records if r.name == "qesmon.sdk.middleware"]
    assert [m for m in logged if "slow request" in m] == [
        f"slow request: GET /slow -> 200 took {slow_event.value:.3f}s (request id {slow_id})"
    ]
    assert not [m for m in logged if fast_id in m]


async def test_an_exception_is_recorded_as_a_failed_500_and_answered_with_the_request_id(
    served: tuple[str, MetricsCollector],
    aredis: redis.asyncio.Redis,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    base, _ = served
    async with aiohttp.ClientSession() as http, http.get(f"{base}/boom") as resp:
        assert resp.status == 500
        rid = resp.headers["X-Request-ID"]
    assert str(uuid.UUID(rid)) == rid
    assert any(rid in r.getMessage() and r.exc_info for r in caplog.records)
    (event,) = await requests_recorded(served, aredis, settings)
    assert event.success is False
    assert dict(event.labels)["status"] == "500" and dict(event.labels)["endpoint"] == "/boom"


async def test_a_sane_incoming_request_id_is_kept_and_others_are_replaced(
    served: tuple[str, MetricsCollector],
) -> None:
    base, _ = served
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/docs/1", headers={"X-Request-ID": "trace-42.a:b"}) as resp:
            assert resp.headers["X-Request-ID"] == "trace-42.a:b"
            assert (await resp.json())["rid"] == "trace-42.a:b"
        ids = set()
        for bad in ("has space", "x" * 129, "ünïcode"):
            async with http.get(f"{base}/docs/1", headers={"X-Request-ID": bad}) as resp:
                rid = resp.headers["X-Request-ID"]
                assert rid != bad and str(uuid.UUID(rid)) == rid
                ids.add(rid)
        async with http.get(f"{base}/docs/1") as resp:
            ids.add(resp.headers["X-Request-ID"])
        async with http.get(f"{base}/gone") as resp:  # HTTP errors carry it too
            ids.add(resp.headers["X-Request-ID"])
        assert len(ids) == 5


def test_a_service_name_the_contract_refuses_fails_at_start_up() -> None:
    from qesmon.errors import ContractError

    metrics = MetricsCollector("redis://127.0.0.1:1/0")
    with pytest.raises(ContractError, match="labels"):
        metrics_middleware(metrics, service="x" * 2000)
    with pytest.raises(ValueError, match="slow_threshold"):
        metrics_middleware(metrics, service="api", slow_threshold=0)
