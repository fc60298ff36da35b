"""A resumable, partitioned Bytewax source over the Redis stream shards.

In production the source ends only when ``stopping()`` says so (SIGTERM): Bytewax then
finishes the epoch, writes its snapshot and returns. ``stop_at`` ends a partition after a given
entry ID; benchmarks use it for a bounded replay.

One partition per shard (``qes:metrics`` or ``qes:metrics:0..N-1``). Each ``next_batch`` does
one ``XREAD COUNT`` without ``BLOCK`` (blocking would stall the worker) and hands the whole
read downstream as a single item, so Bytewax's per-item cost is paid per read, not per event.
When the stream is drained it sleeps through ``next_awake`` instead of spinning.

The snapshot is ``(last_id, entries_read)``: ``XREAD`` returns only IDs greater than
``last_id``, so a restart resumes exactly after the last snapshotted entry. Entries the
pipeline can no longer need — behind a snapshot position old enough that Bytewax will never
resume before it — are trimmed with ``XTRIM MINID``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from pipeline.health import PipelineStats

log = logging.getLogger(__name__)

Entry = tuple[str, dict[str, str]]
TARGET_EVENTS = 20_000
BYTES_PER_EVENT = 150  # rough size of one event in an `events` batch, to estimate counts


@dataclass(slots=True)
class ReadBatch:
    """What one XREAD returned from one shard."""

    stream: str
    entries: list[Entry]
    read_at: float
    caught_up: bool
    weight: int = 0  # estimated events, for :class:`InFlight`


class InFlight:
    """Events read but not yet windowed, per process: the source's brake.

    Bytewax applies backpressure only at epoch ends, so within an epoch the source would read
    the whole backlog into memory ahead of the window step. The source waits while more than
    ``limit`` events are in flight; the window step reports what it finished. Only valid when
    the window step runs in the same process as the source (one process, any number of
    worker threads): :func:`pipeline.dataflow.build_flow` leaves it out for clusters.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._events = 0

    def add(self, events: int) -> None:
        with self._lock:
            self._events += events

    def done(self, events: int) -> None:
        with self._lock:
            self._events -= events

    def full(self) -> bool:
        return self._events > self.limit


SourceState = tuple[str, int]  # (last_id, entries_read)


class RedisStreamSource(FixedPartitionedSource[tuple[str, ReadBatch], SourceState]):
    """Reads the metric stream shards; see the module docstring."""

    def __init__(
        self,
        redis_url: str,
        streams: list[str],
        *,
        batch_size: int = 1000,
        poll_interval: float = 0.05,
        trim_after: float | None = 60.0,
        stats: PipelineStats | None = None,
        stop_at: str | None = None,
        stopping: Callable[[], bool] | None = None,
        inflight: InFlight | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.stop_at = stop_at
        self.stopping = stopping
        self.inflight = inflight
        self.streams = streams
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.trim_after = trim_after
        self.stats = stats

    def list_parts(self) -> list[str]:
        return list(self.streams)

    def build_part(
        self, step_id: str, for_part: str, resume_state: SourceState | None
    ) -> StreamPartition:
        last_id, entries_read = resume_state or ("0-0", 0)
        return StreamPartition(
            # Any bytes at all may be in an entry: decoding with surrogateescape keeps bytes
            # that are not UTF-8 as escapes (lossless, refused by the contract, restored to
            # the original bytes in the dead letter) instead of raising in the client.
            redis.Redis.from_url(
                self.redis_url,
                decode_responses=True,
                encoding_errors="surrogateescape",
                socket_timeout=10,
            ),
            for_part,
            last_id,
            entries_read,
            batch_size=self.batch_size,
            poll_interval=self.poll_interval,
            trim_after=self.trim_after,
            stats=self.stats,
            stop_at=self.stop_at,
            stopping=self.stopping,
            inflight=self.inflight,
        )


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class StreamPartition(StatefulSourcePartition[tuple[str, ReadBatch], SourceState]):
    """One shard: XREAD in batches from ``last_id``; never blocks; trims behind itself."""

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        last_id: str,
        entries_read: int,
        *,
        batch_size: int,
        poll_interval: float,
        trim_after: float | None,
        stats: PipelineStats | None,
        stop_at: str | None = None,
        stopping: Callable[[], bool] | None = None,
        inflight: InFlight | None = None,
    ) -> None:
        self.client = client
        self._stopping = stopping
        self._inflight = inflight
        self._per_entry = 1
        self._stop_at = _id_key(stop_at) if stop_at else None
        self.stream = stream
        self.last_id = last_id
        self.entries_read = entries_read
        self.batch_size = batch_size
        # entries per XREAD: batch_size for one-event entries, fewer for `events` batches so
        # that one read holds about TARGET_EVENTS events (memory and latency stay bounded)
        # start small: the first read cannot know how many events an entry holds
        self._count = max(1, min(batch_size, TARGET_EVENTS // 1000))
        self.poll_interval = poll_interval
        self.trim_after = trim_after
        self.stats = stats
        self._awake: datetime | None = None
        self._backoff = poll_interval
        # (monotonic time of a snapshot, position it recorded): what may be trimmed later
        self._positions: deque[tuple[float, str]] = deque()
        self._last_trim = 0.0
        self._last_lag = 0.0
        log.info("reading %s from %s", stream, last_id)

    def next_batch(self) -> list[tuple[str, ReadBatch]]:
        if self._stop_at is not None and _id_key(self.last_id) >= self._stop_at:
            raise StopIteration
        if self._stopping is not None and self._stopping():
            raise StopIteration  # a graceful stop: Bytewax finishes the epoch and snapshots
        if self._inflight is not None and self._inflight.full():
            # the window step is behind: give it the CPU; no item, so nothing looks "idle"
            self._awake = datetime.now(UTC) + timedelta(milliseconds=2)
            return []
        try:
            reply: Any = self.client.xread({self.stream: self.last_id}, count=self._count)
            self._maybe_report_lag()
        except redis.RedisError as exc:
            self._backoff = min(self._backoff * 2, 5.0)
            log.warning(
                "reading %s failed (%s); retrying in %.1f s", self.stream, exc, self._backoff
            )
            self._awake = datetime.now(UTC) + timedelta(seconds=self._backoff)
            return []
        self._backoff = self.poll_interval
        now = time.time()
        entries: list[Entry] = reply[0][1] if reply else []
        caught_up = len(entries) < self._count
        if entries:
            self._adapt_count(entries)
        self._awake = (
            datetime.now(UTC) + timedelta(seconds=self.poll_interval) if caught_up else None
        )
        if not entries:
            # An empty read still matters: it tells the windows the shard is drained.
            return [(self.stream, ReadBatch(self.stream, [], now, True))]
        self.last_id = entries[-1][0]
        self.entries_read += len(entries)
        if self.stats is not None:
            self.stats.incr("entries_total", len(entries))
        weight = len(entries) * self._per_entry
        if self._inflight is not None:
            self._inflight.add(weight)
        return [(self.stream, ReadBatch(self.stream, entries, now, caught_up, weight))]

    def _adapt_count(self, entries: list[Entry]) -> None:
        sample = entries[-1][1].get("events")
        per_entry = max(1, len(sample) // BYTES_PER_EVENT) if sample else 1
        self._per_entry = per_entry
        self._count = max(1, min(self.batch_size, TARGET_EVENTS // per_entry))

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> SourceState:
        now = time.monotonic()
        self._positions.append((now, self.last_id))
        if self.trim_after is not None and now - self._last_trim > 1.0:
            self._trim(now)
        return (self.last_id, self.entries_read)

    def _trim(self, now: float) -> None:
        # A position may go once it is `trim_after` seconds old AND three snapshots have been
        # taken since: Bytewax's input runs at most one epoch ahead of the outputs, so by then
        # the epoch that recorded it is complete and a restart resumes at or after it. While
        # the outputs stall (database down), no snapshots are taken and nothing is trimmed.
        assert self.trim_after is not None
        safe: str | None = None
        positions = self._positions
        while len(positions) > 3 and now - positions[0][0] >= self.trim_after:
            safe = positions.popleft()[1]
        if safe is None or safe == "0-0":
            return
        self._last_trim = now
        try:
            self.client.xtrim(self.stream, minid=safe, approximate=False)
        except redis.RedisError as exc:
            log.warning("trimming %s failed: %s", self.stream, exc)

    def _maybe_report_lag(self) -> None:
        if self.stats is None:
            return
        now = time.monotonic()
        if now - self._last_lag < 1.0:
            return
        self._last_lag = now
        try:
            info: Any = self.client.xinfo_stream(self.stream)
        except redis.ResponseError:  # the stream does not exist yet
            return
        added = int(info.get("entries-added", info.get("length", 0)))
        self.stats.set_lag(self.stream, max(0, added - self.entries_read))

    def close(self) -> None:
        self.client.close()
