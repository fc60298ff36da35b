"""``timed`` as async and sync context manager and as decorator, against the real Redis."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio

from qesmon.contract import Event
from qesmon.errors import ContractError
from qesmon.sdk import MetricsCollector, timed
from qesmon.settings import Settings

from .conftest import stream_events


async def recorded(
    metrics: MetricsCollector, aredis: redis.asyncio.Redis, settings: Settings
) -> list[Event]:
    await metrics.close()
    return await stream_events(aredis, settings.streams.metrics[0])


async def test_blocks_are_timed_and_failures_recorded_then_re_raised(
    collector: MetricsCollector, aredis: redis.asyncio.Redis, settings: Settings
) -> None:
    async with timed(collector, "db_query", operation="select"):
        await asyncio.sleep(0.02)  # the work being timed
    with pytest.raises(KeyError), timed(collector, "external_api", provider="tsa"):
        time.sleep(0.01)
        raise KeyError("no token")
    with pytest.raises(ValueError):
        async with timed(collector, "db_query", operation="insert"):
            raise ValueError("constraint")
    first, second, third = await recorded(collector, aredis, settings)
    assert (first.name, first.type, first.labels, first.success) == (
        "db_query",
        "performance",
        (("operation", "select"),),
        True,
    )
    assert 0.02 <= first.value < 0.5  # seconds (a millisecond value would be >= 20)
    assert (second.name, second.labels, second.success) == (
        "external_api",
        (("provider", "tsa"),),
        False,
    )
    assert 0.01 <= second.value < 0.5
    assert (third.labels, third.success) == ((("operation", "insert"),), False)


async def test_decorated_functions_time_every_call_sync_and_async(
    collector: MetricsCollector, aredis: redis.asyncio.Redis, settings: Settings
) -> None:
    @timed(collector, "db_query", operation="load")
    async def load(x: int) -> int:
        if x < 0:
            raise LookupError(x)
        return x * 2

    @timed(collector, "external_api", provider="ocsp")
    def check(x: int) -> int:
        if x < 0:
            raise LookupError(x)
        return x + 1

    assert await asyncio.gather(load(1), load(2)) == [2, 4]
    assert check(1) == 2
    with pytest.raises(LookupError):
        await load(-1)
    with pytest.raises(LookupError):
        check(-1)
    assert load.__name__ == "load" and check.__name__ == "check"
    events = await recorded(collector, aredis, settings)
    assert [(e.name, e.success) for e in events] == [
        ("db_query", True),
        ("db_query", True),
        ("external_api", True),
        ("db_query", False),
        ("external_api", False),
    ]


def test_bad_operation_names_or_labels_fail_when_the_timer_is_made() -> None:
    metrics = MetricsCollector("redis://127.0.0.1:1/0")
    with pytest.raises(ContractError) as info:
        timed(metrics, "db query")
    assert info.value.field == "name"
    with pytest.raises(ContractError, match="labels"):
        timed(metrics, "db_query", **{"bad key": "x"})
