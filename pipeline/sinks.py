"""Where the dataflow's results go: rollups to TimescaleDB, rejected events to Redis.

:class:`RollupWriter` is the one place that writes the rollup tiers (``metric_rollups_10s``,
``_1m``, ``_1h``: :mod:`qesmon.tiers`): binary COPY into a temporary stage, then per tier one
``INSERT ... ON CONFLICT DO UPDATE`` that *replaces* the row, so a replay after a crash
overwrites instead of adding. When the database is down it waits and retries the same batch
with backoff — it blocks the worker on purpose, which stops the source from reading further
(backpressure) — and never drops a batch. What the database *refuses* (SQLSTATE classes 22, 23,
54: see :func:`qesmon.db.is_refusal`) is not retried: the batch is halved until the refused
windows are alone, the rest is written, and each refused window becomes a dead letter (kind
``refused``) with the database's message.

Series ids are cached and looked up again once :data:`~qesmon.tiers.SERIES_RECHECK_SECONDS`
old, which refreshes ``series.resolved_at``; ``qesmon maintain`` deletes only series that no
writer has looked up for far longer (and that no tier holds a row of), so a cached id is never
one of a deleted series, and the cache holds only the series written in the last hour or so.

The Bytewax sink classes at the bottom are thin wrappers around the writers.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from psycopg import sql

from pipeline.health import PipelineStats
from qesmon import deadletter
from qesmon.db import connect, is_refusal
from qesmon.retry import retry_forever
from qesmon.series import Series, WindowResult
from qesmon.tiers import SERIES_RECHECK_SECONDS, tier_for

log = logging.getLogger(__name__)

_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS rollup_stage (
    bucket timestamptz, width_s integer, series_id bigint, count bigint, errors bigint,
    sum double precision, min double precision, max double precision, p50 double precision,
    p95 double precision, p99 double precision, distinct_users bigint, sketch bytea
) ON COMMIT DELETE ROWS
"""
_COPY = (
    "COPY rollup_stage (bucket, width_s, series_id, count, errors, sum, min, max, p50, p95, p99,"
    " distinct_users, sketch) FROM STDIN (FORMAT BINARY)"
)
_COPY_TYPES = [
    "timestamptz",
    "int4",
    "int8",
    "int8",
    "int8",
    "float8",
    "float8",
    "float8",
    "float8",
    "float8",
    "float8",
    "int8",
    "bytea",
]
_UPSERT = """
INSERT INTO {table} (bucket, width_s, series_id, count, errors, sum, min, max, p50, p95, p99,
                     distinct_users, sketch, updated_at)
SELECT bucket, width_s, series_id, count, errors, sum, min, max, p50, p95, p99, distinct_users,
       sketch, now()
FROM rollup_stage WHERE width_s = %s
ON CONFLICT (series_id, width_s, bucket) DO UPDATE SET
    count = EXCLUDED.count, errors = EXCLUDED.errors, sum = EXCLUDED.sum, min = EXCLUDED.min,
    max = EXCLUDED.max, p50 = EXCLUDED.p50, p95 = EXCLUDED.p95, p99 = EXCLUDED.p99,
    distinct_users = EXCLUDED.distinct_users, sketch = EXCLUDED.sketch, updated_at = now()
"""
_SERIES = """
INSERT INTO series (name, type, tenant_id, labels) VALUES (%s, %s, %s, %s)
ON CONFLICT (name, type, tenant_id, labels) DO UPDATE SET resolved_at = now()
RETURNING id
"""


class RollupWriter:
    """Idempotent batch writer of window results into the rollup tiers' tables."""

    def __init__(
        self,
        database_url: str,
        *,
        wait: float = 0.0,
        base_width: int = 10,
        stats: PipelineStats | None = None,
        on_refused: Callable[[Sequence[DeadLetter]], None] | None = None,
        recheck: float = SERIES_RECHECK_SECONDS,
    ) -> None:
        self.database_url = database_url
        self.wait = wait
        self.base_width = base_width
        self.stats = stats
        self.on_refused = on_refused
        #: a cached series id older than this is looked up again
        self.recheck = recheck
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        # series -> (id, monotonic time it was looked up); see SERIES_RECHECK_SECONDS
        self._series_ids: dict[Series, tuple[int, float]] = {}
        self._swept = time.monotonic()
        # series whose row the database refused: their windows go to the dead letters at once
        self._refused_series: dict[Series, str] = {}

    def write(self, results: Iterable[WindowResult]) -> None:
        latest: dict[tuple[Series, int, float], WindowResult] = {}
        for result in results:
            latest[(result.series, result.width_s, result.start)] = result
        if not latest:
            return
        batch = list(latest.values())
        started = time.perf_counter()
        refused: list[DeadLetter] = []
        if self._refused_series:
            kept = []
            for r in batch:
                known = self._refused_series.get(r.series)
                if known is None:
                    kept.append(r)
                else:
                    refused.append(_refused_letter(r, known))
            batch = kept
        self._write_isolating(batch, refused)
        if refused:
            log.warning(
                "the database refused %d rollup row(s), sent to the dead letters: %s",
                len(refused),
                refused[0].error,
            )
            if self.stats is not None:
                self.stats.incr("db_refused_total", len(refused))
            if self.on_refused is not None:
                self.on_refused(refused)
        done = time.time()
        if self.stats is not None:
            self.stats.incr("sink_rows_total", len(batch))
            self.stats.set_gauge("sink_batch_seconds", time.perf_counter() - started)
            for result in batch:
                if result.revision == 0 and result.width_s == self.base_width:
                    self.stats.record_close_delay(done - (result.end + self.wait))

    def _write_isolating(self, batch: list[WindowResult], refused: list[DeadLetter]) -> None:
        """Write ``batch``; windows the database refuses go to ``refused`` (halving to find
        them), connection trouble is waited out as always."""
        if not batch:
            return
        try:
            retry_forever(
                "database", lambda: self._write(batch), self._reset, doing=" writing rollups"
            )
            return
        except psycopg.Error as exc:
            if not is_refusal(exc):
                raise
            self._rollback()
            problem = _db_message(exc)
        if len(batch) == 1:
            result = batch[0]
            if result.series not in self._series_ids:  # its series row was what failed
                if len(self._refused_series) >= 10_000:
                    self._refused_series.clear()
                self._refused_series[result.series] = problem
            refused.append(_refused_letter(result, problem))
            return
        mid = len(batch) // 2
        self._write_isolating(batch[:mid], refused)
        self._write_isolating(batch[mid:], refused)

    def _rollback(self) -> None:
        if self._conn is not None and not self._conn.closed:
            try:
                self._conn.rollback()
            except psycopg.Error:
                self._reset()

    def _connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._conn is None or self._conn.closed:
            conn = connect(self.database_url)
            # Sketches are ~7 KB: pglz compressing them was two thirds of the write time;
            # lz4 is several times faster (readers decompress either, per value).
            try:
                conn.execute("SET default_toast_compression = 'lz4'")
                conn.commit()
            except psycopg.errors.DataError:  # a server built without lz4
                conn.rollback()
                log.info("lz4 not available on the server: sketches compressed with pglz")
            conn.execute(_STAGE)
            conn.commit()
            self._conn = conn
        return self._conn

    def _reset(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None

    def _write(self, batch: Sequence[WindowResult]) -> None:
        conn = self._connection()
        ids = self._resolve_series(conn, {r.series for r in batch})
        with conn.cursor() as cur:
            with cur.copy(_COPY) as copy:
                copy.set_types(_COPY_TYPES)
                for r in batch:
                    agg = r.agg
                    p50, p95, p99 = agg.quantiles()
                    copy.write_row(
                        (
                            datetime.fromtimestamp(r.start, UTC),
                            r.width_s,
                            ids[r.series],
                            agg.count,
                            agg.errors,
                            agg.sum,
                            agg.min,
                            agg.max,
                            p50,
                            p95,
                            p99,
                            agg.distinct_users(),
                            agg.to_bytes(),
                        )
                    )
            for width in sorted({r.width_s for r in batch}):
                table = sql.Identifier(tier_for(width).table)
                cur.execute(sql.SQL(_UPSERT).format(table=table), (width,))
        conn.commit()

    def _resolve_series(
        self, conn: psycopg.Connection[tuple[Any, ...]], wanted: set[Series]
    ) -> dict[Series, int]:
        now = time.monotonic()
        if now - self._swept >= self.recheck:  # forget the series not written lately
            self._series_ids = {
                s: e for s, e in self._series_ids.items() if now - e[1] < self.recheck
            }
            self._swept = now
        missing = [
            s
            for s in wanted
            if s not in self._series_ids or now - self._series_ids[s][1] >= self.recheck
        ]
        if missing:
            with conn.cursor() as cur:
                cur.executemany(
                    _SERIES,
                    [
                        (s.name, s.type, s.tenant, orjson.dumps(dict(s.labels)).decode())
                        for s in missing
                    ],
                    returning=True,
                )
                for series in missing:
                    row = cur.fetchone()
                    assert row is not None
                    # the time before the lookup: the id is trusted a little less long
                    self._series_ids[series] = (int(row[0]), now)
                    cur.nextset()
            conn.commit()
        return {s: self._series_ids[s][0] for s in wanted}

    def close(self) -> None:
        self._reset()


def _db_message(exc: psycopg.Error) -> str:
    text = str(exc).strip().splitlines()
    return f"database refused it ({exc.sqlstate}): {text[0] if text else type(exc).__name__}"


def _refused_letter(result: WindowResult, problem: str) -> DeadLetter:
    """A refused rollup row as a dead letter: its series, window and count (the events
    themselves were aggregated; the series and window say which producer to look at)."""
    s = result.series
    fields = {
        "name": s.name,
        "type": s.type,
        "tenant": s.tenant,
        "labels": orjson.dumps(dict(s.labels)).decode(),
        "width_s": str(result.width_s),
        "window_start": repr(result.start),
        "count": str(result.agg.count),
    }
    source = f"rollup:{s.name[:100]}:{result.width_s}:{result.start:.0f}"
    return DeadLetter(source, problem, "refused", fields)


@dataclass(slots=True)
class DeadLetter:
    """An entry, event or window that was not counted, and why.

    ``kind``: ``invalid`` (breaks the contract), ``late`` (after the allowed lateness),
    ``limit`` (over a cardinality limit) or ``refused`` (the database refused it).
    ``fields`` are the original fields, as received (``qesmon.deadletter`` bounds them and
    keeps bytes that are not UTF-8 as base64).
    """

    source_id: str
    error: str
    kind: str
    fields: Mapping[str, str]


class DeadLetterWriter:
    """Appends dead letters to the ``qes:metrics:dead`` stream, each at most ``max_bytes``,
    the stream capped at about ``maxlen`` entries (oldest dropped): worst case about
    ``maxlen * (max_bytes + 100)`` bytes of Redis memory."""

    def __init__(
        self,
        redis_url: str,
        stream: str,
        *,
        maxlen: int = 50_000,
        max_bytes: int = deadletter.MAX_LETTER_BYTES,
    ) -> None:
        self.client = redis.Redis.from_url(redis_url, socket_timeout=10)
        self.stream = stream
        self.maxlen = maxlen
        self.max_bytes = max_bytes

    def write(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        encoded = [
            deadletter.letter(
                d.fields,
                error=d.error,
                source_id=d.source_id,
                kind=d.kind,
                max_bytes=self.max_bytes,
            )
            for d in letters
        ]

        def push() -> None:
            pipe = self.client.pipeline(transaction=False)
            for fields in encoded:
                pipe.xadd(self.stream, fields, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
            pipe.execute()

        retry_forever("redis", push, lambda: None, doing=" writing dead letters")

    def close(self) -> None:
        self.client.close()


class _WriterPartition(StatelessSinkPartition[list[Any]]):
    def __init__(self, write: Callable[[list[Any]], None], close: Callable[[], None]) -> None:
        self._write = write
        self._close = close

    def write_batch(self, items: list[list[Any]]) -> None:
        self._write([x for batch in items for x in batch])

    def close(self) -> None:
        self._close()


class RollupSink(DynamicSink[list[WindowResult]]):
    """Bytewax sink: lists of window results -> :class:`RollupWriter` (one per worker)."""

    def __init__(
        self,
        database_url: str,
        wait: float,
        base_width: int,
        stats: PipelineStats | None,
        dead: DeadLetterSink | None = None,
    ) -> None:
        self.database_url = database_url
        self.wait = wait
        self.base_width = base_width
        self.stats = stats
        self.dead = dead

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _WriterPartition:
        dead = self.dead.build(step_id, worker_index, worker_count) if self.dead else None
        writer = RollupWriter(
            self.database_url,
            wait=self.wait,
            base_width=self.base_width,
            stats=self.stats,
            on_refused=dead.write_letters if dead else None,
        )

        def close() -> None:
            writer.close()
            if dead is not None:
                dead.close()

        return _WriterPartition(writer.write, close)


class DeadLetterSink(DynamicSink[list[DeadLetter]]):
    """Bytewax sink: lists of dead letters -> a :class:`DeadLetterWriter` per worker, built by
    ``writer`` (e.g. ``functools.partial(DeadLetterWriter, url, stream, maxlen=...)``)."""

    def __init__(self, writer: Callable[[], DeadLetterWriter]) -> None:
        self.writer = writer

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DeadPartition:
        return _DeadPartition(self.writer())


class _DeadPartition(_WriterPartition):
    def __init__(self, writer: DeadLetterWriter) -> None:
        super().__init__(writer.write, writer.close)
        self.write_letters = writer.write
