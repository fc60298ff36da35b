"""The data lifecycle on the real TimescaleDB: rollup tiers leave by whole chunks, the day tier is
the merge of its hour rows, every other table is pruned to its bound, and ``qesmon maintain``
changes nothing the second time (cli/maintain.py, migrations/0500_rollup_tiers.sql)."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from api import store
from cli.maintain import Cutoffs, run_pass
from pipeline.sinks import RollupWriter
from qesmon import tiers
from qesmon.errors import ConfigError
from qesmon.migrate import MIGRATIONS_DIR, apply_migrations
from qesmon.series import Series, WindowResult
from qesmon.settings import Settings, duration
from qesmon.sketch import Agg, nearest_rank
from tests.conftest import _with_database
from tests.support.processes import settings_env
from tests.support.settings import replace_settings

HOUR, DAY = 3600, 86400
Db = psycopg.Connection[tuple[Any, ...]]

#: short retentions, so that a few rows per tier are enough to see each cutoff
SHORT = dict(
    rollups_10s=2.0 * HOUR, rollups_1m=1.0 * DAY, rollups_1h=3.0 * DAY, rollups_1d=10.0 * DAY
)


def agg(values: Sequence[float], users: Sequence[str] = (), errors: int = 0) -> Agg:
    out = Agg()
    for i, value in enumerate(values):
        out.add(value, i >= errors, users[i % len(users)] if users else None)
    return out


def write(settings: Settings, results: Sequence[WindowResult], **kwargs: Any) -> None:
    writer = RollupWriter(settings.database_url, **kwargs)
    try:
        writer.write(results)
    finally:
        writer.close()


def window(series: Series, width: int, at: float, values: Sequence[float]) -> WindowResult:
    return WindowResult(series, width, math.floor(at / width) * width, agg(values))


def chunks(db: Db, table: str) -> list[tuple[datetime, datetime]]:
    return [
        (r[0], r[1])
        for r in db.execute(
            "SELECT range_start, range_end FROM timescaledb_information.chunks"
            " WHERE hypertable_name = %s ORDER BY range_start",
            (table,),
        )
    ]


def buckets(db: Db, table: str) -> list[float]:
    rows = db.execute(f"SELECT extract(epoch FROM bucket)::float8 FROM {table} ORDER BY 1")
    return [float(r[0]) for r in rows]


# -- settings ----------------------------------------------------------------------------------


def test_retention_settings_read_durations_and_refuse_what_would_drop_an_updatable_window() -> None:
    s = Settings.from_env({"RETENTION_10S": "2d", "RETENTION_1H": "90d", "RETENTION_1D": "3y"})
    assert (s.retention.rollups_10s, s.retention.rollups_1d) == (2 * DAY, 3 * 365 * DAY)
    assert s.retention.rollups_1m == 4 * DAY  # the default
    # the shortest base retention: a minute (the widest base window) + lateness + the margin
    assert tiers.min_horizon(tiers.BASE, 30.0) == 60 + 30 + tiers.MARGIN
    Settings.from_env({"RETENTION_10S": "3690"})
    with pytest.raises(ConfigError, match=r"RETENTION_10S must be at least 3690s"):
        Settings.from_env({"RETENTION_10S": "3689"})
    # the lateness counts: a longer one needs a longer retention
    with pytest.raises(ConfigError, match="RETENTION_10S"):
        Settings.from_env({"RETENTION_10S": "3690", "ALLOWED_LATENESS_SECONDS": "31"})
    # the hour rows feed the day tier: kept until the day is final
    with pytest.raises(ConfigError, match=r"RETENTION_1H must be at least"):
        Settings.from_env({"RETENTION_10S": "2h", "RETENTION_1M": "2h", "RETENTION_1H": "1d"})
    with pytest.raises(ConfigError, match="RETENTION_1M must be >= RETENTION_10S"):
        Settings.from_env({"RETENTION_10S": "8d"})
    with pytest.raises(ConfigError, match="RETENTION_ALERTS must be at least 1d"):
        Settings.from_env({"RETENTION_ALERTS": "12h"})
    for bad in ("", "d", "0d", "-1d", "1e9", "1.d", "2 days", "nan", "inf", "1001y", "9" * 400):
        with pytest.raises(ValueError):
            duration(bad)
    assert duration(" 1.5h ") == 5400 and duration("2w") == 14 * DAY and duration("90") == 90


# -- rollup tiers --------------------------------------------------------------------------------


def test_rows_older_than_each_tiers_retention_leave_as_whole_chunks(
    settings: Settings, db: Db
) -> None:
    s = replace_settings(settings, retention=SHORT)
    lateness = s.pipeline.allowed_lateness
    now = time.time()
    cpu = Series("cpu_usage", "system", "t-1", (("host", "a"),))
    old_young = {10: (8 * HOUR, 30 * 60), 60: (3 * DAY, 2 * HOUR), 3600: (400 * DAY, 2 * DAY)}
    write(
        s, [window(cpu, w, now - age, [1.0, 2.0]) for w, ages in old_young.items() for age in ages]
    )
    before = {t.name: chunks(db, t.table) for t in tiers.TIERS}

    report = run_pass(s)

    assert report.ok, report.errors
    cut = Cutoffs.at(datetime.fromtimestamp(now, UTC), s.retention, lateness)
    for tier in tiers.TIERS:
        kept = chunks(db, tier.table)
        cutoff = cut.tiers[tier.name]
        assert all(end > cutoff for _, end in kept), (tier.name, kept)
        if tier.name != "1d":  # the day rows are made by the pass itself
            assert [c for c in before[tier.name] if c[1] > cutoff] == kept, tier.name
    for width, (_, young) in old_young.items():
        table = tiers.tier_for(width).table
        assert len(before[tiers.tier_for(width).name]) == 2, table  # an old and a young chunk
        assert buckets(db, table) == [math.floor((now - young) / width) * width], table
        assert report.summary["dropped"][tiers.tier_for(width).name]["chunks"] == 1
    # the day tier: the 400-day-old day was merged, then dropped with its chunk; the young one
    # (two days ago, final) stays
    assert buckets(db, "metric_rollups_1d") == [math.floor((now - 2 * DAY) / DAY) * DAY]
    assert report.summary["dropped"]["1d"]["chunks"] == 1
    assert any(line.startswith("drop 1 chunk(s) of tier 10s") for line in report.lines)


def test_at_the_shortest_retention_no_younger_window_goes_and_late_updates_still_land(
    settings: Settings, db: Db
) -> None:
    lateness = settings.pipeline.allowed_lateness
    shortest = tiers.min_horizon(tiers.BASE, lateness)
    s = replace_settings(settings, retention=dict(rollups_10s=shortest))
    s.validate()
    # one-minute chunks: one of them straddles the cutoff, with windows on both sides of it
    interval = db.execute(
        "SELECT time_interval FROM timescaledb_information.dimensions"
        " WHERE hypertable_name = 'metric_rollups_10s'"
    ).fetchone()
    assert interval is not None
    db.execute("SELECT set_chunk_time_interval('metric_rollups_10s', INTERVAL '1 minute')")
    try:
        now = time.time()
        horizon = now - shortest
        series = Series("http_request", "performance", "t-1", ())
        # closed, but its end + the allowed lateness still ahead: a late event may update it
        open_start = math.floor(now / 10) * 10 - 10
        assert open_start + 10 <= now < open_start + 10 + lateness
        around = [window(series, 10, horizon + d, [1.0]) for d in range(-180, 180, 10)]
        old = [window(series, 10, now - age, [1.0]) for age in (2 * HOUR, 3 * HOUR)]
        write(s, [*old, *around, WindowResult(series, 10, open_start, agg([1.0, 2.0]))])

        report = run_pass(s)

        assert report.ok and report.summary["dropped"]["10s"]["chunks"] >= 4, report.summary
        kept = set(buckets(db, "metric_rollups_10s"))
        starts = [r.start for r in around]
        assert {b for b in starts if b >= horizon + 1} <= kept  # the pass ran a moment later
        assert not {b for b in starts if b + 10 <= horizon - 61} & kept  # a chunk at most
        assert not {r.start for r in old} & kept
        # the late event arrives: the pipeline writes the window's full new value (revision 1)
        late = WindowResult(series, 10, open_start, agg([1.0, 2.0, 30.0]), revision=1)
        write(s, [late])
        row = db.execute(
            "SELECT count, max FROM metric_rollups_10s WHERE bucket = to_timestamp(%s)",
            (open_start,),
        ).fetchone()
        assert row == (3, 30.0)
    finally:
        db.execute("SELECT set_chunk_time_interval('metric_rollups_10s', %s)", interval)


# -- the day tier ----------------------------------------------------------------------------


def test_day_rows_are_the_merge_of_their_hour_rows_once_the_day_is_final(
    settings: Settings, db: Db
) -> None:
    # a day is final once its end + the allowed lateness + the margin are past
    lateness = settings.pipeline.allowed_lateness
    newest_final = math.floor((time.time() - DAY - lateness - tiers.MARGIN) / DAY) * DAY
    days = [newest_final - DAY, newest_final, newest_final + DAY]  # the last one: not final
    small = Series("signup", "business_event", "t-1", ())
    big = Series("http_request", "performance", "t-1", (("endpoint", "/sign"),))
    truth: dict[tuple[str, float], list[float]] = {}
    results = []
    for d, day in enumerate(days):
        for hour in (1, 7, 23):
            start = day + hour * HOUR
            few = [float(d * 100 + hour + k) for k in range(5)]
            many = [
                ((d * 7919 + hour * 104729 + k * 15485863) % 100_003) / 100.0 for k in range(300)
            ]
            users = [f"u{(hour * 7 + k) % 40}" for k in range(5)]
            results.append(WindowResult(small, HOUR, start, agg(few, users, errors=1)))
            results.append(WindowResult(big, HOUR, start, agg(many)))
            truth.setdefault(("small", day), []).extend(few)
            truth.setdefault(("big", day), []).extend(many)
    write(settings, results)

    report = run_pass(settings)

    assert report.ok, report.errors
    assert report.summary["merged_days"] == {"rows": 4, "days": 2}
    rows = {
        (r[0], r[1]): r[2:]
        for r in db.execute(
            "SELECT s.name, extract(epoch FROM d.bucket)::float8, d.count, d.errors, d.sum, d.min,"
            " d.max, d.p50, d.p95, d.p99, d.distinct_users, d.sketch, d.updated_at"
            " FROM metric_rollups_1d d JOIN series s ON s.id = d.series_id"
        )
    }
    assert set(rows) == {(n, day) for n in ("signup", "http_request") for day in days[:2]}
    for day in days[:2]:
        values = sorted(truth[("small", day)])
        count, errors, total, low, high, p50, p95, p99, users, sketch, _ = rows[("signup", day)]
        assert (count, errors, total, low, high) == (15, 3, sum(values), values[0], values[-1])
        assert (p50, p95, p99) == tuple(nearest_rank(values, q) for q in (0.5, 0.95, 0.99))
        hours = {(h * 7 + k) % 40 for h in (1, 7, 23) for k in range(5)}
        assert users == len(hours)
        assert Agg.from_bytes(sketch).quantiles() == (p50, p95, p99)
        # past EXACT_LIMIT the merge is a KLL sketch: within its rank error of the exact value
        values = sorted(truth[("big", day)])
        count, _, total, low, high, p50, *_ = rows[("http_request", day)]
        assert (count, low, high) == (900, values[0], values[-1])
        assert total == pytest.approx(sum(values))
        rank = sum(v <= p50 for v in values) / len(values)
        assert abs(rank - 0.5) < 0.03
    # a day row's updated_at is its newest hour row's: what a backfill is compared with
    newest = db.execute(
        "SELECT max(updated_at) FROM metric_rollups_1h h JOIN series s ON s.id = h.series_id"
        " WHERE s.name = 'signup' AND h.bucket >= to_timestamp(%s) AND h.bucket < to_timestamp(%s)",
        (days[0], days[0] + DAY),
    ).fetchone()
    assert newest is not None and rows[("signup", days[0])][-1] == newest[0]

    # a backfill changes an hour of a final day: that day row (only) is merged again
    write(settings, [WindowResult(small, HOUR, days[0] + 2 * HOUR, agg([1000.0]))])
    again = run_pass(settings)
    assert again.summary["merged_days"] == {"rows": 1, "days": 1}
    row = db.execute(
        "SELECT count, max FROM metric_rollups_1d d JOIN series s ON s.id = d.series_id"
        " WHERE s.name = 'signup' AND d.bucket = to_timestamp(%s)",
        (days[0],),
    ).fetchone()
    assert row == (16, 1000.0)
    assert run_pass(settings).summary["merged_days"] == {"rows": 0, "days": 0}


def test_a_day_with_an_hour_sketch_that_does_not_read_keeps_its_sums_and_no_percentiles(
    settings: Settings, db: Db
) -> None:
    lateness = settings.pipeline.allowed_lateness
    day = math.floor((time.time() - DAY - lateness - tiers.MARGIN) / DAY) * DAY  # a final day
    series = Series("signup", "business_event", "", ())
    write(
        settings,
        [WindowResult(series, HOUR, day + h * HOUR, agg([float(h)], ["u1"])) for h in range(3)],
    )
    for blob in (b"", b"\x01garbage", Agg().to_bytes()[:20]):
        db.execute(  # as a writer would: updated_at moves, so the day is merged again
            "UPDATE metric_rollups_1h SET sketch = %s, updated_at = now()"
            " WHERE bucket = to_timestamp(%s)",
            (blob, day),
        )
        report = run_pass(settings)
        assert report.ok, report.errors
        row = db.execute(
            "SELECT count, sum, p50, distinct_users, sketch FROM metric_rollups_1d"
        ).fetchone()
        assert row == (3, 3.0, None, 1, None)


# -- the migration ---------------------------------------------------------------------------


@pytest.fixture
def scratch_url(base_settings: Settings) -> Iterator[str]:
    server = os.environ["DATABASE_URL"]
    name = f"qesmon_ret_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield _with_database(server, name)
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_migration_carries_every_row_over_and_the_views_answer_the_same(
    scratch_url: str, tmp_path: Path
) -> None:
    before_tiers = tmp_path / "migrations"
    before_tiers.mkdir()
    for path in MIGRATIONS_DIR.glob("*.sql"):
        if path.name < "0500":
            shutil.copy(path, before_tiers)
    apply_migrations(scratch_url, before_tiers)
    role = f"qesmon_reader_{uuid.uuid4().hex[:8]}"
    now = math.floor(time.time() / HOUR) * HOUR
    with psycopg.connect(scratch_url, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" NOLOGIN')
        conn.execute(f'GRANT SELECT ON metrics_rollup TO "{role}"')
        ids = [
            r[0]
            for r in conn.execute(
                "INSERT INTO series (name, type, tenant_id, labels) VALUES ('http_request',"
                " 'performance', 't-1', %s), ('signup', 'business_event', '', '{}')"
                " RETURNING id",
                (Jsonb({"endpoint": "/sign"}),),
            )
        ]
        for n, width in enumerate((10, 60, 3600) * 40):
            values = [float(n + k) for k in range(n % 7 + 1)]
            a = agg(values, [f"u{k}" for k in range(n % 3)])
            p50, p95, p99 = a.quantiles()
            conn.execute(
                "INSERT INTO metric_rollups (bucket, width_s, series_id, count, errors, sum, min,"
                " max, p50, p95, p99, distinct_users, sketch) VALUES"
                " (to_timestamp(%s), %s, %s, %s, 0, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    now - width * n,
                    width,
                    ids[n % 2],
                    a.count,
                    a.sum,
                    a.min,
                    a.max,
                    p50,
                    p95,
                    p99,
                    a.distinct_users(),
                    a.to_bytes(),
                ),
            )

        def answers() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
            view = conn.execute(
                "SELECT * FROM metrics_rollup ORDER BY bucket, width_s, name"
            ).fetchall()
            raw = conn.execute(
                "SELECT * FROM metric_rollups ORDER BY series_id, width_s, bucket"
            ).fetchall()
            return view, raw

        before = answers()
    try:
        assert "0500_rollup_tiers" in apply_migrations(scratch_url)
        with psycopg.connect(scratch_url, autocommit=True) as conn:
            after = answers()
            counts = {
                t.table: conn.execute(f"SELECT count(*) FROM {t.table}").fetchone()
                for t in tiers.TIERS
            }
            granted = conn.execute(
                "SELECT has_table_privilege(%s, 'metrics_rollup', 'SELECT')", (role,)
            ).fetchone()
            kinds = dict(
                conn.execute(
                    "SELECT relname, relkind FROM pg_class"
                    " WHERE relname IN ('metric_rollups', 'metrics_rollup')"
                ).fetchall()
            )
        assert len(before[0]) == 120 and after == before
        assert counts == {
            "metric_rollups_10s": (40,),
            "metric_rollups_1m": (40,),
            "metric_rollups_1h": (40,),
            "metric_rollups_1d": (0,),
        }
        assert granted == (True,)  # metrics_rollup was replaced in place: Grafana's grant stays
        assert kinds == {"metric_rollups": "v", "metrics_rollup": "v"}
    finally:
        with psycopg.connect(scratch_url, autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')


def test_a_query_naming_a_width_reads_only_that_tiers_chunks(settings: Settings, db: Db) -> None:
    now = time.time()
    series = Series("cpu_usage", "system", "", ())
    write(settings, [window(series, w, now - 2 * HOUR, [1.0]) for w in (10, 60, 3600)])
    db.execute(
        "INSERT INTO metric_rollups_1d (bucket, width_s, series_id, count, errors, sum, min, max)"
        " SELECT time_bucket('1 day', now()), 86400, id, 1, 0, 1, 1, 1 FROM series"
    )
    names = {
        t.width: {
            r[0]
            for r in db.execute(
                "SELECT chunk_name FROM timescaledb_information.chunks WHERE hypertable_name = %s",
                (t.table,),
            )
        }
        for t in tiers.TIERS
    }
    for width in names:
        plan = "\n".join(
            r[0]
            for r in db.execute(
                "EXPLAIN SELECT sum(count) FROM metrics_rollup WHERE width_s = %s"
                " AND bucket > now() - interval '1 day'",
                (width,),
            )
        )
        read = {w for w, chunk_names in names.items() if any(c in plan for c in chunk_names)}
        assert read == {width}, plan


# -- the other tables ------------------------------------------------------------------------


def _alert(db: Db, state: str, resolved_days_ago: float | None, started_days_ago: float) -> int:
    row = db.execute(
        "INSERT INTO alerts (fingerprint, rule_id, rule_name, severity, state, started_at,"
        " resolved_at) VALUES (%s, 'r', 'rule', 'warning', %s, now() - %s * interval '1 day',"
        " now() - %s * interval '1 day') RETURNING id",
        (uuid.uuid4().hex, state, started_days_ago, resolved_days_ago),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _outbox(db: Db, alert: int | None, status: str, days_ago: float) -> int:
    row = db.execute(
        "INSERT INTO notifier_outbox (notification_key, channel, kind, alert_id, group_key,"
        " context, status, created_at, next_attempt_at) VALUES (%s, 'webhook', 'firing', %s, 'g',"
        " '{}', %s,"
        " now() - %s * interval '1 day', now()) RETURNING id",
        (uuid.uuid4().hex, alert, status, days_ago),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _ids(db: Db, table: str, key: str = "id") -> set[Any]:
    return {r[0] for r in db.execute(f"SELECT {key} FROM {table}")}


def test_every_other_table_is_pruned_to_its_bound_never_open_alerts_or_pending_notices(
    settings: Settings, db: Db
) -> None:
    # defaults: alerts 90d, deliveries and outbox 30d, notifier state 7d, audit log 365d
    old_resolved = _alert(db, "resolved", 100, 101)
    young_resolved = _alert(db, "resolved", 10, 11)
    open_old = _alert(db, "firing", None, 200)
    old_but_pending = _alert(db, "resolved", 100, 101)
    for alert in (old_resolved, open_old):
        db.execute(
            "INSERT INTO alert_events (alert_id, fingerprint, from_state, to_state, at)"
            " SELECT id, fingerprint, 'pending', 'firing', started_at FROM alerts WHERE id = %s",
            (alert,),
        )
        db.execute(
            "INSERT INTO notifier_episodes (alert_id, fingerprint) VALUES (%s, 'f')", (alert,)
        )
    _outbox(db, old_resolved, "sent", 100)  # goes with its alert
    test_notice = _outbox(db, None, "sent", 40)
    _outbox(db, open_old, "given_up", 40)  # done: its alert being open does not matter
    pending = _outbox(db, old_but_pending, "pending", 100)
    recent = _outbox(db, young_resolved, "failed", 5)
    for key_of, days in ((test_notice, 40), (pending, 40), (recent, 5)):
        db.execute(
            "INSERT INTO deliveries (notification_key, channel, attempt, status, created_at)"
            " SELECT notification_key, channel, 1, 'failed', now() - %s * interval '1 day'"
            " FROM notifier_outbox WHERE id = %s",
            (days, key_of),
        )
    db.execute(
        "INSERT INTO notifier_seen_transitions (key, seen_at) VALUES"
        " ('old', now() - interval '10 days'), ('young', now() - interval '1 day')"
    )
    db.execute(
        "INSERT INTO notifier_timers (alert_id, kind, level, due_at, status) VALUES"
        " (%(young)s, 'repeat', 1, now(), 'fired'), (%(open)s, 'repeat', 1, now(), 'fired'),"
        " (%(open)s, 'repeat', 2, now(), 'pending'), (%(old)s, 'escalate', 1, now(), 'cancelled')",
        {"young": young_resolved, "open": open_old, "old": old_resolved},
    )
    db.execute(
        "INSERT INTO audit_log (at, action) VALUES (now() - interval '400 days', 'configure'),"
        " (now() - interval '10 days', 'test')"
    )
    deliveries = {r[0]: r[1] for r in db.execute("SELECT notification_key, id FROM deliveries")}
    key = {
        o: r[0]
        for o in (test_notice, pending, recent)
        for r in db.execute("SELECT notification_key FROM notifier_outbox WHERE id = %s", (o,))
    }

    report = run_pass(settings, batch=1)  # one row a statement: the batches loop

    assert report.ok, report.errors
    assert _ids(db, "alerts") == {young_resolved, open_old, old_but_pending}
    assert {r[0] for r in db.execute("SELECT alert_id FROM alert_events")} == {open_old}
    assert _ids(db, "notifier_episodes", "alert_id") == {open_old}
    assert _ids(db, "notifier_outbox") == {pending, recent}
    assert _ids(db, "deliveries") == {deliveries[key[pending]], deliveries[key[recent]]}
    assert _ids(db, "notifier_seen_transitions", "key") == {"young"}
    timers = {(r[0], r[1]) for r in db.execute("SELECT alert_id, status FROM notifier_timers")}
    assert timers == {(open_old, "fired"), (open_old, "pending")}
    assert {r[0] for r in db.execute("SELECT action FROM audit_log")} == {"test"}
    assert report.summary["deleted"] == {
        "alerts": 1,
        "deliveries": 1,
        "notifier_outbox": 2,
        "notifier_seen_transitions": 1,
        "notifier_timers": 1,
        "audit_log": 1,
        "series": 0,
    }
    assert set(run_pass(settings).summary["deleted"].values()) == {0}


def test_series_without_rollups_leave_and_a_writer_never_writes_under_a_deleted_id(
    settings: Settings, db: Db
) -> None:
    now = time.time()
    kept, gone, fresh = (Series(n, "custom", "t-1", ()) for n in ("kept", "gone", "fresh"))
    writer = RollupWriter(settings.database_url)  # caches ids for SERIES_RECHECK_SECONDS
    expired = RollupWriter(settings.database_url, recheck=0.0)  # its cache is always too old
    try:
        for w in (writer, expired):  # both cache the three ids
            w.write([window(s, 10, now - 60, [1.0]) for s in (kept, gone, fresh)])
        ids = dict(db.execute("SELECT name, id FROM series").fetchall())
        stamp = dict(db.execute("SELECT name, resolved_at FROM series").fetchall())
        # a cached id is not looked up again: resolved_at stays; an expired one refreshes it
        writer.write([window(kept, 10, now - 50, [1.0])])
        assert db.execute("SELECT resolved_at FROM series WHERE name = 'kept'").fetchone() == (
            stamp["kept"],
        )
        expired.write([window(kept, 10, now - 50, [1.0])])
        later = db.execute("SELECT resolved_at FROM series WHERE name = 'kept'").fetchone()
        assert later is not None and later[0] > stamp["kept"]
        # 'gone' and 'fresh' lose their rollups; 'kept' and 'gone' were last looked up long ago
        for tier in tiers.TIERS:
            db.execute(f"DELETE FROM {tier.table} WHERE series_id <> %s", (ids["kept"],))
        db.execute(
            "UPDATE series SET resolved_at = now() - interval '4 years' WHERE name <> 'fresh'"
        )

        report = run_pass(settings)

        assert report.summary["deleted"]["series"] == 1
        assert dict(db.execute("SELECT name, id FROM series").fetchall()) == {
            "kept": ids["kept"],  # it still has rows
            "fresh": ids["fresh"],  # looked up lately: a writer may hold its id
        }
        # a writer whose cache is older than the recheck looks the series up again: a new id,
        # and its rows are seen through the views (no row under a dead id)
        expired.write([window(gone, 10, now - 40, [5.0])])
        new_id = db.execute("SELECT id FROM series WHERE name = 'gone'").fetchone()
        assert new_id is not None and new_id[0] not in ids.values()
        assert db.execute("SELECT count FROM metrics_rollup WHERE name = 'gone'").fetchall() == [
            (1,)
        ]
        orphans = db.execute(
            "SELECT count(*) FROM metric_rollups r LEFT JOIN series s ON s.id = r.series_id"
            " WHERE s.id IS NULL"
        ).fetchone()
        assert orphans == (0,)
    finally:
        writer.close()
        expired.close()


# -- the command -----------------------------------------------------------------------------


def _state(db: Db) -> tuple[Any, ...]:
    return (
        {t.name: chunks(db, t.table) for t in tiers.TIERS},
        {t.name: buckets(db, t.table) for t in tiers.TIERS},
        _ids(db, "alerts"),
        _ids(db, "series"),
    )


def _maintain(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", "maintain", *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_qesmon_maintain_dry_run_changes_nothing_and_a_second_pass_nothing_more(
    settings: Settings, db: Db
) -> None:
    now = time.time()
    series = Series("cpu_usage", "system", "", ())
    write(settings, [window(series, 10, now - age, [1.0]) for age in (3 * DAY, 60)])
    _alert(db, "resolved", 100, 100)
    start = _state(db)

    dry = _maintain(settings, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would drop 1 chunk(s) of tier 10s" in dry.stdout
    assert "would delete 1 row(s) of alerts" in dry.stdout
    assert _state(db) == start
    assert db.execute("SELECT count(*) FROM maintenance").fetchone() == (0,)

    first = _maintain(settings)
    assert first.returncode == 0, first.stderr
    assert "drop 1 chunk(s) of tier 10s" in first.stdout and "would" not in first.stdout
    after = _state(db)
    assert after != start and after[2] == set()

    second = _maintain(settings)
    assert (second.returncode, second.stdout.strip()) == (0, "nothing to do"), second.stderr
    assert _state(db) == after
    row = db.execute("SELECT ok, error, summary->'deleted'->>'alerts' FROM maintenance").fetchone()
    assert row == (True, None, "0")

    refused = _maintain(settings, "--every", "0.5s")
    assert refused.returncode == 2 and "at least 1s" in refused.stderr


async def test_the_api_history_starts_at_the_oldest_row_of_any_tier_the_day_tier_included(
    settings: Settings, db: Db
) -> None:
    # the exporter's totals start there and read whole days from the day tier, so years of
    # history cost a row per series and day (tests/api/test_day_tier.py), not hours
    now = time.time()
    series = Series("signup", "business_event", "", ())
    write(settings, [window(series, HOUR, now - 10 * DAY, [1.0])])
    db.execute(
        "INSERT INTO metric_rollups_1d (bucket, width_s, series_id, count, errors, sum, min, max)"
        " SELECT time_bucket('1 day', now() - interval '2 years'), 86400, id, 1, 0, 1, 1, 1"
        " FROM series"
    )
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        oldest = await store.earliest_bucket(conn)
    day = db.execute("SELECT extract(epoch FROM min(bucket)) FROM metric_rollups_1d").fetchone()
    assert day is not None and oldest == float(day[0]) < now - 700 * DAY
