"""Helpers for the SDK tests: read what landed in a stream, and a Redis we can stop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio

from qesmon.contract import Event, parse_entry
from qesmon.sdk import MetricsCollector
from qesmon.settings import Settings
from tests.support.faults import PrivateRedis


async def stream_events(client: redis.asyncio.Redis, stream: str) -> list[Event]:
    """Every event in ``stream``, parsed by the pipeline's parser, which must accept all."""
    events: list[Event] = []
    for entry_id, fields in await client.xrange(stream):
        parsed, rejections = parse_entry(entry_id, fields)
        assert rejections == [], rejections
        events.extend(parsed)
    return events


async def stream_values(redis_url: str, stream: str) -> list[float]:
    """The values of the events in ``stream`` on the server at ``redis_url``, in order."""
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        return [e.value for e in await stream_events(client, stream)]
    finally:
        await client.aclose()


async def wait_until(
    predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``predicate()`` (sync or async) until true, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A Redis that starts empty every time (no persistence), stopped after the test."""
    server = PrivateRedis(tmp_path, persistent=False)
    yield server
    server.stop()


@pytest.fixture
async def collector(settings: Settings) -> AsyncIterator[MetricsCollector]:
    """A collector on the test's own stream keys, flushing quickly."""
    c = MetricsCollector(settings.redis_url, streams=settings.streams, flush_interval=0.01)
    await c.start()
    yield c
    await c.close()
