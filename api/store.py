"""Reading what the pipeline wrote: the one module of ``api/`` that speaks SQL.

Rollups come in four widths (10 s, 60 s and 3600 s written by the pipeline, 86400 s merged
from the hour rows of final days by ``qesmon maintain``), each in a table of its own
(:mod:`qesmon.tiers`). A period is read as *spans*: whole merged days from the day rows, the
hours around them from the 3600 s rows, the minutes around those from the 60 s rows, and what
is newer than the last closed minute from the 10 s rows (the current day, hour and minute exist
only in the finer widths). So a year is read from 365 rows per series, not 8,760 or 525,600,
and a long report or the exporter's first pass after a start stays fast. :func:`plan_spans` cuts
a period that way; the queries below read only those rows::

    spans = plan_spans(start, end, await latest_buckets(conn))
    rows = await totals(conn, SeriesFilter(names=("http_request",)), spans, by=("endpoint",))
    aggs = await sketches(conn, cache, SeriesFilter(with_users=True), spans, step=86400)

Sums (count, errors, sum, min, max) are added up in SQL; percentiles and distinct users come
from merging the stored sketches (:class:`qesmon.sketch.Agg`), never from averaging. Merged
closed hours are cached in memory (:class:`HourCache`), keyed by their row count and newest
``updated_at`` so a late update of an hour is seen at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.types.json import Jsonb

from api.stats import UserUnion
from qesmon.series import ROLLUP_WIDTHS
from qesmon.sketch import Agg
from qesmon.tiers import tier_for

HOUR = 3600
MINUTE = 60
DAY = 86400

#: the widths read here: the pipeline's and the day tier merged from its hours
READ_WIDTHS = (*ROLLUP_WIDTHS, DAY)

Conn = AsyncConnection[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class Span:
    """Rows of width ``width_s`` whose bucket lies in ``[start, end)`` (Unix seconds)."""

    width_s: int
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class SeriesFilter:
    """Which series a query reads: names and/or types, one tenant or all (``None``).

    ``with_users`` keeps only rows that saw at least one user (for distinct-user counts).
    """

    names: tuple[str, ...] | None = None
    types: tuple[str, ...] | None = None
    tenant: str | None = None
    with_users: bool = False

    def key(self) -> tuple[Any, ...]:
        return (self.names, self.types, self.tenant, self.with_users)


def floor_to(ts: float, step: int) -> float:
    return math.floor(ts / step) * step


def ceil_to(ts: float, step: int) -> float:
    return math.ceil(ts / step) * step


def plan_spans(
    start: float,
    end: float,
    latest: dict[int, float | None],
    *,
    max_width: int = DAY,
) -> list[Span]:
    """Cut ``[start, end)`` into the coarsest rollup rows that cover it without overlap.

    ``latest`` maps a width to the start of the newest bucket written at that width (``None``
    when there is none): a width is used only up to what the pipeline has closed, and the
    rest falls to the next finer width. ``start`` should be minute-aligned; the first
    partial minute is read from 10 s rows otherwise. ``max_width`` (60, 3600 or 86400) is the
    coarsest width allowed, e.g. 60 when the caller wants points per minute.
    """
    spans: list[Span] = []
    widths = [w for w in sorted(READ_WIDTHS, reverse=True) if w <= max_width]
    finest = min(ROLLUP_WIDTHS)

    def cover(lo: float, hi: float, level: int) -> None:
        if hi <= lo:
            return
        width = widths[level]
        if width == finest:
            spans.append(Span(width, lo, hi))
            return
        newest = latest.get(width)
        closed_end = newest + width if newest is not None else -math.inf
        a = ceil_to(lo, width)
        b = min(floor_to(hi, width), max(closed_end, a))
        if b <= a:
            cover(lo, hi, level + 1)
            return
        cover(lo, a, level + 1)
        spans.append(Span(width, a, b))
        cover(b, hi, level + 1)

    cover(start, end, 0)
    return spans


def _ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def _where(flt: SeriesFilter, spans: Sequence[Span]) -> tuple[sql.Composable, dict[str, Any]]:
    params: dict[str, Any] = {}
    parts: list[sql.Composable] = [_base_where(flt, params)]
    if flt.with_users:
        parts.append(sql.SQL("r.distinct_users > 0"))
    ranges: list[sql.Composable] = []
    for i, span in enumerate(spans):
        ranges.append(
            sql.SQL("(r.width_s = {w} AND r.bucket >= {a} AND r.bucket < {b})").format(
                w=sql.Placeholder(f"w{i}"), a=sql.Placeholder(f"a{i}"), b=sql.Placeholder(f"b{i}")
            )
        )
        params[f"w{i}"] = span.width_s
        params[f"a{i}"] = _ts(span.start)
        params[f"b{i}"] = _ts(span.end)
    parts.append(
        sql.SQL("({})").format(sql.SQL(" OR ").join(ranges) if ranges else sql.SQL("false"))
    )
    return sql.SQL(" AND ").join(parts), params


def _group_columns(by: Sequence[str], params: dict[str, Any]) -> list[sql.Composable]:
    """Group keys: the pseudo-labels ``name``, ``tenant`` and ``type``, or any label key."""
    columns: list[sql.Composable] = []
    for i, key in enumerate(by):
        if key == "name":
            columns.append(sql.SQL("s.name"))
        elif key == "tenant":
            columns.append(sql.SQL("s.tenant_id"))
        elif key == "type":
            columns.append(sql.SQL("s.type"))
        else:
            params[f"label{i}"] = key
            columns.append(
                sql.SQL("coalesce(s.labels->>{}, '')").format(sql.Placeholder(f"label{i}"))
            )
    return columns


async def latest_buckets(conn: Conn) -> dict[int, float | None]:
    """The start of the newest bucket written at each rollup width."""
    out: dict[int, float | None] = {}
    for width in READ_WIDTHS:
        # the tier's own table: max() over the view with a width condition scans every chunk
        table = sql.Identifier(tier_for(width).table)
        cur = await conn.execute(sql.SQL("SELECT max(bucket) FROM {}").format(table))
        row = await cur.fetchone()
        out[width] = row[0].timestamp() if row and row[0] is not None else None
    return out


async def earliest_bucket(conn: Conn) -> float:
    """Start of the oldest stored window of the widths read here (now when there is none)."""
    oldest = [
        sql.SQL("(SELECT min(bucket) FROM {})").format(sql.Identifier(tier_for(w).table))
        for w in READ_WIDTHS
    ]
    cur = await conn.execute(sql.SQL("SELECT least({})").format(sql.SQL(", ").join(oldest)))
    row = await cur.fetchone()
    return row[0].timestamp() if row and row[0] is not None else time.time()


@dataclass(frozen=True, slots=True)
class Totals:
    """Added-up rollup columns of one group (and one time step when asked for)."""

    key: tuple[str, ...]
    step: float | None
    count: int
    errors: int
    sum: float
    min: float
    max: float

    @property
    def avg(self) -> float | None:
        return self.sum / self.count if self.count else None


async def _sql_totals(
    conn: Conn,
    flt: SeriesFilter,
    spans: Sequence[Span],
    *,
    by: Sequence[str] = (),
    step: int | None = None,
) -> list[Totals]:
    """Sum count/errors/sum and take min/max per group (and per ``step`` seconds)."""
    where, params = _where(flt, spans)
    keys = _group_columns(by, params)
    select: list[sql.Composable] = list(keys)
    if step is not None:
        params["step"] = step
        select.append(sql.SQL("floor(extract(epoch FROM r.bucket) / %(step)s) * %(step)s"))
    else:
        select.append(sql.SQL("NULL::float8"))
    group = sql.SQL(", ").join(sql.Literal(i + 1) for i in range(len(select)))
    query = sql.SQL(
        "SELECT {select}, sum(r.count)::bigint, sum(r.errors)::bigint, sum(r.sum), "
        "min(r.min), max(r.max) "
        "FROM metric_rollups r JOIN series s ON s.id = r.series_id "
        "WHERE {where} GROUP BY {group} ORDER BY {group}"
    ).format(select=sql.SQL(", ").join(select), where=where, group=group)
    cur = await conn.execute(query, params)
    out: list[Totals] = []
    n = len(keys)
    for row in await cur.fetchall():
        out.append(
            Totals(
                key=tuple(row[:n]),
                step=float(row[n]) if row[n] is not None else None,
                count=int(row[n + 1]),
                errors=int(row[n + 2]),
                sum=float(row[n + 3]),
                min=float(row[n + 4]),
                max=float(row[n + 5]),
            )
        )
    return out


GroupAggs = dict[tuple[str, ...], Agg]


@dataclass
class HourCache:
    """Per-bucket results of *final* 1 h and 1 min windows, per query shape; bounded.

    A window is final once its end is ``settle_seconds`` in the past: the pipeline takes late
    events only within the allowed lateness (30 s by default) and a replay rewrites the same
    values, so a final window's rows never change and its merged sketches and sums are
    computed once per process. Newer windows are always read from the database. Entries
    expire after ``ttl`` seconds all the same, so rows written long after their window (a
    backfill, a restored backup) show up within that time.
    """

    settle_seconds: float = 150.0
    ttl: float = 600.0
    max_entries: int = 200_000
    entries: dict[tuple[Any, ...], tuple[float, Any]] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0

    def get(self, key: tuple[Any, ...]) -> Any:
        found = self.entries.get(key)
        if found is None or found[0] < time.monotonic():
            self.misses += 1
            return None
        self.hits += 1
        return found[1]

    def put(self, key: tuple[Any, ...], value: Any) -> None:
        if len(self.entries) >= self.max_entries:
            for old in list(self.entries)[: self.max_entries // 10]:
                del self.entries[old]
        self.entries[key] = (time.monotonic() + self.ttl, value)


MAX_CACHED_BUCKETS = 20_000
#: day spans longer than this are read, not cached: a year of one report's day buckets per
#: group (features × tenants) held ~170 MB in the cache; read, it is ~2 s of a cold report
MAX_CACHED_DAYS = 62


def _split(spans: Sequence[Span], final_before: float) -> tuple[list[Span], list[Span]]:
    """(spans of final 1 h / 1 min windows, the rest); very long spans are not cached."""
    cached: list[Span] = []
    live: list[Span] = []
    finest = min(ROLLUP_WIDTHS)
    for span in spans:
        longest = MAX_CACHED_DAYS if span.width_s == DAY else MAX_CACHED_BUCKETS
        if span.width_s == finest or (span.end - span.start) / span.width_s > longest:
            live.append(span)
            continue
        cut = min(span.end, max(span.start, floor_to(final_before, span.width_s)))
        if cut > span.start:
            cached.append(Span(span.width_s, span.start, cut))
        if span.end > cut:
            live.append(Span(span.width_s, cut, span.end))
    return cached, live


def _runs(width: int, buckets: list[float]) -> list[Span]:
    """Contiguous runs of bucket starts as spans."""
    out: list[Span] = []
    for b in sorted(buckets):
        if out and out[-1].end == b:
            out[-1] = Span(width, out[-1].start, b + width)
        else:
            out.append(Span(width, b, b + width))
    return out


Fetch = Callable[[list[Span], int], Awaitable[dict[float, Any]]]


async def _per_bucket(
    cache: HourCache, shape: tuple[Any, ...], spans: Sequence[Span], fetch: Fetch
) -> dict[tuple[int, float], Any]:
    """Each bucket's value from the cache, fetching the missing ones in one query per width."""
    out: dict[tuple[int, float], Any] = {}
    missing: dict[int, list[float]] = {}
    for span in spans:
        for bucket in _buckets(span):
            value = cache.get((*shape, span.width_s, bucket))
            if value is None:
                missing.setdefault(span.width_s, []).append(bucket)
            else:
                out[(span.width_s, bucket)] = value
    for width, buckets in missing.items():
        fetched = await fetch(_runs(width, buckets), width)
        for bucket in buckets:
            value = fetched.get(bucket, {})
            cache.put((*shape, width, bucket), value)
            out[(width, bucket)] = value
    return out


def _add(a: Totals | None, b: Totals, key: tuple[str, ...], step: float | None) -> Totals:
    if a is None:
        return Totals(key, step, b.count, b.errors, b.sum, b.min, b.max)
    return Totals(
        key,
        step,
        a.count + b.count,
        a.errors + b.errors,
        a.sum + b.sum,
        min(a.min, b.min),
        max(a.max, b.max),
    )


async def totals(
    conn: Conn,
    flt: SeriesFilter,
    spans: Sequence[Span],
    *,
    by: Sequence[str] = (),
    step: int | None = None,
    cache: HourCache | None = None,
) -> list[Totals]:
    """Sum count/errors/sum and take min/max per group (and per ``step`` seconds).

    With a ``cache``, final 1 h / 1 min windows are read once per process.
    """
    if cache is None:
        return await _sql_totals(conn, flt, spans, by=by, step=step)
    cached, live = _split(spans, time.time() - cache.settle_seconds)

    async def fetch(runs: list[Span], width: int) -> dict[float, Any]:
        per: dict[float, dict[tuple[str, ...], Totals]] = {}
        for row in await _sql_totals(conn, flt, runs, by=by, step=width):
            assert row.step is not None
            per.setdefault(row.step, {})[row.key] = row
        return per

    out: dict[tuple[float | None, tuple[str, ...]], Totals] = {}
    shape = ("totals", flt.key(), tuple(by))
    for (_, bucket), groups in (await _per_bucket(cache, shape, cached, fetch)).items():
        at = floor_to(bucket, step) if step else None
        for key, row in groups.items():
            out[(at, key)] = _add(out.get((at, key)), row, key, at)
    for row in await _sql_totals(conn, flt, live, by=by, step=step) if live else []:
        out[(row.step, row.key)] = _add(out.get((row.step, row.key)), row, row.key, row.step)
    return [out[k] for k in sorted(out, key=lambda k: (k[1], k[0] or 0.0))]


#: rows of sketches read at a time: a year of day rows of every series with users is ~130,000
#: rows and 500 MB, merged batch by batch instead of held all at once
FETCH_BATCH = 2000
_cursor_ids = itertools.count()


async def _sketch_batches(
    conn: Conn, flt: SeriesFilter, spans: Sequence[Span], by: Sequence[str]
) -> AsyncIterator[list[tuple[Any, ...]]]:
    """The stored sketches of ``flt`` over ``spans`` (group key, bucket, sketch), in batches
    of :data:`FETCH_BATCH` rows from a server-side cursor."""
    if not spans:
        return
    where, params = _where(flt, spans)
    keys = _group_columns(by, params)
    select = [*keys, sql.SQL("extract(epoch FROM r.bucket)::float8"), sql.SQL("r.sketch")]
    query = sql.SQL(
        "SELECT {select} FROM metric_rollups r JOIN series s ON s.id = r.series_id "
        "WHERE {where} AND r.sketch IS NOT NULL"
    ).format(select=sql.SQL(", ").join(select), where=where)
    async with conn.transaction(), conn.cursor(name=f"sketches_{next(_cursor_ids)}") as cur:
        await cur.execute(query, params)
        while batch := await cur.fetchmany(FETCH_BATCH):
            yield batch


async def _merge_query(
    conn: Conn,
    flt: SeriesFilter,
    spans: Sequence[Span],
    by: Sequence[str],
    step: int | None,
    out: dict[tuple[float | None, tuple[str, ...]], Agg],
) -> None:
    """Merge the stored sketches of ``flt`` over ``spans`` into ``out``, batch by batch; the
    users of all series over whole hours and days from ``tenant_users`` where it has them."""
    if (
        flt.with_users
        and flt.names is None
        and flt.types is None
        and tuple(by) in ((), ("tenant",))
    ):
        spans = await _merge_tenant_users(conn, flt, spans, bool(by), step, out)
    async for batch in _sketch_batches(conn, flt, spans, by):
        await _merge_rows(batch, len(by), step, out)


async def _merge_tenant_users(
    conn: Conn,
    flt: SeriesFilter,
    spans: Sequence[Span],
    by_tenant: bool,
    step: int | None,
    out: dict[tuple[float | None, tuple[str, ...]], Agg],
) -> list[Span]:
    """Merge the ``tenant_users`` rows (a tenant's rows of an hour or day that saw users,
    merged by ``qesmon maintain``) of the buckets of ``spans`` it has into ``out``; return the
    spans left to read from the rollups (minutes and 10 s windows, the buckets it lacks)."""
    wide = [s for s in spans if s.width_s in (HOUR, DAY)]
    if not wide:
        return list(spans)
    ranges = sql.SQL(" OR ").join(
        sql.SQL("(width_s = {} AND bucket >= {} AND bucket < {})").format(
            sql.Literal(s.width_s), sql.Literal(_ts(s.start)), sql.Literal(_ts(s.end))
        )
        for s in wide
    )
    cur = await conn.execute(
        sql.SQL(
            "SELECT width_s, extract(epoch FROM bucket)::float8 FROM tenant_users_done WHERE {}"
        ).format(ranges)
    )
    done = {(int(w), float(b)) for w, b in await cur.fetchall()}
    if done:
        where = [sql.SQL("({})").format(ranges)]
        if flt.tenant is not None:
            where.append(sql.SQL("tenant_id = {}").format(sql.Literal(flt.tenant)))
        query = sql.SQL(
            "SELECT tenant_id, width_s, extract(epoch FROM bucket)::float8, sketch"
            " FROM tenant_users WHERE {}"
        ).format(sql.SQL(" AND ").join(where))
        cur = await conn.execute(query)
        rows = [
            ((tenant,) if by_tenant else ()) + (bucket, blob)
            for tenant, width, bucket, blob in await cur.fetchall()
            if (int(width), float(bucket)) in done
        ]
        await _merge_rows(rows, 1 if by_tenant else 0, step, out)
    rest = [s for s in spans if s.width_s not in (HOUR, DAY)]
    for span in wide:
        buckets = [b for b in _buckets(span) if (span.width_s, b) not in done]
        rest.extend(_runs(span.width_s, buckets))
    return rest


def _buckets(span: Span) -> list[float]:
    """The bucket starts of ``span``."""
    out = []
    bucket = span.start
    while bucket < span.end:
        out.append(bucket)
        bucket += span.width_s
    return out


MERGE_SLICE = 200

#: where large sketch merges run: the reports set their own small executor
#: (:func:`api.resources.report_connection`), so that eight cold reports cannot fill the
#: default executor that ``/health`` and the exporter use; None is the loop's default one
MERGE_EXECUTOR: contextvars.ContextVar[Executor | None] = contextvars.ContextVar(
    "merge_executor", default=None
)


async def _merge_rows(
    rows: Sequence[tuple[Any, ...]],
    n: int,
    step: int | None,
    out: dict[tuple[float | None, tuple[str, ...]], Agg],
) -> None:
    """Merge sketch rows into ``out``; a large merge (a cold cache, the exporter's first pass,
    its user counts) runs in a worker thread so that the event loop keeps answering requests.

    ``out`` belongs to the caller, which awaits this, so nothing else touches it meanwhile.
    """
    if len(rows) <= MERGE_SLICE:
        _merge_slice(rows, n, step, out)
        return
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(MERGE_EXECUTOR.get(), _merge_slice, rows, n, step, out)


def _merge_slice(
    rows: Iterable[tuple[Any, ...]],
    n: int,
    step: int | None,
    out: dict[tuple[float | None, tuple[str, ...]], Agg],
) -> None:
    for row in rows:
        key = tuple(row[:n])
        at = floor_to(float(row[n]), step) if step else None
        agg = Agg.from_bytes(bytes(row[n + 1]))
        target = out.get((at, key))
        if target is None:
            out[(at, key)] = agg
        else:
            target.merge(agg)


async def sketches(
    conn: Conn,
    cache: HourCache | None,
    flt: SeriesFilter,
    spans: Sequence[Span],
    *,
    by: Sequence[str] = (),
    step: int | None = None,
) -> dict[tuple[float | None, tuple[str, ...]], Agg]:
    """Merged sketches per (step start or None, group key).

    ``step`` must be a multiple of every span width used (3600 or 86400 with hour spans, 60
    with minute spans). Final 1 h / 1 min windows are merged once per process (``cache``).
    """
    out: dict[tuple[float | None, tuple[str, ...]], Agg] = {}
    if cache is None:
        await _merge_query(conn, flt, spans, by, step, out)
        return out
    cached, live = _split(spans, time.time() - cache.settle_seconds)

    async def fetch(runs: list[Span], width: int) -> dict[float, Any]:
        merged: dict[tuple[float | None, tuple[str, ...]], Agg] = {}
        await _merge_query(conn, flt, runs, by, width, merged)
        per: dict[float, GroupAggs] = {}
        for (at, key), agg in merged.items():
            assert at is not None
            per.setdefault(at, {})[key] = agg
        return per

    shape = ("sketches", flt.key(), tuple(by))
    for (_, bucket), groups in (await _per_bucket(cache, shape, cached, fetch)).items():
        at = floor_to(bucket, step) if step else None
        for key, agg in groups.items():
            target = out.get((at, key))
            if target is None:
                out[(at, key)] = agg.copy()
            else:
                target.merge(agg)
    await _merge_query(conn, flt, live, by, step, out)
    return out


async def distinct_users(
    conn: Conn, cache: HourCache, flt: SeriesFilter, spans: Sequence[Span]
) -> int:
    """Distinct users over every series of ``flt`` that saw users, in one union pass.

    Shares the per-bucket cache of :func:`sketches` (``by=()``).
    """
    cached, live = _split(spans, time.time() - cache.settle_seconds)

    async def fetch(runs: list[Span], width: int) -> dict[float, Any]:
        merged: dict[tuple[float | None, tuple[str, ...]], Agg] = {}
        await _merge_query(conn, flt, runs, (), width, merged)
        return {at: {key: agg} for (at, key), agg in merged.items() if at is not None}

    union = UserUnion()
    shape = ("sketches", flt.key(), ())
    for groups in (await _per_bucket(cache, shape, cached, fetch)).values():
        for agg in groups.values():
            union.add(agg)
    async for batch in _sketch_batches(conn, flt, live, ()):
        for i, row in enumerate(batch):
            if i and i % MERGE_SLICE == 0:
                await asyncio.sleep(0)
            union.add(Agg.from_bytes(bytes(row[1])))
    return union.count()


async def load_exporter_state(conn: Conn) -> tuple[float, Any] | None:
    """The exporter's stored running totals: (upto, state document), or None."""
    cur = await conn.execute("SELECT extract(epoch FROM upto)::float8, state FROM exporter_state")
    row = await cur.fetchone()
    return (float(row[0]), row[1]) if row else None


async def save_exporter_state(conn: Conn, upto: float, state: dict[str, Any]) -> None:
    """Store the exporter's running totals up to ``upto``; a stored row is only ever moved
    forward (another API process may have stored a newer one)."""
    await conn.execute(
        "INSERT INTO exporter_state (id, upto, state) VALUES (1, %s, %s)"
        " ON CONFLICT (id) DO UPDATE SET upto = EXCLUDED.upto, state = EXCLUDED.state,"
        " updated_at = now() WHERE exporter_state.upto < EXCLUDED.upto",
        (_ts(upto), Jsonb(state)),
    )


async def latest_values(
    conn: Conn, flt: SeriesFilter, since: float, *, by: Sequence[str] = ()
) -> list[tuple[tuple[str, ...], float, float]]:
    """Per series: its most recent window's mean, as (group key, window end, value).

    Rollups keep no "last value"; for gauges (CPU %, quota %) the mean of the newest window
    is the closest stored figure. Every closed window counts: the one that starts last wins,
    the finest width on ties (a closed hour ends after the last 10 s window of its events, but
    its mean is the hour's, not the latest value).
    """
    params: dict[str, Any] = {"since": _ts(since)}
    keys = _group_columns(by, params)
    query = sql.SQL(
        "SELECT DISTINCT ON (s.id) {keys}, "
        "extract(epoch FROM r.bucket)::float8 + r.width_s, r.sum / r.count "
        "FROM metric_rollups r JOIN series s ON s.id = r.series_id "
        "WHERE {where} AND r.bucket >= %(since)s AND r.count > 0 "
        "AND r.bucket + make_interval(secs => r.width_s) <= now() "
        "ORDER BY s.id, r.bucket DESC, r.width_s"
    ).format(
        keys=sql.SQL(", ").join([*keys, sql.SQL("s.id")]),
        where=_base_where(flt, params),
    )
    cur = await conn.execute(query, params)
    n = len(keys) + 1
    return [
        (tuple(row[: len(keys)]), float(row[n]), float(row[n + 1])) for row in await cur.fetchall()
    ]


def _base_where(flt: SeriesFilter, params: dict[str, Any]) -> sql.Composable:
    """Series conditions only (no time spans)."""
    parts: list[sql.Composable] = [sql.SQL("true")]
    if flt.names is not None:
        parts.append(sql.SQL("s.name = ANY(%(names)s)"))
        params["names"] = list(flt.names)
    if flt.types is not None:
        parts.append(sql.SQL("s.type = ANY(%(types)s)"))
        params["types"] = list(flt.types)
    if flt.tenant is not None:
        parts.append(sql.SQL("s.tenant_id = %(tenant)s"))
        params["tenant"] = flt.tenant
    return sql.SQL(" AND ").join(parts)


async def window_totals(
    conn: Conn, flt: SeriesFilter, spans: Sequence[Span], *, cache: HourCache | None = None
) -> list[tuple[int, float, int, int]]:
    """Per stored window (width, bucket start): summed count and errors over the series."""
    out: list[tuple[int, float, int, int]] = []
    live = list(spans)
    if cache is not None:
        cached, live = _split(spans, time.time() - cache.settle_seconds)

        async def fetch(runs: list[Span], width: int) -> dict[float, Any]:
            rows = await _sql_totals(conn, flt, runs, step=width)
            return {row.step: {(): row} for row in rows if row.step is not None}

        shape = ("totals", flt.key(), ())
        for (width, bucket), groups in (await _per_bucket(cache, shape, cached, fetch)).items():
            for row in groups.values():
                out.append((width, bucket, row.count, row.errors))
    if not live:
        return out
    where, params = _where(flt, live)
    query = sql.SQL(
        "SELECT r.width_s, extract(epoch FROM r.bucket)::float8, sum(r.count)::bigint, "
        "sum(r.errors)::bigint FROM metric_rollups r JOIN series s ON s.id = r.series_id "
        "WHERE {where} GROUP BY 1, 2"
    ).format(where=where)
    cur = await conn.execute(query, params)
    out += [(int(w), float(b), int(c), int(e)) for w, b, c, e in await cur.fetchall()]
    return out
