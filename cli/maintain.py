"""``qesmon maintain``: one pass of the data lifecycle, keeping every table and tier bounded.

A pass is idempotent (a second one right after changes nothing) and does, in order:

1. **day tier** — merges the hour rows of every final day (its end + ``ALLOWED_LATENESS_SECONDS``
   + :data:`qesmon.tiers.MARGIN` has passed) into one ``metric_rollups_1d`` row per series:
   sums added, sketches merged with :class:`qesmon.sketch.Agg` (exact merges). A day is merged
   again when one of its hour rows changed since (a backfill): a day row's ``updated_at`` is
   the newest ``updated_at`` of the hour rows it was merged from. In the same transaction,
   ``tenant_users`` gets the day's users per tenant (the merge of that tenant's day rows that
   saw users), which distinct-user counts read (:mod:`api.store`); so do the final hours of the
   last two days (again when their rows changed), and the days of the day tier without them.
   They leave with the day tier's retention and after two days.
2. **rollup tiers** — ``drop_chunks`` per tier: the whole chunks all of whose windows are older
   than the tier's retention (``RETENTION_10S`` ...). Hour rows are dropped only once their
   day is merged.
3. **tables** — batched deletes (at most :data:`BATCH` rows a statement, each statement its own
   transaction, so no lock is held for long), oldest first: resolved alerts with their history
   (``alert_events``, notices, episodes and timers go with them by foreign key; an alert with
   a notice still pending stays), delivery attempts (not those of a notice still pending),
   finished notices, the notifier's seen transitions and the spent timers of resolved alerts,
   the audit log. Open alerts and pending notices are never deleted.
4. **series** — rows no writer has looked up for longer than the longest retention and that no
   tier holds a row of (a writer looks its cached ids up again every
   :data:`~qesmon.tiers.SERIES_RECHECK_SECONDS`, so it never holds the id of a deleted series).
5. records the pass in the one-row table ``maintenance``, which ``/api/v1/metrics/health`` shows.

Each step runs even when an earlier one failed (a failure is logged and recorded, and the next
pass tries again). ``--dry-run`` prints what a pass would merge, drop and delete and changes
nothing; ``--every 10m`` runs a pass at once and then every 10 minutes (``qesmon up`` runs it
so). Two passes never run at once (an advisory lock; the second one skips).
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import orjson
import psycopg
from psycopg import sql

from qesmon import tiers
from qesmon.db import connect, describe
from qesmon.settings import RetentionSettings, Settings, format_duration
from qesmon.sketch import Agg

log = logging.getLogger(__name__)

#: rows one delete statement removes at most (each its own short transaction)
BATCH = 5_000
#: series merged into day rows per round trip (their hour sketches are held in memory)
DAY_SLICE = 500
#: a drop waits this long for a reader holding a chunk, then fails (the next pass retries)
LOCK_TIMEOUT = "10s"
_LOCK_ID = 7_420_191_016
#: before any rollup
_BEGINNING = datetime(1970, 1, 1, tzinfo=UTC)

Conn = psycopg.Connection[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class Prune:
    """Rows of one table past their bound: ``select`` gives their keys, oldest first, for
    ``%(cutoff)s``; ``recheck`` is tested again on each row as it is deleted (a concurrent
    writer may have changed it); ``setting`` names the retention."""

    table: str
    key: str
    select: str
    setting: str
    recheck: str = "true"


_NO_PENDING_NOTICE = (
    "NOT EXISTS (SELECT 1 FROM notifier_outbox o WHERE o.alert_id = a.id AND o.status = 'pending')"
)
PRUNES = (
    Prune(
        "alerts",
        "id",
        "SELECT a.id FROM alerts a WHERE a.state = 'resolved' AND a.resolved_at < %(cutoff)s"
        f" AND {_NO_PENDING_NOTICE} ORDER BY a.resolved_at",
        "alerts",
        recheck="state = 'resolved'",
    ),
    Prune(
        "deliveries",
        "id",
        "SELECT d.id FROM deliveries d WHERE d.created_at < %(cutoff)s AND NOT EXISTS ("
        "SELECT 1 FROM notifier_outbox o WHERE o.notification_key = d.notification_key"
        " AND o.channel = d.channel AND o.status = 'pending') ORDER BY d.created_at",
        "deliveries",
    ),
    Prune(
        "notifier_outbox",
        "id",
        "SELECT id FROM notifier_outbox WHERE status <> 'pending' AND created_at < %(cutoff)s"
        " ORDER BY created_at",
        "outbox",
        recheck="status <> 'pending'",
    ),
    Prune(
        "notifier_seen_transitions",
        "key",
        "SELECT key FROM notifier_seen_transitions WHERE seen_at < %(cutoff)s ORDER BY seen_at",
        "notifier_state",
    ),
    Prune(
        "notifier_timers",
        "id",
        "SELECT t.id FROM notifier_timers t JOIN alerts a ON a.id = t.alert_id"
        " WHERE t.status <> 'pending' AND a.state = 'resolved' AND a.resolved_at < %(cutoff)s",
        "notifier_state",
    ),
    Prune(
        "audit_log",
        "id",
        "SELECT id FROM audit_log WHERE at < %(cutoff)s ORDER BY at",
        "audit_log",
    ),
    Prune(
        "series",
        "id",
        "SELECT s.id FROM series s WHERE s.resolved_at < %(cutoff)s AND "
        + " AND ".join(
            f"NOT EXISTS (SELECT 1 FROM {t.table} r WHERE r.series_id = s.id)" for t in tiers.TIERS
        )
        + " ORDER BY s.resolved_at",
        "series",
        recheck="resolved_at < %(cutoff)s",
    ),
)


@dataclass(frozen=True, slots=True)
class Cutoffs:
    """What a pass at ``now`` keeps (pure, from the settings): per rollup tier the chunks
    ending after its cutoff, the days starting before ``days_final_before`` are final, and per
    :class:`Prune` setting the rows newer than its cutoff."""

    now: datetime
    tiers: dict[str, datetime]
    days_final_before: datetime
    tables: dict[str, datetime]
    #: hours starting before this are final (their end + the allowed lateness + MARGIN)
    hours_final_before: datetime

    @classmethod
    def at(cls, now: datetime, retention: RetentionSettings, lateness: float) -> Cutoffs:
        def ago(seconds: float) -> datetime:
            return now - timedelta(seconds=seconds)

        newest_final = ago(tiers.day_final_at(0, lateness))  # the latest final day starts before
        day = newest_final.replace(hour=0, minute=0, second=0, microsecond=0)
        tables = {
            p.setting: ago(getattr(retention, p.setting)) for p in PRUNES if p.setting != "series"
        }
        # a series is kept while any tier may hold a row of it
        tables["series"] = ago(max(retention.of(t) for t in tiers.TIERS))
        return cls(
            now=now,
            tiers={t.name: ago(retention.of(t)) for t in tiers.TIERS},
            days_final_before=day + timedelta(days=1),
            tables=tables,
            hours_final_before=ago(tiers.HOUR + lateness + tiers.MARGIN).replace(
                minute=0, second=0, microsecond=0
            ),
        )


@dataclass(slots=True)
class Report:
    """What a pass did (or, dry, would do): lines for a person, a summary for ``maintenance``."""

    dry_run: bool
    lines: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        line = ("would " if self.dry_run else "") + text
        self.lines.append(line)
        log.info("maintain: %s", line)

    def failed(self, step: str, exc: BaseException) -> None:
        problem = f"{step}: {describe(exc)}"
        self.errors.append(problem)
        log.warning("maintain: %s failed (the next pass tries again): %s", step, problem)

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(slots=True)
class _State:
    """How far the day tier got (the ``maintenance`` row): every day before
    ``days_final_before`` is merged as its hour rows were when they were last looked at, and
    hour rows updated after ``hours_checked_since`` are to be looked at again."""

    days_final_before: datetime | None = None
    hours_checked_since: datetime | None = None


def run_pass(settings: Settings, *, dry_run: bool = False, batch: int = BATCH) -> Report:
    """One maintenance pass (see the module docstring); ``dry_run`` changes nothing; ``batch``
    rows at most per delete statement."""
    report = Report(dry_run)
    with connect(settings.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
        row = conn.execute("SELECT pg_try_advisory_lock(%s), now()", (_LOCK_ID,)).fetchone()
        assert row is not None and isinstance(row[1], datetime)
        if not row[0]:
            report.lines.append("another pass is running: this one is skipped")
            log.info("maintain: %s", report.lines[-1])
            return report
        started = time.perf_counter()
        cut = Cutoffs.at(row[1], settings.retention, settings.pipeline.allowed_lateness)
        try:
            state = _read_state(conn)
            merged = _step(report, "merge days", lambda: _merge_days(conn, cut, state, report))
            _step(report, "users per tenant", lambda: _tenant_users(conn, cut, report))
            _step(report, "drop chunks", lambda: _drop_chunks(conn, cut, merged, report))
            for prune in PRUNES:
                _step(
                    report, f"prune {prune.table}", partial(_prune, conn, prune, cut, report, batch)
                )
            report.summary["seconds"] = round(time.perf_counter() - started, 3)
            if not dry_run:
                _record(conn, cut, report, merged)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
    return report


def _step(report: Report, name: str, action: Callable[[], Any]) -> Any:
    try:
        return action()
    except psycopg.Error as exc:
        report.failed(name, exc)
        return None


def _read_state(conn: Conn) -> _State:
    row = conn.execute("SELECT days_final_before, hours_checked_since FROM maintenance").fetchone()
    return _State(*row) if row else _State()


# -- 1. the day tier ---------------------------------------------------------------------------

_STALE_DAYS = """
SELECT c.day, array_agg(c.series_id ORDER BY c.series_id)
FROM (
    SELECT series_id, time_bucket('1 day', bucket) AS day, max(updated_at) AS newest
    FROM metric_rollups_1h
    WHERE bucket < %(before)s AND (bucket >= %(since_day)s OR updated_at > %(since)s)
    GROUP BY 1, 2
) c
LEFT JOIN metric_rollups_1d d
    ON d.series_id = c.series_id AND d.width_s = 86400 AND d.bucket = c.day
WHERE d.updated_at IS NULL OR d.updated_at < c.newest
GROUP BY c.day ORDER BY c.day
"""
_HOURS = """
SELECT series_id, count, errors, sum, min, max, distinct_users, sketch, updated_at
FROM metric_rollups_1h
WHERE bucket >= %(day)s AND bucket < %(day)s + interval '1 day' AND series_id = ANY(%(ids)s)
ORDER BY series_id, bucket
"""
_UPSERT_DAY = """
INSERT INTO metric_rollups_1d (bucket, width_s, series_id, count, errors, sum, min, max, p50,
                               p95, p99, distinct_users, sketch, updated_at)
VALUES (%s, 86400, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (series_id, width_s, bucket) DO UPDATE SET
    count = EXCLUDED.count, errors = EXCLUDED.errors, sum = EXCLUDED.sum, min = EXCLUDED.min,
    max = EXCLUDED.max, p50 = EXCLUDED.p50, p95 = EXCLUDED.p95, p99 = EXCLUDED.p99,
    distinct_users = EXCLUDED.distinct_users, sketch = EXCLUDED.sketch,
    updated_at = EXCLUDED.updated_at
"""


@dataclass(frozen=True, slots=True)
class HourRow:
    """The columns of an hour row that a day row is made of."""

    count: int
    errors: int
    sum: float
    min: float
    max: float
    distinct_users: int
    sketch: bytes | None
    updated_at: datetime


def day_row(hours: Sequence[HourRow]) -> tuple[Any, ...]:
    """A day's columns (count, errors, sum, min, max, p50, p95, p99, distinct_users, sketch,
    updated_at) from its hour rows: sums added, sketches merged. Should an hour row have no
    sketch that reads, the day has no percentiles or sketch and ``distinct_users`` is the
    largest hour's (a lower bound) — never an estimate passed off as exact."""
    agg = Agg()
    whole = True
    for hour in hours:
        try:
            if hour.sketch is None:
                raise ValueError("no sketch")
            agg.merge(Agg.from_bytes(hour.sketch))
        except (ValueError, RuntimeError, IndexError, struct.error) as exc:  # what garbage raises
            whole = False
            log.warning("maintain: an hour row's sketch does not read (%s): day without one", exc)
            break
    totals = (
        sum(h.count for h in hours),
        sum(h.errors for h in hours),
        sum(h.sum for h in hours),
        min(h.min for h in hours),
        max(h.max for h in hours),
    )
    newest = max(h.updated_at for h in hours)
    if not whole:
        users = max(h.distinct_users for h in hours)
        return (*totals, None, None, None, users, None, newest)
    return (*totals, *agg.quantiles(), agg.distinct_users(), agg.to_bytes(), newest)


def _merge_days(conn: Conn, cut: Cutoffs, state: _State, report: Report) -> _State:
    """Merge the final days whose day rows are missing or older than their hour rows; return
    the state to record once done."""
    params = {
        "before": cut.days_final_before,
        "since_day": state.days_final_before or _BEGINNING,
        "since": state.hours_checked_since or _BEGINNING,
    }
    days = conn.execute(_STALE_DAYS, params).fetchall()
    rows = sum(len(ids) for _, ids in days)
    if rows:
        first, last = days[0][0], days[-1][0]
        report.say(
            f"merge {rows} day row(s) of {len(days)} day(s) from the hour tier "
            f"({first:%Y-%m-%d} to {last:%Y-%m-%d})"
        )
    report.summary["merged_days"] = {"rows": rows, "days": len(days)}
    if not report.dry_run:
        for day, ids in days:
            # a day's rows and its users per tenant change together: a reader never sees one
            # without the other
            with conn.transaction():
                for i in range(0, len(ids), DAY_SLICE):
                    _merge_slice(conn, day, ids[i : i + DAY_SLICE])
                _tenant_users_of(conn, tiers.DAY, day)
    # hour rows written while this pass ran, or by a transaction older than it that commits
    # later, are looked at again by the next pass
    return _State(cut.days_final_before, cut.now - timedelta(seconds=tiers.MARGIN))


def _merge_slice(conn: Conn, day: datetime, ids: list[int]) -> None:
    hours = conn.execute(_HOURS, {"day": day, "ids": ids}).fetchall()
    rows = []
    for series_id, group in _by_series(hours):
        rows.append((day, series_id, *day_row([HourRow(*h[1:]) for h in group])))
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(_UPSERT_DAY, rows)


#: final hours whose users per tenant are kept (today's and yesterday's cold reads)
HOUR_USERS_KEPT = timedelta(days=2)
_TENANT_USERS = """
SELECT s.tenant_id, r.sketch FROM {table} r JOIN series s ON s.id = r.series_id
WHERE r.bucket = %s AND r.width_s = %s AND r.distinct_users > 0 AND r.sketch IS NOT NULL
"""
_STALE_HOURS = """
SELECT h.bucket FROM (
    SELECT bucket, max(updated_at) AS newest FROM metric_rollups_1h
    WHERE bucket >= %(since)s AND bucket < %(before)s GROUP BY bucket
) h
LEFT JOIN tenant_users_done d ON d.width_s = 3600 AND d.bucket = h.bucket
WHERE d.at IS NULL OR d.at < h.newest ORDER BY 1
"""


def _tenant_users_of(conn: Conn, width: int, bucket: datetime) -> None:
    """``tenant_users`` of one hour or day: per tenant, the merge of its rows of that bucket
    that saw users (the rows a reader of distinct users would merge itself), and the bucket
    marked done."""
    table = sql.Identifier(tiers.tier_for(width).table)
    unions: dict[str, Agg] = {}
    for tenant, blob in conn.execute(sql.SQL(_TENANT_USERS).format(table=table), (bucket, width)):
        try:
            agg = Agg.from_bytes(bytes(blob))
        except ValueError as exc:  # a row no reader could use either
            log.warning("maintain: a rollup's sketch does not read (%s): left out of users", exc)
            continue
        if tenant in unions:
            unions[tenant].merge(agg)
        else:
            unions[tenant] = agg
    conn.execute("DELETE FROM tenant_users WHERE width_s = %s AND bucket = %s", (width, bucket))
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO tenant_users (width_s, bucket, tenant_id, sketch) VALUES (%s, %s, %s, %s)",
            [(width, bucket, tenant, agg.to_bytes()) for tenant, agg in unions.items()],
        )
    conn.execute(
        "INSERT INTO tenant_users_done (width_s, bucket) VALUES (%s, %s)"
        " ON CONFLICT (width_s, bucket) DO UPDATE SET at = now()",
        (width, bucket),
    )


def _tenant_users(conn: Conn, cut: Cutoffs, report: Report) -> None:
    """``tenant_users`` for the days of the day tier that have none (rows written before
    migration 0700, or by other means than a pass) and for the final hours of the last two days
    that have none or changed since; none past the day tier's retention or two days."""
    keep_days = cut.tiers[tiers.TIERS[-1].name]
    keep_hours = cut.now - HOUR_USERS_KEPT
    days = conn.execute(
        "SELECT DISTINCT r.bucket FROM metric_rollups_1d r WHERE r.bucket >= %s AND NOT EXISTS"
        " (SELECT 1 FROM tenant_users_done d WHERE d.width_s = 86400 AND d.bucket = r.bucket)"
        " ORDER BY 1",
        (keep_days,),
    ).fetchall()
    hours = conn.execute(
        _STALE_HOURS, {"since": keep_hours, "before": cut.hours_final_before}
    ).fetchall()
    if days or hours:
        report.say(f"count the users per tenant of {len(days)} day(s) and {len(hours)} hour(s)")
    report.summary["tenant_users"] = {"days": len(days), "hours": len(hours)}
    if report.dry_run:
        return
    for width, buckets in ((tiers.DAY, days), (tiers.HOUR, hours)):
        for (bucket,) in buckets:
            with conn.transaction():
                _tenant_users_of(conn, width, bucket)
    with conn.transaction():
        for width, keep in ((tiers.DAY, keep_days), (tiers.HOUR, keep_hours)):
            for table in ("tenant_users", "tenant_users_done"):
                conn.execute(
                    sql.SQL("DELETE FROM {} WHERE width_s = %s AND bucket < %s").format(
                        sql.Identifier(table)
                    ),
                    (width, keep),
                )


def _by_series(rows: list[tuple[Any, ...]]) -> Iterator[tuple[int, list[tuple[Any, ...]]]]:
    start = 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or rows[i][0] != rows[start][0]:
            yield int(rows[start][0]), rows[start:i]
            start = i


# -- 2. the rollup tiers -----------------------------------------------------------------------


def _drop_chunks(conn: Conn, cut: Cutoffs, merged: _State | None, report: Report) -> None:
    dropped: dict[str, Any] = {}
    for tier in tiers.TIERS:
        cutoff = cut.tiers[tier.name]
        if tier.feeds != tier.width:  # the hour tier: only days merged by now
            done = merged.days_final_before if merged is not None else None
            if done is None:
                continue
            cutoff = min(cutoff, done)
        chunks = conn.execute(
            "SELECT chunk_schema || '.' || chunk_name, range_start, range_end"
            " FROM timescaledb_information.chunks"
            " WHERE hypertable_schema = 'public' AND hypertable_name = %s AND range_end <= %s"
            " ORDER BY range_start",
            (tier.table, cutoff),
        ).fetchall()
        if not report.dry_run and chunks:
            names = {
                str(r[0])
                for r in conn.execute(
                    "SELECT drop_chunks(%s::regclass, older_than => %s)", (tier.table, cutoff)
                )
            }
            chunks = [c for c in chunks if c[0] in names]
        if not chunks:
            continue
        first, last = chunks[0][1], chunks[-1][2]
        report.say(
            f"drop {len(chunks)} chunk(s) of tier {tier.name} ({tier.table}): windows from "
            f"{first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} UTC, older than "
            f"{format_duration(cut.now.timestamp() - cutoff.timestamp())}"
        )
        dropped[tier.name] = {
            "chunks": len(chunks),
            "from": first.isoformat(),
            "to": last.isoformat(),
        }
    report.summary["dropped"] = dropped


# -- 3. and 4. the tables ----------------------------------------------------------------------


def _prune(conn: Conn, prune: Prune, cut: Cutoffs, report: Report, batch: int) -> None:
    params = {"cutoff": cut.tables[prune.setting]}
    if report.dry_run:
        count = sql.SQL("SELECT count(*) FROM ({}) past").format(sql.SQL(prune.select))
        row = conn.execute(count, params).fetchone()
        deleted = int(row[0]) if row else 0
    else:
        delete = sql.SQL(
            "DELETE FROM {table} WHERE {key} IN ({select} LIMIT {batch}) AND {recheck}"
        ).format(
            table=sql.Identifier(prune.table),
            key=sql.Identifier(prune.key),
            select=sql.SQL(prune.select),
            batch=sql.Literal(batch),
            recheck=sql.SQL(prune.recheck),
        )
        deleted = 0
        while True:
            n = conn.execute(delete, params).rowcount
            deleted += n
            if n < batch:
                break
    report.summary.setdefault("deleted", {})[prune.table] = deleted
    if deleted:
        report.say(
            f"delete {deleted} row(s) of {prune.table} from before "
            f"{params['cutoff']:%Y-%m-%d %H:%M} UTC"
        )


# -- 5. the record -----------------------------------------------------------------------------

_RECORD = """
INSERT INTO maintenance (id, started_at, finished_at, ok, error, summary, days_final_before,
                         hours_checked_since)
VALUES (true, %(started)s, now(), %(ok)s, %(error)s, %(summary)s, %(days)s, %(hours)s)
ON CONFLICT (id) DO UPDATE SET
    started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at, ok = EXCLUDED.ok,
    error = EXCLUDED.error, summary = EXCLUDED.summary,
    days_final_before = coalesce(EXCLUDED.days_final_before, maintenance.days_final_before),
    hours_checked_since = coalesce(EXCLUDED.hours_checked_since, maintenance.hours_checked_since)
"""


def _record(conn: Conn, cut: Cutoffs, report: Report, merged: _State | None) -> None:
    state = merged or _State()
    conn.execute(
        _RECORD,
        {
            "started": cut.now,
            "ok": report.ok,
            "error": "; ".join(report.errors) or None,
            "summary": orjson.dumps(report.summary).decode(),
            "days": state.days_final_before,
            "hours": state.hours_checked_since,
        },
    )


# -- the command -------------------------------------------------------------------------------


def main(settings: Settings, *, dry_run: bool, every: float | None) -> int:
    """``qesmon maintain [--dry-run] [--every DURATION]``."""
    if every is None:
        try:
            report = run_pass(settings, dry_run=dry_run)
        except psycopg.Error as exc:
            print(f"qesmon maintain: {describe(exc)}")
            return 1
        print("\n".join(report.lines) or ("nothing to do" if report.ok else ""))
        for problem in report.errors:
            print(f"failed: {problem}")
        return 0 if report.ok else 1
    log.info("maintain: a pass every %s", format_duration(every))
    while True:
        try:
            run_pass(settings, dry_run=dry_run)
        except psycopg.Error as exc:  # the database is down: the next pass tries again
            log.warning("maintain: pass failed: %s", describe(exc))
        time.sleep(every)
