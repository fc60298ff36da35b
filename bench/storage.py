"""Bytes on disk per series and day for each rollup tier, and the steady state they add up to.

    . var/env.sh && .venv/bin/python bench/storage.py [--days 3] [--busy 2] [--quiet 20]

Creates a database of its own (dropped at the end) and writes ``--days`` days of event time,
ending now, through the pipeline's own windowing (:class:`pipeline.windows.ShardWindows`: 10 s,
1 min and 1 h windows, fed whole reads as columns) and writer
(:class:`pipeline.sinks.RollupWriter`), in two phases measured apart:

* ``--busy`` busy series: 300 events per 10 s (lognormal durations, 2 % errors, users drawn from
  5,000: every window in sketch mode, as ``http_request`` of a busy endpoint);
* ``--quiet`` quiet series: one event every ``--quiet-every`` seconds, no users (exact mode, as
  a business event or a gauge).

Then one ``qesmon maintain`` pass (:func:`cli.maintain.run_pass`) with the default retention
merges the final days into the day tier and drops each tier's chunks past its retention.

Printed per tier: rows and bytes on disk (``hypertable_size``: heap, TOAST and indexes of every
chunk) per kind of series, the bytes per row and per series per day, the mean sketch as
serialised and as stored (``pg_column_size``: after lz4); then what each tier holds after the
pass, and the steady state of 1,000 busy + 10,000 quiet series at the default retention,
*extrapolated* from the measured bytes per row: rows per series per day x (retention + one chunk
interval: a chunk is dropped only once all of it is past the retention, so this is the most a
tier holds) x bytes per row. The sketch format measured is named by the last commit of
``qesmon/sketch.py`` (and whether the working tree changes it).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from _machine import machine
from _scratch import scratch_database

from cli.maintain import run_pass
from pipeline.sinks import RollupWriter
from pipeline.windows import ShardWindows
from qesmon import tiers
from qesmon.columns import EventColumns
from qesmon.settings import RetentionSettings, Settings, format_duration

ROOT = Path(__file__).resolve().parent.parent
DAY = 86400
READ_SECONDS = 10  # event time per read fed to the windows (less than the allowed lateness)
BUSY_PER_10S = 300
TARGET = {"busy": 1_000, "quiet": 10_000}
FEW = 1_000
#: a first pass that only merges the days (nothing is old enough to go)
KEEP_ALL = RetentionSettings(
    rollups_10s=3650 * DAY, rollups_1m=3650 * DAY, rollups_1h=3650 * DAY, rollups_1d=3650 * DAY
)


def sketch_format() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("log", "-1", "--format=%h %s", "--", "qesmon/sketch.py")[:90]
    dirty = " + uncommitted changes" if git("status", "--porcelain", "qesmon/sketch.py") else ""
    return f"qesmon/sketch.py at {commit}{dirty}"


def reads(kind: str, n: int, start: float, end: float, every: float) -> list[EventColumns]:
    """The events of ``n`` series of ``kind`` in [start, end), as reads of READ_SECONDS."""
    rng = random.Random(kind)
    out = []
    t0 = start
    while t0 < end:
        t1 = min(end, t0 + READ_SECONDS)
        cols = EventColumns()
        for s in range(n):
            if kind == "busy":
                per = BUSY_PER_10S * (t1 - t0) / 10
                stamps = [t0 + (t1 - t0) * (i + rng.random()) / per for i in range(int(per))]
                labels: tuple[tuple[str, str], ...] = (("endpoint", f"/ep{s}"), ("method", "POST"))
                name, type_, users = "http_request", "performance", True
            else:
                first = t0 + (every - t0 % every) % every
                stamps = [first + i * every for i in range(int((t1 - first) // every) + 1)]
                stamps = [t for t in stamps if t < t1]
                labels = (("plan", f"plan-{s}"),)
                name, type_, users = "subscription_payment", "revenue", False
            k = len(stamps)
            cols.extend_columns(
                [name] * k,
                [type_] * k,
                [round(rng.lognormvariate(-2.5, 0.8), 4) for _ in range(k)],
                stamps,
                [f"tenant-{s % 25}"] * k,
                [f"u{rng.randrange(5000)}" for _ in range(k)] if users else [None] * k,
                [labels] * k,
                [rng.random() > 0.02 for _ in range(k)],
                stamps,
                ["0-0"] * k,
            )
        out.append(cols)
        t0 = t1
    return out


def write(url: str, kind: str, n: int, days: float, every: float) -> tuple[int, float]:
    """Window and write ``days`` days of ``n`` series; return (rows written, seconds)."""
    end = time.time() - 60
    start = end - days * DAY
    windows = ShardWindows(10, (60, 3600), wait=2.0, lateness=30.0)
    writer = RollupWriter(url)
    rows = 0
    started = time.perf_counter()
    try:
        day = start
        while day < end:  # a day of reads at a time keeps this process's memory flat
            for cols in reads(kind, n, day, min(end, day + DAY), every):
                assert not windows.add(cols), "late events: the workload must be in time order"
                windows.set_caught_up(False, time.time())
                results = windows.advance(time.time())
                for i in range(0, len(results), 2000):
                    writer.write(results[i : i + 2000])
                rows += len(results)
            day += DAY
        windows.set_caught_up(True, time.time())
        results = windows.advance(time.time() + 3 * 3600)  # the end: every window closes
        for i in range(0, len(results), 2000):
            writer.write(results[i : i + 2000])
        rows += len(results)
    finally:
        writer.close()
    return rows, time.perf_counter() - started


def measure(conn: psycopg.Connection[Any]) -> dict[str, dict[str, float]]:
    """Per tier: rows, bytes on disk, chunks and the chunk interval (after a VACUUM, as
    autovacuum leaves a table)."""
    conn.execute("VACUUM ANALYZE")
    out = {}
    for tier in tiers.TIERS:
        row = conn.execute(
            f"SELECT count(*), coalesce(hypertable_size('{tier.table}'), 0),"
            f" (SELECT count(*) FROM show_chunks('{tier.table}')),"
            "  (SELECT extract(epoch FROM time_interval) FROM timescaledb_information.dimensions"
            f"  WHERE hypertable_name = '{tier.table}') FROM {tier.table}"
        ).fetchone()
        assert row is not None
        out[tier.name] = dict(
            zip(("rows", "bytes", "chunks", "chunk"), map(float, row), strict=True)
        )
    return out


def chunk_overhead(conn: psycopg.Connection[Any]) -> dict[str, float]:
    """Per tier: the bytes of a chunk holding one row with a TOASTed sketch (its relations'
    first pages, free space and visibility maps): subtracted per chunk, so that a tier with few
    rows (the day tier here) is not charged a whole chunk per row."""
    empty = measure(conn)
    for tier in tiers.TIERS:
        width = 10 if tier is tiers.BASE else tier.width
        conn.execute(
            f"INSERT INTO {tier.table} (bucket, width_s, series_id, count, errors, sum, min, max,"
            " sketch) VALUES ('2100-01-01', %s, 0, 1, 0, 1, 1, 1, %s)",
            (width, random.Random(1).randbytes(2100)),
        )
    one = measure(conn)
    for tier in tiers.TIERS:
        conn.execute(f"SELECT drop_chunks('{tier.table}', newer_than => '2099-01-01'::date)")
    return {t.name: one[t.name]["bytes"] - empty[t.name]["bytes"] for t in tiers.TIERS}


def kind_rows(conn: psycopg.Connection[Any], name: str) -> dict[str, dict[str, float]]:
    """Per tier, the rows of ``name``'s series: how many, per series per day (over the span
    they cover), their stored bytes (``pg_column_size`` of the row, sketch after lz4), and the
    mean sketch as serialised and as stored."""
    out = {}
    for tier in tiers.TIERS:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT r.series_id),"
            " extract(epoch FROM max(r.bucket) - min(r.bucket)) + max(r.width_s),"
            " sum(pg_column_size(r.*)), avg(octet_length(r.sketch)), avg(pg_column_size(r.sketch))"
            f" FROM {tier.table} r JOIN series s ON s.id = r.series_id WHERE s.name = %s",
            (name,),
        ).fetchone()
        assert row is not None
        rows, series, span = int(row[0]), int(row[1]), float(row[2] or 0)
        out[tier.name] = {
            "rows": rows,
            "per_day": rows / series / (span / DAY) if rows else 0.0,
            "row_bytes": float(row[3] or 0),
            "sketch": float(row[4] or 0),
            "stored": float(row[5] or 0),
        }
    return out


def nulling(url: str) -> None:
    """What nulling the sketches of closed 10 s rows (an UPDATE) gives back: 40 series x 6 h
    of rows with incompressible sketches of 2.9 KB (TOASTed) and 1.5 KB (kept in the row)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET default_toast_compression = 'lz4'")
        for label, size in (
            ("2.9 KB sketches (TOASTed)", 2900),
            ("1.5 KB sketches (inline)", 1500),
        ):
            conn.execute("TRUNCATE metric_rollups_10s")
            conn.execute(
                "INSERT INTO metric_rollups_10s (bucket, width_s, series_id, count, errors, sum,"
                " min, max, sketch) SELECT now() - interval '2 days' + g * interval '10 seconds',"
                " 10, s, 1, 0, 1, 1, 1, (SELECT string_agg(decode(md5(random()::text || g || s"
                " || k), 'hex'), ''::bytea) FROM generate_series(1, %s) k)"
                " FROM generate_series(1, 2160) g, generate_series(1, 40) s",
                (size // 16,),
            )
            before = measure(conn)["10s"]["bytes"]
            conn.execute("UPDATE metric_rollups_10s SET sketch = NULL")
            after = measure(conn)["10s"]["bytes"]
            print(f"  {label}: {mib(before)}, after nulling every sketch and a VACUUM {mib(after)}")


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=3.0)
    parser.add_argument("--busy", type=int, default=2)
    parser.add_argument("--quiet", type=int, default=20)
    parser.add_argument("--quiet-every", type=float, default=30.0, help="seconds between events")
    parser.add_argument(
        "--nulling", action="store_true", help="also: what nulling closed 10 s sketches frees"
    )
    args = parser.parse_args()
    print(machine("TimescaleDB on the same box"))
    print(f"sketch format: {sketch_format()}")
    print(
        f"workload: {args.days:g} days ending now; {args.busy} busy series ({BUSY_PER_10S} events"
        f" per 10 s, users from 5,000), {args.quiet} quiet series (an event every"
        f" {args.quiet_every:g} s, no users)"
    )
    names = {"busy": "http_request", "quiet": "subscription_payment"}
    with scratch_database(os.environ["DATABASE_URL"]) as url:
        settings = Settings.from_env({"DATABASE_URL": url})  # the default retention
        with psycopg.connect(url, autocommit=True) as conn:
            overhead = chunk_overhead(conn)
            sizes = {"empty": measure(conn)}
            for kind, n in (("busy", args.busy), ("quiet", args.quiet)):
                rows, seconds = write(url, kind, n, args.days, args.quiet_every)
                print(f"  wrote {rows:,} {kind} window rows in {seconds:.0f} s")
                sizes[kind] = measure(conn)
                # the day tier is made by maintain: a pass that only merges
                report = run_pass(dataclasses.replace(settings, retention=KEEP_ALL))
                assert report.ok, report.errors
                merged = report.summary["merged_days"]["rows"]
                print(
                    f"  maintain merged {merged:,} {kind} day rows (each of up to 24 hour rows)"
                    f" in {report.summary['seconds']:.1f} s"
                )
                sizes[f"{kind}_days"] = measure(conn)
            stats = {kind: kind_rows(conn, name) for kind, name in names.items()}
            report = run_pass(settings)
            assert report.ok, report.errors
            after = measure(conn)
        print(f"maintain pass ({report.summary['seconds']:.1f} s): " + "; ".join(report.lines))

        print("\nper tier, as written (before retention):")
        print(
            f"  {'tier':4} {'kind':5} {'rows':>9} {'on disk':>10} {'B/row':>7} {'sketch B':>8}"
            f" {'stored B':>8} {'rows/series/day':>15} {'per series per day':>18}"
        )
        per_row: dict[str, dict[str, float]] = {"busy": {}, "quiet": {}}
        for tier in tiers.TIERS:
            t = tier.name
            for kind in ("busy", "quiet"):
                # each kind's rows: what they added to the sizes (day rows: the pass after)
                order = ["empty", "busy", "busy_days", "quiet", "quiet_days"]
                i = order.index(kind) + (t == "1d")
                base, now = sizes[order[i - 1]], sizes[order[i]]
                n_rows = now[t]["rows"] - base[t]["rows"]
                size = (
                    now[t]["bytes"]
                    - base[t]["bytes"]
                    - (now[t]["chunks"] - base[t]["chunks"]) * overhead[t]
                )
                if not n_rows:
                    continue
                st = stats[kind][t]
                mark = ""
                if n_rows < FEW:  # a few pages' noise would swamp them: scale their own bytes
                    minute = stats[kind]["1m"]
                    ratio = per_row[kind]["1m"] / (minute["row_bytes"] / minute["rows"])
                    size, mark = st["row_bytes"] * ratio, "*"
                per_row[kind][t] = size / n_rows
                print(
                    f"  {t:4} {kind:5} {n_rows:>9,.0f} {mib(size):>10} {size / n_rows:>6,.0f}"
                    f"{mark:1} {st['sketch']:>8,.0f} {st['stored']:>8,.0f}"
                    f" {st['per_day']:>15,.1f} {mib(size / n_rows * st['per_day']):>18}"
                )
        print(
            f"  * fewer than {FEW:,} rows: their stored bytes (pg_column_size) scaled by the"
            " 1 min tier's ratio of bytes on disk to stored bytes for the same kind"
        )
        print("\nafter the maintain pass (default retention):")
        for tier in tiers.TIERS:
            a = after[tier.name]
            print(
                f"  {tier.name:4} retention {format_duration(settings.retention.of(tier)):>4},"
                f" chunks of {format_duration(a['chunk']):>4}: {a['rows']:>9,.0f} rows,"
                f" {mib(a['bytes'])}"
            )
        print(
            f"\nsteady state at the default retention, {TARGET['busy']:,} busy +"
            f" {TARGET['quiet']:,} quiet series (extrapolated from the bytes per row above;"
            " at most: retention + one chunk per tier):"
        )
        total = {"busy": 0.0, "quiet": 0.0}
        for tier in tiers.TIERS:
            kept = (settings.retention.of(tier) + after[tier.name]["chunk"]) / DAY
            one = {
                k: per_row[k].get(tier.name, 0.0) * stats[k][tier.name]["per_day"] * kept
                for k in total
            }
            for k in total:
                total[k] += one[k]
            print(
                f"  {tier.name:4} ({kept:6.1f} days kept): a busy series {mib(one['busy']):>10},"
                f" a quiet one {mib(one['quiet']):>8}; all"
                f" {mib(sum(one[k] * TARGET[k] for k in total))}"
            )
        everything = sum(total[k] * TARGET[k] for k in total)
        print(
            f"  total: a busy series {mib(total['busy'])} (target <= 50 MB = 47.7 MiB), a quiet"
            f" one {mib(total['quiet'])}; {TARGET['busy']:,} busy + {TARGET['quiet']:,} quiet:"
            f" {everything / 2**30:,.1f} GiB"
        )
        if args.nulling:
            print("\nnulling the sketches of closed 10 s rows instead of dropping them:")
            nulling(url)


if __name__ == "__main__":
    main()
