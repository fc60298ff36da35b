"""The OpenAPI document matches the routes, and the live API honours it (schemathesis)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import redis
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestClient
from schemathesis import checks

from api.app import create_app
from api.openapi import document
from api.routes import ROUTES
from qesmon.settings import Settings
from tests.api.conftest import Keys, load_events
from tests.api.workload import workload


def test_every_route_is_documented_and_every_documented_path_is_routed() -> None:
    routed = {(r.method.lower(), r.path) for r in ROUTES}
    documented = {(method, path) for path, ops in document()["paths"].items() for method in ops}
    assert routed == documented


def test_public_routes_are_documented_as_needing_no_security() -> None:
    doc = document()
    for route in ROUTES:
        op = doc["paths"][route.path][route.method.lower()]
        assert (op.get("security") == []) == (route.policy == "public"), route.path
        if route.policy != "public":
            assert "401" in op["responses"] and "403" in op["responses"], route.path


def test_each_operation_documents_the_role_its_route_needs_and_no_other() -> None:
    doc = document()
    documented = {
        (method, path): op.get("x-required-role", "public")
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
    }
    assert documented == {(r.method.lower(), r.path): r.policy for r in ROUTES}


async def test_the_document_is_served(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/api/v1/openapi.json")
    assert await resp.json() == document()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def live_api(settings: Settings) -> Iterator[str]:
    """The API on a real loopback port, served from its own thread and event loop."""
    port = _free_port()
    started = threading.Event()
    holder: dict[str, Any] = {}

    async def serve() -> None:
        holder["loop"] = asyncio.get_running_loop()
        holder["stop"] = stop = asyncio.Event()
        runner = web.AppRunner(create_app(settings, monitor=False))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        started.set()
        await stop.wait()
        await runner.cleanup()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    assert started.wait(30), "API did not start"
    yield f"http://127.0.0.1:{port}"
    holder["loop"].call_soon_threadsafe(holder["stop"].set)
    thread.join(30)


CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


def test_schemathesis_finds_no_500s_and_answers_match_the_schema(
    live_api: str, keys: Keys, settings: Settings, redis_client: redis.Redis
) -> None:
    load_events(settings, workload(time.time()))
    # healthy, so that health answers 200 (its 503 is by design, not a server error)
    for part in ("pipeline", "notifier"):
        redis_client.hset(settings.streams.key("health", part), "heartbeat", time.time() + 600)
    schema = schemathesis.openapi.from_dict(document())
    headers = {"Authorization": f"Bearer {keys.admin}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == len(ROUTES)
    for operation in operations:

        @hypothesis.settings(
            max_examples=15,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(hypothesis.HealthCheck),
            database=None,
        )
        @hypothesis.given(case=operation.as_strategy())
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=live_api, headers=headers, checks=CHECKS)

        check()
