"""Reading what the pipeline wrote: the one module of ``api/`` that speaks SQL.

Rollups come in three widths (10 s, 60 s, 3600 s). A period is read as *spans*: whole closed
hours from the 3600 s rows, the minutes around them from the 60 s rows, and what is newer than
the last closed minute from the 10 s rows (the current hour and minute exist only in the finer
widths). :func:`plan_spans` cuts a period that way; the queries below read only those rows::

    spans = plan_spans(start, end, await latest_buckets(conn))
    rows = await totals(conn, SeriesFilter(names=("http_request",)), spans, by=("endpoint",))
    aggs = await sketches(conn, cache, SeriesFilter(with_users=True), spans, step=86400)

Sums (count, errors, sum, min, max) are added up in SQL; percentiles and distinct users come
from merging the stored sketches (:class:`qesmon.sketch.Agg`), never from averaging. Merged
closed hours are cached in memory (:class:`HourCache`), keyed by their row count and newest
``updated_at`` so a late update of an hour is seen at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from psycopg import AsyncConnection, sql

from qesmon.series import ROLLUP_WIDTHS
from qesmon.sketch import Agg

HOUR = 3600
MINUTE = 60

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
    max_width: int = HOUR,
) -> list[Span]:
    """Cut ``[start, end)`` into the coarsest rollup rows that cover it without overlap.

    ``latest`` maps a width to the start of the newest bucket written at that width (``None``
    when there is none): a width is used only up to what the pipeline has closed, and the
    rest falls to the next finer width. ``start`` should be minute-aligned; the first
    partial minute is read from 10 s rows otherwise. ``max_width`` (60 or 3600) is the
    coarsest width allowed, e.g. 60 when the caller wants points per minute.
    """
    spans: list[Span] = []
    widths = [w for w in sorted(ROLLUP_WIDTHS, reverse=True) if w <= max_width]
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
    for width in ROLLUP_WIDTHS:
        cur = await conn.execute(
            "SELECT max(bucket) FROM metric_rollups WHERE width_s = %s", (width,)
        )
        row = await cur.fetchone()
        out[width] = row[0].timestamp() if row and row[0] is not None else None
    return out


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


async def totals(
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
    """Merged sketches of closed hours, per query shape; bounded, oldest entries dropped.

    An hour's entry is valid while its rows' count and newest ``updated_at`` are unchanged
    (a late event rewrites the hour row and so invalidates it).
    """

    max_entries: int = 20_000
    entries: dict[tuple[Any, ...], tuple[tuple[int, float], GroupAggs]] = field(
        default_factory=dict
    )
    hits: int = 0
    misses: int = 0

    def get(self, key: tuple[Any, ...], version: tuple[int, float]) -> GroupAggs | None:
        found = self.entries.get(key)
        if found is not None and found[0] == version:
            self.hits += 1
            return found[1]
        self.misses += 1
        return None

    def put(self, key: tuple[Any, ...], version: tuple[int, float], aggs: GroupAggs) -> None:
        if len(self.entries) >= self.max_entries:
            for old in list(self.entries)[: self.max_entries // 10]:
                del self.entries[old]
        self.entries[key] = (version, aggs)


async def _fetch_sketches(
    conn: Conn,
    flt: SeriesFilter,
    spans: Sequence[Span],
    by: Sequence[str],
    extra: sql.Composable | None = None,
    extra_params: dict[str, Any] | None = None,
) -> list[tuple[Any, ...]]:
    where, params = _where(flt, spans)
    keys = _group_columns(by, params)
    if extra is not None:
        where = sql.SQL("{} AND {}").format(where, extra)
        params.update(extra_params or {})
    select = [*keys, sql.SQL("extract(epoch FROM r.bucket)::float8"), sql.SQL("r.sketch")]
    query = sql.SQL(
        "SELECT {select} FROM metric_rollups r JOIN series s ON s.id = r.series_id "
        "WHERE {where} AND r.sketch IS NOT NULL"
    ).format(select=sql.SQL(", ").join(select), where=where)
    cur = await conn.execute(query, params)
    return await cur.fetchall()


def _merge_rows(
    rows: Iterable[tuple[Any, ...]],
    n: int,
    step: int | None,
    out: dict[tuple[float | None, tuple[str, ...]], Agg],
) -> None:
    for row in rows:
        key = tuple(row[:n])
        bucket = float(row[n])
        at = floor_to(bucket, step) if step else None
        agg = out.get((at, key))
        blob = Agg.from_bytes(bytes(row[n + 1]))
        if agg is None:
            out[(at, key)] = blob
        else:
            agg.merge(blob)


async def sketches(
    conn: Conn,
    cache: HourCache,
    flt: SeriesFilter,
    spans: Sequence[Span],
    *,
    by: Sequence[str] = (),
    step: int | None = None,
) -> dict[tuple[float | None, tuple[str, ...]], Agg]:
    """Merged sketches per (step start or None, group key).

    ``step`` must be a multiple of every span width that is used (3600 or 86400 with hour
    spans, 60 with minute spans). Closed hours come from ``cache`` when unchanged.
    """
    out: dict[tuple[float | None, tuple[str, ...]], Agg] = {}
    n = len(by)
    hour_spans = [s for s in spans if s.width_s == HOUR]
    fine_spans = [s for s in spans if s.width_s != HOUR]
    if fine_spans:
        _merge_rows(await _fetch_sketches(conn, flt, fine_spans, by), n, step, out)
    if not hour_spans:
        return out
    where, params = _where(flt, hour_spans)
    cur = await conn.execute(
        sql.SQL(
            "SELECT extract(epoch FROM r.bucket)::float8, count(*), "
            "extract(epoch FROM max(r.updated_at))::float8 "
            "FROM metric_rollups r JOIN series s ON s.id = r.series_id "
            "WHERE {where} AND r.sketch IS NOT NULL GROUP BY 1"
        ).format(where=where),
        params,
    )
    versions = {float(b): (int(c), float(u)) for b, c, u in await cur.fetchall()}
    shape = (flt.key(), tuple(by))
    hours: dict[float, GroupAggs] = {}
    missing: list[float] = []
    for hour, version in versions.items():
        cached = cache.get((shape, hour), version)
        if cached is None:
            missing.append(hour)
        else:
            hours[hour] = cached
    if missing:
        fresh: dict[tuple[float | None, tuple[str, ...]], Agg] = {}
        rows = await _fetch_sketches(
            conn,
            flt,
            hour_spans,
            by,
            sql.SQL("r.bucket = ANY(%(hours)s)"),
            {"hours": [_ts(h) for h in missing]},
        )
        _merge_rows(rows, n, HOUR, fresh)
        for hour in missing:
            hours[hour] = {}
        for (at, key), agg in fresh.items():
            assert at is not None
            hours[at][key] = agg
        for hour in missing:
            cache.put((shape, hour), versions[hour], hours[hour])
    for hour, groups in hours.items():
        at = floor_to(hour, step) if step else None
        for key, agg in groups.items():
            target = out.get((at, key))
            if target is None:
                out[(at, key)] = agg.copy()
            else:
                target.merge(agg)
    return out


async def latest_values(
    conn: Conn, flt: SeriesFilter, since: float, *, by: Sequence[str] = ()
) -> list[tuple[tuple[str, ...], float, float]]:
    """Per series: its most recent window's mean, as (group key, window end, value).

    Rollups keep no "last value"; for gauges (CPU %, quota %) the mean of the newest window
    is the closest stored figure. Every width counts: the newest window end wins, the finest
    width on ties.
    """
    params: dict[str, Any] = {"since": _ts(since)}
    keys = _group_columns(by, params)
    query = sql.SQL(
        "SELECT DISTINCT ON (s.id) {keys}, "
        "extract(epoch FROM r.bucket)::float8 + r.width_s, r.sum / r.count "
        "FROM metric_rollups r JOIN series s ON s.id = r.series_id "
        "WHERE {where} AND r.bucket >= %(since)s AND r.count > 0 "
        "ORDER BY s.id, r.bucket + make_interval(secs => r.width_s) DESC, r.width_s"
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
    conn: Conn, flt: SeriesFilter, spans: Sequence[Span]
) -> list[tuple[int, float, int, int]]:
    """Per stored window (width, bucket start): summed count and errors over the series."""
    where, params = _where(flt, spans)
    query = sql.SQL(
        "SELECT r.width_s, extract(epoch FROM r.bucket)::float8, sum(r.count)::bigint, "
        "sum(r.errors)::bigint FROM metric_rollups r JOIN series s ON s.id = r.series_id "
        "WHERE {where} GROUP BY 1, 2"
    ).format(where=where)
    cur = await conn.execute(query, params)
    return [(int(w), float(b), int(c), int(e)) for w, b, c, e in await cur.fetchall()]
