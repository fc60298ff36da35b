"""MetricsCollector against the real Redis: format, batching, shards, outages, exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
import uuid
from collections import Counter

import pytest
import redis.asyncio

from qesmon.contract import Event
from qesmon.errors import ContractError
from qesmon.sdk import MetricsCollector, MetricType, SyncMetricsCollector
from qesmon.sdk.collector import WRITE_ROUND
from qesmon.settings import Settings, StreamKeys
from tests.support.faults import PrivateRedis, free_port

from .conftest import stream_events, stream_values, wait_until


def stream(settings: Settings) -> str:
    return settings.streams.metrics[0]


async def test_events_land_in_the_contract_format_and_parse_value_for_value(
    settings: Settings, aredis: redis.asyncio.Redis
) -> None:
    tenant = uuid.uuid4()
    async with MetricsCollector(aredis, streams=settings.streams) as metrics:
        await metrics.record_metric(
            metric_type=MetricType.REVENUE,
            name="subscription_payment",
            value=49.9,
            labels={"plan": "pro", "currency": "EUR", "kind": "new"},
            tenant_id=tenant,
            user_id="u-1",
            timestamp=1_700_000_000.123456,
            success=False,
        )
        before = time.time()
        await metrics.record_business_event(
            "user_signup", "t-2", metadata={"via": "sso"}, user_id="u-2"
        )
        await metrics.record_performance_metric(
            "db_query", 0.0123, False, {"operation": "select", "rows": 3}, "t-3"
        )
        after = time.time()
    events = await stream_events(aredis, stream(settings))
    assert events[0] == Event(
        "subscription_payment",
        49.9,
        "revenue",
        1_700_000_000.123456,
        str(tenant),
        "u-1",
        (("currency", "EUR"), ("kind", "new"), ("plan", "pro")),
        False,
    )
    signup, query = events[1:]
    assert before <= signup.ts <= query.ts <= after
    assert signup == Event(
        "user_signup", 1.0, "business_event", signup.ts, "t-2", "u-2", (("via", "sso"),), True
    )
    assert query == Event(
        "db_query",
        0.0123,
        "performance",
        query.ts,
        "t-3",
        None,
        (("operation", "select"), ("rows", "3")),
        False,
    )
    assert metrics.stats.sent == 3 and metrics.stats.dropped == 0


@pytest.mark.parametrize(("count", "batch", "entries"), [(2500, 1000, 3), (7, 1, 7), (1, 1000, 1)])
async def test_n_events_make_ceil_n_over_batch_entries(
    settings: Settings, aredis: redis.asyncio.Redis, count: int, batch: int, entries: int
) -> None:
    async with MetricsCollector(aredis, streams=settings.streams, batch_size=batch) as metrics:
        for i in range(count):
            await metrics.record_metric(MetricType.USAGE, "signatures_created", i)
    assert await aredis.xlen(stream(settings)) == entries == math.ceil(count / batch)
    events = await stream_events(aredis, stream(settings))
    assert [e.value for e in events] == [float(i) for i in range(count)]
    assert metrics.stats.entries == entries and metrics.stats.sent == count


async def test_one_event_entries_are_flat_fields_and_batches_one_events_field(
    settings: Settings, aredis: redis.asyncio.Redis
) -> None:
    async with MetricsCollector(aredis, streams=settings.streams, batch_size=2) as metrics:
        for i in range(3):
            await metrics.record_performance_metric("http_request", i / 10, metadata={"s": i})
    (_, batched), (_, flat) = await aredis.xrange(stream(settings))
    assert set(batched) == {"events"}
    assert flat["name"] == "http_request" and flat["value"] == "0.2"
    assert flat["type"] == "performance" and flat["labels"] == '{"s":"2"}'


async def test_a_full_batch_goes_out_without_waiting_for_the_flush_interval(
    settings: Settings, aredis: redis.asyncio.Redis
) -> None:
    metrics = MetricsCollector(aredis, streams=settings.streams, batch_size=10, flush_interval=60)
    for i in range(10):
        await metrics.record_metric("usage", "documents_uploaded", i)
    await wait_until(lambda: aredis.xlen(stream(settings)), 5, "the full batch")
    await metrics.close()


async def test_a_tenant_always_goes_to_the_same_shard_in_order(
    settings: Settings, aredis: redis.asyncio.Redis
) -> None:
    keys = StreamKeys(settings.key_prefix, shards=4)
    tenants = [f"tenant-{i}" for i in range(20)]
    async with MetricsCollector(aredis, streams=keys, batch_size=7) as metrics:
        for step in range(30):
            for tenant in tenants:
                await metrics.record_metric("usage", "signatures_created", step, tenant_id=tenant)
    seen: dict[str, str] = {}
    per_tenant: dict[str, list[float]] = {t: [] for t in tenants}
    for shard in keys.metrics:
        for event in await stream_events(aredis, shard):
            assert seen.setdefault(event.tenant, shard) == shard, "tenant split over shards"
            per_tenant[event.tenant].append(event.value)
    assert all(values == [float(s) for s in range(30)] for values in per_tenant.values())
    assert len(set(seen.values())) > 1, "20 tenants should spread over several shards"


async def test_bad_input_raises_at_the_call_and_nothing_is_buffered(
    settings: Settings, aredis: redis.asyncio.Redis
) -> None:
    async with MetricsCollector(aredis, streams=settings.streams) as metrics:
        with pytest.raises(ContractError) as info:
            await metrics.record_metric(MetricType.REVENUE, "subscription_payment", math.nan)
        assert info.value.field == "value"
        with pytest.raises(ContractError, match="labels"):
            await metrics.record_business_event("user_signup", "t", metadata={"a b": 1})
        assert metrics.stats.buffered == 0
    assert await aredis.exists(stream(settings)) == 0


async def test_unreachable_redis_keeps_the_newest_events_and_delivers_them_exactly_once(
    private_redis: PrivateRedis,
) -> None:
    """Redis down: calls stay fast, the buffer holds its bound, the oldest are dropped and
    counted; Redis back: everything still buffered arrives, once and in order."""
    metrics = MetricsCollector(
        private_redis.url,
        streams="m",
        max_buffer=2000,
        batch_size=100,
        retry_base=0.01,
        retry_cap=0.2,
    )
    await metrics.start()
    slowest = 0.0
    for i in range(3000):
        started = time.perf_counter()
        await metrics.record_metric("usage", "signatures_created", i, tenant_id="t")
        slowest = max(slowest, time.perf_counter() - started)
        assert metrics.stats.buffered <= 2000
        if i % 100 == 0:
            await asyncio.sleep(0.002)  # give the flusher its chances to fail
    stats = metrics.stats
    assert slowest < 0.05, f"a record call took {slowest * 1000:.1f} ms"
    # the bound is kept; a round being retried is given up whole (a tenth of the bound)
    assert 1800 <= stats.buffered <= 2000 and stats.dropped == 3000 - stats.buffered
    assert stats.flush_errors > 0 and "ConnectionError" in (stats.last_error or "")
    assert stats.sent == 0

    private_redis.start()
    await wait_until(lambda: metrics.stats.buffered == 0, 15, "delivery after the outage")
    await metrics.close()
    values = await stream_values(private_redis.url, "m")
    # exactly the newest events, each once, in order
    assert values == [float(i) for i in range(3000 - len(values), 3000)]
    assert 1800 <= len(values) <= 2000
    assert metrics.stats.sent == len(values) and metrics.stats.dropped == 3000 - len(values)


async def test_redis_going_away_mid_run_loses_nothing_that_was_not_counted(
    private_redis: PrivateRedis,
) -> None:
    private_redis.start()
    metrics = MetricsCollector(
        private_redis.url,
        streams="m",
        batch_size=50,
        retry_base=0.01,
        retry_cap=0.2,
        flush_interval=0.005,
    )
    await metrics.start()
    for i in range(500):
        await metrics.record_metric("usage", "x", i)
    await wait_until(lambda: metrics.stats.sent == 500, 10, "first half")
    private_redis.stop()
    for i in range(500, 1000):
        await metrics.record_metric("usage", "x", i)
        if i % 50 == 0:
            await asyncio.sleep(0.002)
    await wait_until(lambda: metrics.stats.flush_errors > 0, 10, "a failed flush")
    private_redis.start()  # a fresh, empty server: only what was buffered can arrive
    await wait_until(lambda: metrics.stats.sent == 1000, 15, "the second half")
    await metrics.close()
    values = await stream_values(private_redis.url, "m")
    assert values == [float(i) for i in range(500, 1000)]


class ReplyDropper:
    """A loopback TCP proxy to Redis that, ``drop`` times, passes a script call on to Redis
    but cuts the connection instead of returning the reply: the client cannot know whether
    its round was written."""

    def __init__(self, target_port: int, drop: int) -> None:
        self.target_port = target_port
        self.drop = drop
        self.dropped = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        script_pending = asyncio.Event()

        async def upstream() -> None:
            while data := await reader.read(65536):
                if b"EVALSHA" in data.upper():
                    script_pending.set()
                up_writer.write(data)
                await up_writer.drain()

        async def downstream() -> None:
            while data := await up_reader.read(65536):
                if script_pending.is_set() and self.drop > 0:
                    self.drop -= 1
                    self.dropped += 1
                    writer.transport.abort()
                    return
                script_pending.clear()
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        with contextlib.suppress(ConnectionError, OSError):
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        up_writer.close()
        writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_a_round_whose_reply_was_lost_is_not_written_twice_on_retry(
    private_redis: PrivateRedis,
) -> None:
    private_redis.start()
    client = redis.asyncio.Redis.from_url(private_redis.url, decode_responses=True)
    await client.script_load(WRITE_ROUND)  # so the first EVALSHA really runs the round
    proxy = ReplyDropper(private_redis.port, drop=2)
    await proxy.start()
    try:
        metrics = MetricsCollector(
            f"redis://127.0.0.1:{proxy.port}/0",
            streams="m",
            batch_size=10,
            retry_base=0.01,
            retry_cap=0.05,
        )
        for i in range(95):
            await metrics.record_metric("usage", "x", i, tenant_id="t")
        await metrics.close(timeout=10)
        values = [e.value for e in await stream_events(client, "m")]
    finally:
        await proxy.close()
        await client.aclose()
    assert proxy.dropped == 2
    stats = metrics.stats
    assert stats.flush_errors == 2 and stats.already_written >= 1
    assert values == [float(i) for i in range(95)], "each event exactly once, in order"
    assert stats.sent == 95 and stats.dropped == 0


async def test_close_gives_up_after_its_timeout_and_counts_what_is_left(
    private_redis: PrivateRedis,
) -> None:
    metrics = MetricsCollector(private_redis.url, streams="m", retry_base=0.01, retry_cap=0.1)
    for i in range(10):
        await metrics.record_metric("usage", "x", i)
    started = time.monotonic()
    await metrics.close(timeout=0.3)
    assert time.monotonic() - started < 2.0
    assert metrics.stats.dropped == 10 and metrics.stats.buffered == 0
    await metrics.record_metric("usage", "x", 1)  # after close: counted, not raised
    assert metrics.stats.dropped == 11


async def test_a_stream_key_of_the_wrong_type_is_reported_not_raised(
    settings: Settings, aredis: redis.asyncio.Redis
) -> None:
    await aredis.set(stream(settings), "not a stream")
    metrics = MetricsCollector(aredis, streams=settings.streams, retry_base=0.01, retry_cap=0.05)
    await metrics.record_metric("usage", "x", 1)
    await wait_until(lambda: metrics.stats.flush_errors > 0, 5, "a flush error")
    assert "WRONGTYPE" in (metrics.stats.last_error or "")
    await aredis.delete(stream(settings))
    await wait_until(lambda: metrics.stats.sent == 1, 5, "delivery once the key is fixed")
    await metrics.close()
    assert [e.value for e in await stream_events(aredis, stream(settings))] == [1.0]


def test_options_out_of_range_are_refused() -> None:
    for options in (
        {"batch_size": 0},
        {"batch_size": 10_001},
        {"flush_interval": 0},
        {"max_buffer": 0},
        {"maxlen": 0},
        {"retry_base": 2, "retry_cap": 1},
        {"streams": []},
        {"streams": ["a", "a"]},
    ):
        with pytest.raises(ValueError):
            MetricsCollector("redis://127.0.0.1:1/0", **options)  # type: ignore[arg-type]


async def test_maxlen_trims_the_stream_when_asked(
    settings: Settings, aredis: redis.asyncio.Redis
) -> None:
    async with MetricsCollector(
        aredis, streams=settings.streams, batch_size=1, maxlen=100
    ) as metrics:
        for i in range(1000):
            await metrics.record_metric("usage", "x", i)
    assert await aredis.xlen(stream(settings)) < 1000


async def test_the_sync_collector_records_from_many_threads(
    settings: Settings, aredis: redis.asyncio.Redis
) -> None:
    metrics = SyncMetricsCollector(settings.redis_url, streams=settings.streams, batch_size=64)

    def work(worker: int) -> None:
        for _ in range(250):
            metrics.record_performance_metric(
                "db_query", 0.001, True, {"w": worker}, tenant_id=f"t{worker}"
            )

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    await asyncio.to_thread(metrics.close)
    events = await stream_events(aredis, stream(settings))
    assert Counter(e.tenant for e in events) == {f"t{w}": 250 for w in range(4)}
    assert metrics.stats.sent == 1000 and metrics.stats.dropped == 0


async def test_a_closed_port_never_slows_the_caller() -> None:
    metrics = MetricsCollector(f"redis://127.0.0.1:{free_port()}/0", max_buffer=100)
    started = time.perf_counter()
    for i in range(1000):
        await metrics.record_metric("usage", "x", i)
        await asyncio.sleep(0)
    assert time.perf_counter() - started < 2.0
    assert metrics.stats.dropped == 900
    await metrics.close(timeout=0.1)
