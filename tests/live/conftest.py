"""Fixtures for the live dashboard tests: an in-process API app with a fast live feed, and an
SSE reader."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient

from api.app import create_app
from api.live import LIVE_CONFIG, LiveConfig
from pipeline.live import LivePublisher
from qesmon.series import Series, WindowResult
from qesmon.settings import Settings
from qesmon.sketch import Agg
from tests.api.conftest import Keys, auth, keys

__all__ = ["Keys", "auth", "keys"]

FAST = LiveConfig(tick=0.05, heartbeat=5.0, alert_resync=0.5, revenue_refresh=0.5)


@pytest.fixture
def live_config() -> LiveConfig:
    return FAST


@pytest.fixture
def app(settings: Settings, live_config: LiveConfig) -> web.Application:
    app = create_app(settings, monitor=False)
    app[LIVE_CONFIG] = live_config
    return app


@pytest.fixture
async def client(aiohttp_client: Any, app: web.Application) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await aiohttp_client(app)
    return client


@pytest.fixture
def publisher(settings: Settings) -> Iterator[LivePublisher]:
    pub = LivePublisher(settings.redis_url, settings.key_prefix, interval=0.0)
    yield pub
    pub.client.close()


@dataclass
class Event:
    """What a test pushes into one live window."""

    name: str
    value: float
    tenant: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    success: bool = True
    type: str = "performance"


def windows(events: list[Event], start: float | None = None, width: int = 10) -> list[WindowResult]:
    """The running windows the pipeline would publish for ``events`` (all in one window)."""
    if start is None:
        start = float(int(time.time() // width) * width)
    aggs: dict[Series, Agg] = {}
    for e in events:
        series = Series(e.name, e.type, e.tenant, tuple(sorted(e.labels)))
        aggs.setdefault(series, Agg()).add(e.value, e.success, None)
    return [WindowResult(series=s, width_s=width, start=start, agg=a) for s, a in aggs.items()]


def http(
    tenant: str = "",
    service: str = "signing",
    *,
    ok: bool = True,
    seconds: float = 0.1,
    endpoint: str = "/sign",
) -> Event:
    labels = (
        ("endpoint", endpoint),
        ("method", "POST"),
        ("service", service),
        ("status", "200" if ok else "500"),
    )
    return Event("http_request", seconds, tenant, labels, ok)


class Sse:
    """Reads server-sent events from a streaming response."""

    def __init__(self, response: ClientResponse) -> None:
        self.response = response
        self.comments: list[str] = []

    async def next(self, timeout: float = 5.0) -> tuple[str, Any]:
        """The next event as (name, decoded data)."""
        event: str = "message"
        data: list[str] = []
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    raise EOFError("the stream ended")
                line = raw.decode().rstrip("\n")
                if line == "":
                    if data:
                        return event, orjson.loads("\n".join(data))
                    event = "message"
                    continue
                if line.startswith(":"):
                    self.comments.append(line)
                    continue
                name, _, value = line.partition(": ")
                if name == "event":
                    event = value
                elif name == "data":
                    data.append(value)

    async def snapshot_where(self, check: Any, timeout: float = 5.0) -> dict[str, Any]:
        """The first snapshot for which ``check(snapshot)`` is true."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                event, data = await self.next(deadline - time.monotonic())
            except TimeoutError:
                break
            if event == "snapshot":
                last = data
                if check(data):
                    return dict(data)
        raise AssertionError(f"no snapshot matched within {timeout} s; last one: {last}")


async def open_stream(client: TestClient[Any, Any], key: str | None = None, **query: str) -> Sse:
    headers = auth(key) if key else {}
    response = await client.get("/api/v1/metrics/stream", params=query, headers=headers)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/event-stream")
    return Sse(response)
