"""The metrics collector: record events without waiting, deliver them in batches, lose nothing.

``record_*`` validate the event, append it to an in-memory buffer and return: they never wait
for the network. A background task takes *rounds* of buffered events, packs them into stream
entries (``events`` entries of up to ``batch_size`` events; a lone event goes as flat fields)
and writes a whole round in one round trip.

Exactly once, even across retries
---------------------------------
A round is written by one Lua script (:data:`WRITE_ROUND`) that runs atomically on the
server: it compares the round's sequence number with the last one this producer committed
(a small key per collector instance, ``<prefix>:sdk:<producer>``), and only if it is newer
does it ``XADD`` every entry and record the number. When the connection breaks, the reply
is lost or a timeout fires, the collector cannot know whether Redis ran the round; it simply
sends the same round again, and a round that already ran answers "already written" instead
of adding its entries twice. The other ways are weaker: a MULTI/EXEC pipeline is atomic but
a retry after a lost EXEC reply still writes everything twice, and client-made entry IDs
clash as soon as two producers (or two clocks) write to the same stream.
(The script needs Redis 7+; it touches one stream per shard plus the marker key, so in a
Redis Cluster all of them must share a hash slot.) One-event entries of a round travel as a
single JSON argument that the script unpacks, because redis-py packing thousands of small
arguments was the bottleneck of the one-event-per-entry rate.

Outages
-------
While Redis cannot be reached, events keep being buffered up to ``max_buffer``; beyond it
the oldest go first (a round already taken for writing, at most a tenth of the buffer, is
given up as a whole, since a retry must repeat it exactly), all counted in
``stats.dropped``. Retries back off exponentially with jitter; nothing is ever raised into
the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import RedisError

from qesmon.contract import MAX_BATCH
from qesmon.encode import encode_event
from qesmon.sdk.events import business_event, metric_event, performance_event, records
from qesmon.settings import StreamKeys

__all__ = ["WRITE_ROUND", "CollectorStats", "EventSink", "MetricsCollector"]

log = logging.getLogger(__name__)

#: KEYS = marker, stream...; ARGV = seq, marker ttl (s), maxlen (0: none), then triples of
#: stream index (1-based, into the streams), kind, payload: kind ``e`` writes one entry whose
#: single field ``events`` is the payload; kind ``f`` writes one flat entry per element of
#: the payload, a JSON array of ``[field, value, ...]`` string arrays (one argument for many
#: entries: redis-py packs arguments one by one, which made it the bottleneck).
#: Returns the number of entries written, or -1 when this round was written before.
WRITE_ROUND = """#!lua
local seq = tonumber(ARGV[1])
local last = redis.call('GET', KEYS[1])
if last and tonumber(last) >= seq then
  return -1
end
for k = 2, #KEYS do
  local t = redis.call('TYPE', KEYS[k])['ok']
  if t ~= 'stream' and t ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[k] .. ' holds a ' .. t .. ', not a stream')
  end
end
local maxlen = tonumber(ARGV[3])
local function xadd(key, ...)
  if maxlen > 0 then
    redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', ...)
  else
    redis.call('XADD', key, '*', ...)
  end
end
local n = 0
for i = 4, #ARGV, 3 do
  local key = KEYS[tonumber(ARGV[i]) + 1]
  if ARGV[i + 1] == 'e' then
    xadd(key, 'events', ARGV[i + 2])
    n = n + 1
  else
    for _, fields in ipairs(cjson.decode(ARGV[i + 2])) do
      xadd(key, unpack(fields))
      n = n + 1
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return n
"""

# A round is bounded so one script call never holds Redis for long (a few ms), and to a
# tenth of the buffer, since a full buffer gives up the oldest round as a whole.
_ROUND_ENTRIES = 1000
_ROUND_EVENTS = 10_000
_WARN_EVERY = 30.0  # seconds between "Redis unreachable" warnings during one outage


class EventSink(Protocol):
    """Anything that takes validated event objects without blocking (the collectors)."""

    def submit(self, event: dict[str, Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class CollectorStats:
    """A snapshot of what a collector did; read ``collector.stats``.

    ``sent`` events (in ``entries`` stream entries) are confirmed by Redis; ``dropped``
    were given up, either pushed out of a full buffer (oldest first: a round that is being
    retried goes as a whole) or still undelivered when :meth:`MetricsCollector.close` timed
    out (a round given up after a lost reply may in fact have been written: then it is
    counted as dropped although it arrived, never the other way round); ``buffered`` wait,
    in flight included;
    ``flush_errors`` counts failed round trips, ``last_error`` describes the latest one;
    ``already_written`` counts retried rounds that Redis had in fact written before
    (their reply was lost), which the round marker kept from being written twice.
    """

    sent: int
    entries: int
    dropped: int
    buffered: int
    flush_errors: int
    last_error: str | None
    already_written: int


@dataclass(slots=True)
class _Round:
    """Events taken from the buffer to be written by one script call, frozen for retries."""

    seq: int
    events: int
    entries: int
    keys: list[str]
    args: list[Any]
    abandoned: bool = False  # given up to make room: counted as dropped, never retried


def _stream_names(streams: StreamKeys | Sequence[str] | str | None) -> tuple[list[str], str]:
    """The shard streams and the prefix of the producer marker keys."""
    if streams is None:
        streams = StreamKeys()
    if isinstance(streams, StreamKeys):
        return streams.metrics, streams.key("sdk")
    names = [streams] if isinstance(streams, str) else list(streams)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"streams: expected non-empty stream names, got {streams!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"streams: duplicate names in {names!r}")
    return names, f"{names[0]}:sdk"


class MetricsCollector:
    """Push events into the metrics stream(s) from async code; never blocks, never raises.

    Give it a Redis URL (it then owns the connection) or an existing
    ``redis.asyncio.Redis``. Events go to ``qes:metrics`` unless ``streams`` says otherwise
    (a :class:`~qesmon.settings.StreamKeys`, one name or a list of shard names: with N
    shards a tenant's events always go to the same shard, chosen by a stable hash of the
    tenant id, so they stay in order)::

        async with MetricsCollector("redis://localhost:6379/0") as metrics:
            await metrics.record_metric(
                metric_type=MetricType.REVENUE, name="subscription_payment", value=49.0,
                labels={"plan": "pro", "currency": "EUR", "kind": "new"}, tenant_id=tenant,
            )
            await metrics.record_performance_metric("db_query", 0.012, metadata={...})

    Bad input raises :class:`~qesmon.errors.ContractError` naming the field, at the call.
    Redis trouble never reaches the caller: up to ``max_buffer`` events wait in memory
    (beyond that the oldest are dropped and counted in ``stats.dropped``), and delivery is
    retried with exponential backoff and jitter (``retry_base`` .. ``retry_cap`` seconds).
    The first ``record_*`` call starts the background flusher if :meth:`start` was not
    called; :meth:`close` (or leaving ``async with``) delivers what it can within
    ``close_timeout`` seconds. ``maxlen`` trims the stream at each write (``MAXLEN ~``);
    by default nothing is trimmed here, the pipeline does that.
    """

    def __init__(
        self,
        redis_client: str | redis.asyncio.Redis,
        *,
        streams: StreamKeys | Sequence[str] | str | None = None,
        batch_size: int = 1000,
        flush_interval: float = 0.05,
        max_buffer: int = 100_000,
        maxlen: int | None = None,
        retry_base: float = 0.05,
        retry_cap: float = 5.0,
        close_timeout: float = 5.0,
        socket_timeout: float = 10.0,
        marker_ttl: int = 86_400,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH}, got {batch_size}")
        if not flush_interval > 0:
            raise ValueError(f"flush_interval must be > 0 seconds, got {flush_interval}")
        if max_buffer < 1:
            raise ValueError(f"max_buffer must be >= 1 event, got {max_buffer}")
        if maxlen is not None and maxlen < 1:
            raise ValueError(f"maxlen must be None or >= 1, got {maxlen}")
        if not 0 < retry_base <= retry_cap:
            raise ValueError(f"need 0 < retry_base <= retry_cap, got {retry_base}, {retry_cap}")
        if marker_ttl < 60:
            raise ValueError(f"marker_ttl must be >= 60 seconds, got {marker_ttl}")
        self._streams, marker_prefix = _stream_names(streams)
        self._producer = uuid.uuid4().hex
        self._marker = f"{marker_prefix}:{self._producer}"
        if isinstance(redis_client, str):
            # Our own retries (with the round marker) replace redis-py's; fail fast instead.
            self._redis = redis.asyncio.Redis.from_url(
                redis_client,
                retry=Retry(NoBackoff(), 0),
                socket_connect_timeout=min(socket_timeout, 5.0),
                socket_timeout=socket_timeout,
            )
            self._owns_redis = True
        else:
            self._redis = redis_client
            self._owns_redis = False
        self._script = self._redis.register_script(WRITE_ROUND)
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_buffer = max_buffer
        self._maxlen = maxlen or 0
        self._marker_ttl = marker_ttl
        self._close_timeout = close_timeout
        self._backoff = ExponentialWithJitterBackoff(cap=retry_cap, base=retry_base)
        self._round_events = max(
            1, min(_ROUND_EVENTS, _ROUND_ENTRIES * batch_size, max_buffer // 10)
        )
        self._shard_cache: dict[str, int] = {}

        # Shared with submit(), which may run on other threads: guarded by _lock.
        self._lock = threading.Lock()
        self._buffer: deque[dict[str, Any]] = deque()
        self._rounds: deque[_Round] = deque()  # taken from the buffer, not yet written
        self._inflight = 0  # events in rounds not abandoned
        self._dropped = 0
        self._sent = 0
        self._entries = 0

        self._flush_errors = 0
        self._last_error: str | None = None
        self._already_written = 0
        self._warned_at = -_WARN_EVERY
        self._seq = 0
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._wake: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._closing = False
        self._closed = False
        self._deadline = float("inf")

    # -- the caller's side -------------------------------------------------------------

    @records(metric_event)
    async def record_metric(self, event: dict[str, Any]) -> None:
        """Record one event of any type; ``timestamp`` defaults to now.

        Parameters: those of :func:`~qesmon.sdk.events.metric_event`.
        """
        self._autostart()
        self.submit(event)

    @records(business_event)
    async def record_business_event(self, event: dict[str, Any]) -> None:
        """Record a ``business_event`` (``user_signup``, ...); metadata becomes labels.

        Parameters: those of :func:`~qesmon.sdk.events.business_event`.
        """
        self._autostart()
        self.submit(event)

    @records(performance_event)
    async def record_performance_metric(self, event: dict[str, Any]) -> None:
        """Record how long ``operation`` took (seconds); metadata becomes labels.

        Parameters: those of :func:`~qesmon.sdk.events.performance_event`.
        """
        self._autostart()
        self.submit(event)

    def submit(self, event: dict[str, Any]) -> None:
        """Buffer one event object that is already validated (see :mod:`qesmon.sdk.events`).

        The synchronous core of every ``record_*``: safe to call from any thread, never
        blocks, never raises. When the buffer is full the oldest events are dropped.
        """
        with self._lock:
            if self._closed:
                self._dropped += 1
                return
            buf = self._buffer
            if len(buf) + self._inflight >= self._max_buffer:
                self._drop_oldest()
            buf.append(event)
            size = len(buf)
        wake = self._wake
        if wake is not None and (size == 1 or size >= self._batch_size) and not wake.is_set():
            if threading.get_ident() == self._loop_thread:
                wake.set()
            elif self._loop is not None:
                with contextlib.suppress(RuntimeError):  # loop already closed
                    self._loop.call_soon_threadsafe(wake.set)

    def _drop_oldest(self) -> None:
        # The rounds being written are older than anything in the buffer; a round is
        # frozen (a retry must repeat it exactly), so it is given up whole.
        for rnd in self._rounds:
            if not rnd.abandoned:
                rnd.abandoned = True
                self._inflight -= rnd.events
                self._dropped += rnd.events
                return
        self._buffer.popleft()
        self._dropped += 1

    @property
    def stats(self) -> CollectorStats:
        with self._lock:
            buffered = len(self._buffer) + self._inflight
            dropped, sent, entries = self._dropped, self._sent, self._entries
        return CollectorStats(
            sent=sent,
            entries=entries,
            dropped=dropped,
            buffered=buffered,
            flush_errors=self._flush_errors,
            last_error=self._last_error,
            already_written=self._already_written,
        )

    @property
    def streams(self) -> list[str]:
        """The stream names events go to (one per shard)."""
        return list(self._streams)

    # -- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background flusher (idempotent). Redis need not be reachable."""
        self._autostart()

    def _autostart(self) -> None:
        if self._task is not None or self._closing:
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task = self._loop.create_task(self._run(), name="qesmon-sdk-flush")

    async def close(self, timeout: float | None = None) -> None:
        """Deliver what is buffered within ``timeout`` seconds, then stop.

        Whatever could not be delivered in time is added to ``stats.dropped`` (and logged).
        Later ``record_*`` calls are counted as dropped too.
        """
        if self._closing:
            return
        timeout = self._close_timeout if timeout is None else timeout
        if self._task is None and self._buffer:
            self._autostart()
        self._closing = True
        self._deadline = time.monotonic() + timeout
        task = self._task
        if task is not None and self._wake is not None and self._stop is not None:
            self._wake.set()
            self._stop.set()
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout + 1.0)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        with self._lock:
            lost = len(self._buffer) + self._inflight
            self._buffer.clear()
            self._rounds.clear()
            self._inflight = 0
            self._dropped += lost
            self._closed = True  # later submits are counted as dropped
        if lost:
            log.warning(
                "metrics collector closed with %d events undelivered (%s)", lost, self._last_error
            )
        if self._owns_redis:
            await self._redis.aclose()

    async def __aenter__(self) -> MetricsCollector:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- the flusher ---------------------------------------------------------------------

    async def _run(self) -> None:
        wake = self._wake
        assert wake is not None
        ahead: _Round | None = None
        while True:
            rnd, ahead = ahead, None
            if rnd is None:
                await self._wait_for_events(wake)
                rnd = self._take_round()
                if rnd is None:
                    if self._closing:
                        return
                    continue
            delivery = asyncio.create_task(self._deliver(rnd))
            await asyncio.sleep(0)  # let it send the round
            if len(self._buffer) >= self._batch_size or (self._closing and self._buffer):
                # Encode the next round while Redis runs this one; they are still written
                # one after the other, so per-tenant order and the round marker hold.
                ahead = self._take_round()
            if not await delivery:
                return

    async def _wait_for_events(self, wake: asyncio.Event) -> None:
        """Return when a full batch is buffered, or some events waited flush_interval."""
        if not self._closing and not self._buffer:
            wake.clear()
            if not self._buffer:
                await wake.wait()
        if not self._closing and len(self._buffer) < self._batch_size:
            wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._flush_interval):
                    while len(self._buffer) < self._batch_size and not self._closing:
                        await wake.wait()
                        wake.clear()

    def _take_round(self) -> _Round | None:
        with self._lock:
            n = min(len(self._buffer), self._round_events)
            if n == 0:
                return None
            popleft = self._buffer.popleft
            events = [popleft() for _ in range(n)]
            self._seq += 1
            rnd = self._encode(self._seq, events)
            self._rounds.append(rnd)
            self._inflight += n
        return rnd

    def _shard(self, event: dict[str, Any]) -> int:
        tenant: str = event.get("tenant", "")
        shard = self._shard_cache.get(tenant)
        if shard is None:
            shard = StreamKeys.shard_index(tenant, len(self._streams))
            if len(self._shard_cache) >= 100_000:
                self._shard_cache.clear()
            self._shard_cache[tenant] = shard
        return shard

    def _encode(self, seq: int, events: list[dict[str, Any]]) -> _Round:
        if len(self._streams) == 1:
            groups = {0: events}
        else:
            groups = {}
            for event in events:
                groups.setdefault(self._shard(event), []).append(event)
        keys = [self._marker]
        args: list[Any] = [seq, self._marker_ttl, self._maxlen]
        entries = 0
        size = self._batch_size
        for index, (shard, group) in enumerate(groups.items(), start=1):
            keys.append(self._streams[shard])
            flat: list[list[str]] = []  # consecutive one-event entries, sent as one argument
            for start in range(0, len(group), size):
                chunk = group[start : start + size]
                if len(chunk) == 1:
                    flat.append([text for pair in encode_event(chunk[0]).items() for text in pair])
                else:
                    args.extend((index, "e", orjson.dumps(chunk)))
                entries += 1
            if flat:  # only ever the last chunk of a group, so the order is kept
                args.extend((index, "f", orjson.dumps(flat)))
        return _Round(seq, len(events), entries, keys, args)

    async def _pause(self, seconds: float) -> None:
        """Sleep between retries; close() cuts the current pause short, once."""
        assert self._stop is not None
        if self._stop.is_set():
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    async def _deliver(self, rnd: _Round) -> bool:
        """Write one round, retrying until it is in Redis or given up to make room.

        False if closing ran out of time.
        """
        failures = 0
        while True:
            if failures or rnd.abandoned:
                with self._lock:
                    if rnd.abandoned:  # the buffer overflowed meanwhile: move on
                        self._rounds.remove(rnd)
                        return True
            try:
                written = await self._script(keys=rnd.keys, args=rnd.args)
            except (RedisError, OSError) as exc:
                failures += 1
                self._flush_errors += 1
                self._last_error = f"{type(exc).__name__}: {exc}"
                now = time.monotonic()
                delay = min(self._backoff.compute(min(failures, 30)), self._deadline - now)
                if now - self._warned_at >= _WARN_EVERY:
                    self._warned_at = now
                    stats = self.stats
                    log.warning(
                        "cannot write metrics to Redis (%s); %d events buffered, %d dropped; "
                        "retrying in %.2fs",
                        self._last_error,
                        stats.buffered,
                        stats.dropped,
                        max(delay, 0.0),
                    )
                if delay <= 0:
                    return False
                await self._pause(delay)
                continue
            if written == -1:
                self._already_written += 1
            with self._lock:
                self._rounds.remove(rnd)
                if rnd.abandoned:  # given up while this attempt succeeded after all
                    self._dropped -= rnd.events
                else:
                    self._inflight -= rnd.events
                self._sent += rnd.events
                self._entries += rnd.entries
            if failures:
                log.info("metrics delivered again after %d failed attempts", failures)
            return True
