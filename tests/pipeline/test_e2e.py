"""The pipeline as a real process on the real Redis and TimescaleDB.

Exactness against an independently computed ground truth; SIGKILL at random moments; the
database cut off; Redis restarted; the idle watermark; late updates and late events.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import psycopg
import pytest
import redis

from qesmon.settings import Settings
from tests.pipeline import workload as wl
from tests.support.faults import PrivateRedis
from tests.support.postgres import PrivatePostgres
from tests.support.processes import QesmonProcess, settings_env, wait_for
from tests.support.settings import replace_settings

WAIT = 2.0
LATENESS = 30.0


@pytest.fixture
def psettings(settings: Settings, tmp_path: Path) -> Settings:
    rules = tmp_path / "rules"
    rules.mkdir()
    return replace_settings(
        settings,
        pipeline=dict(watermark_wait=WAIT, allowed_lateness=LATENESS, snapshot_interval=1),
        rules_dir=rules,
    )


def pipeline(settings: Settings, tmp_path: Path, **env: str) -> QesmonProcess:
    return QesmonProcess(
        ["pipeline", "--recovery-dir", str(tmp_path / "recovery")],
        settings_env(settings, **env),
        tmp_path / "pipeline.log",
    )


@pytest.fixture
def running(psettings: Settings, tmp_path: Path) -> Iterator[QesmonProcess]:
    proc = pipeline(psettings, tmp_path).start()
    yield proc
    proc.stop()


def dead_letters(client: redis.Redis, settings: Settings) -> list[dict[str, str]]:
    return [fields for _, fields in client.xrange(settings.streams.dead)]  # type: ignore[union-attr]


def health(client: redis.Redis, settings: Settings, name: str) -> float:
    """A counter of the pipeline's health hash (published every second)."""
    value = client.hget(settings.streams.key("health", "pipeline"), name)
    return float(value) if value else 0.0  # type: ignore[arg-type]


def wait_logged(proc: QesmonProcess, text: str, times: int, what: str) -> None:
    """Wait until the process logged ``text`` ``times`` times while staying alive: it noticed
    an outage and retries in place instead of exiting (a crash loop would restart it)."""

    def logged() -> bool:
        log = proc.log()
        assert proc.alive(), log
        return log.count(text) >= times

    wait_for(logged, 30, what, interval=0.1)


def wait_reading(client: redis.Redis, settings: Settings, proc: QesmonProcess) -> None:
    """Return once a probe event pushed now is in the pipeline's live cache (published every
    250 ms): the pipeline is up and reading, which a fixed sleep would only guess."""
    client.xadd(settings.streams.metrics[0], {"name": "probe", "value": "1"})

    def cached() -> bool:
        assert proc.alive(), proc.log()
        return any(
            '"probe"' in field
            for key in client.scan_iter(match=settings.streams.key("live", "windows", "*"))
            for field in client.hkeys(key)  # type: ignore[union-attr]
        )

    wait_for(cached, 30, "the probe event in the live cache", interval=0.05)


def wait_counted(client: redis.Redis, settings: Settings, proc: QesmonProcess) -> float:
    """Push a probe event, wait until the health hash counts it; return ``events_total``."""
    before = health(client, settings, "events_total")
    client.xadd(settings.streams.metrics[0], {"name": "probe", "value": "1"})

    def counted() -> float | None:
        assert proc.alive(), proc.log()
        total = health(client, settings, "events_total")
        return total if total > before else None

    return wait_for(counted, 30, "the pipeline to count a probe event", interval=0.1)


def feed(
    client: redis.Redis,
    stream: str,
    work: wl.Workload,
    entries: list[tuple[str, dict[str, str]]] | None = None,
) -> tuple[dict[tuple[wl.SeriesKey, int, int], wl.Truth], int]:
    """Push ``entries`` (by default all of ``work``), then the event that makes every window
    final; return the ground truth of ``work``: the expected windows and the late events."""
    wl.push(client, stream, work.entries if entries is None else entries)
    wl.push_clock(client, stream)
    return wl.ground_truth(work, wait=WAIT, lateness=LATENESS)


def settle(
    settings: Settings, expected_rows: int, proc: QesmonProcess, timeout: float = 60
) -> dict[tuple[wl.SeriesKey, int, int], dict[str, float]]:
    """Wait until every expected window is stored (and the process is still alive)."""

    def done() -> dict[tuple[wl.SeriesKey, int, int], dict[str, float]] | None:
        assert proc.alive(), proc.log()
        rows = wl.fetch_rollups(settings.database_url)
        return rows if len(rows) >= expected_rows else None

    return wait_for(done, timeout, f"{expected_rows} rollup rows", interval=0.3)


def test_rollups_equal_an_independent_ground_truth(
    psettings: Settings, redis_client: redis.Redis, running: QesmonProcess
) -> None:
    work = wl.generate(6000, seed=11, span_s=900)
    stream = psettings.streams.metrics[0]
    expected, late = feed(redis_client, stream, work)
    assert late > 50 and len(expected) > 500  # the workload really has late events and windows
    got = settle(psettings, len(expected), running)
    assert wl.compare(expected, got) == []
    dead = wait_for(
        lambda: (d := dead_letters(redis_client, psettings)) and len(d) >= late + work.bad and d,
        10,
        "dead letters",
    )
    kinds = [d["kind"] for d in dead]
    assert kinds.count("late") == late and kinds.count("invalid") == work.bad
    assert all(d["error"] and d["source_id"] for d in dead)


def test_batched_entries_give_the_same_rollups(
    psettings: Settings, redis_client: redis.Redis, running: QesmonProcess
) -> None:
    work = wl.generate(20000, seed=5, span_s=600, batch=500)
    stream = psettings.streams.metrics[0]
    expected, _ = feed(redis_client, stream, work)
    assert wl.compare(expected, settle(psettings, len(expected), running)) == []


def _count(settings: Settings) -> int:
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM metric_rollups").fetchone()
    return int(row[0]) if row else 0


def test_sigkill_and_sigterm_at_random_moments_lose_nothing_and_count_nothing_twice(
    psettings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    work = wl.generate(60000, seed=3, span_s=1800)
    stream = psettings.streams.metrics[0]
    expected, _ = feed(redis_client, stream, work)
    rng = random.Random(42)
    # trimming as eagerly as it allows: killed runs must never need a trimmed entry
    proc = pipeline(psettings, tmp_path, STREAM_TRIM_AFTER_SECONDS="1")
    progress = []
    health = psettings.streams.key("health", "pipeline")
    for i in range(8):
        proc.start()
        # a random moment after this run wrote rows of its own, so mid-work (60,000 events
        # take well under a second once it runs: a fixed sleep landed after the end)
        before = progress[-1] if progress else 0
        with contextlib.suppress(AssertionError):  # nothing left to write: kill it anyway
            wait_for(lambda b=before: _count(psettings) > b, 3, "rows", interval=0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        if i % 4 == 3:
            # SIGTERM once it runs (a signal during start-up just ends the process): graceful
            redis_client.delete(health)
            wait_for(lambda: redis_client.exists(health), 20, "the pipeline to run")
            assert proc.stop() == 0, proc.log()
        else:
            proc.kill()  # SIGKILL: six crashes
        progress.append(_count(psettings))
    # the kills landed while work was in progress, not before it started or after it ended
    assert any(0 < n < len(expected) for n in progress), progress
    proc.start()
    try:
        got = settle(psettings, len(expected), proc, timeout=90)
        assert wl.compare(expected, got) == []
    finally:
        proc.stop()


def test_database_stopped_for_a_while_delays_but_loses_nothing(
    psettings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    server = PrivatePostgres().init()  # a TimescaleDB of this test's own, to stop for real
    settings = dataclasses.replace(psettings, database_url=server.url)
    proc = pipeline(settings, tmp_path)
    proc.start()
    try:
        work = wl.generate(8000, seed=8, span_s=600)
        stream = settings.streams.metrics[0]
        half = len(work.entries) // 2
        wl.push(redis_client, stream, work.entries[:half])
        wait_for(lambda: wl.fetch_rollups(settings.database_url), 20, "the first rollups")
        server.stop()
        expected, _ = feed(redis_client, stream, work, work.entries[half:])
        wait_logged(proc, "database unavailable writing rollups", 2, "the writer to retry twice")
        server.start()
        assert wl.compare(expected, settle(settings, len(expected), proc)) == []
    finally:
        proc.stop()
        server.destroy()


def test_redis_restart_loses_nothing(psettings: Settings, tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path / "redis").start()
    settings = dataclasses.replace(psettings, redis_url=server.url)
    client = redis.Redis.from_url(server.url, decode_responses=True)
    proc = pipeline(settings, tmp_path).start()
    try:
        work = wl.generate(8000, seed=9, span_s=600)
        stream = settings.streams.metrics[0]
        half = len(work.entries) // 2
        wl.push(client, stream, work.entries[:half])
        wait_for(
            lambda: health(client, settings, "entries_total") >= half,
            30,
            "the pipeline to read the first half",
            interval=0.1,
        )
        server.stop()
        wait_logged(proc, f"reading {stream} failed", 2, "the source to retry reading twice")
        server.start()
        expected, _ = feed(client, stream, work, work.entries[half:])
        assert wl.compare(expected, settle(settings, len(expected), proc)) == []
    finally:
        proc.stop()
        client.close()
        server.stop()


def test_idle_stream_closes_a_single_events_window_on_time(
    psettings: Settings, redis_client: redis.Redis, running: QesmonProcess, db: psycopg.Connection
) -> None:
    wait_reading(redis_client, psettings, running)
    now = time.time()
    if now % 10 > 7:  # keep the test short: start early in a window
        time.sleep(10 - now % 10 + 0.1)
    redis_client.xadd(psettings.streams.metrics[0], {"name": "lonely", "value": "3"})
    sent = time.time()
    end = (sent // 10) * 10 + 10

    def stored() -> float | None:  # when the pipeline's transaction wrote the row
        row = db.execute(
            "SELECT extract(epoch from r.updated_at) FROM metric_rollups r"
            " JOIN series s ON s.id = r.series_id WHERE s.name = 'lonely' AND r.width_s = 10"
        ).fetchone()
        return float(row[0]) if row else None

    written = wait_for(stored, 20, "the single event's window")
    assert written <= end + WAIT + 1.0, f"window written {written - end:.2f} s after its end"


def test_late_update_rewrites_the_window_and_too_late_goes_to_dead_letters(
    psettings: Settings, redis_client: redis.Redis, running: QesmonProcess, db: psycopg.Connection
) -> None:
    stream = psettings.streams.metrics[0]
    now = time.time()
    ts = (now // 10) * 10 - 5  # in the window that just ended (or is about to)
    redis_client.xadd(stream, {"name": "upd", "value": "2", "ts": str(ts)})

    def row() -> tuple[int, float] | None:
        r = db.execute(
            "SELECT count, sum FROM metrics_rollup WHERE name = 'upd' AND width_s = 10"
        ).fetchone()
        return (int(r[0]), float(r[1])) if r else None

    assert wait_for(row, 20, "the first value") == (1, 2.0)
    redis_client.xadd(stream, {"name": "upd", "value": "5", "ts": str(ts + 1)})
    wait_for(lambda: row() == (3 - 1, 7.0), 10, "the updated value")
    too_late = time.time() - 120
    redis_client.xadd(stream, {"name": "upd", "value": "9", "ts": str(too_late)})
    letter = wait_for(
        lambda: [d for d in dead_letters(redis_client, psettings) if d.get("kind") == "late"],
        10,
        "a late dead letter",
    )[0]
    assert letter["name"] == "upd" and float(letter["value"]) == 9.0
    assert "late" in letter["error"]
    assert row() == (2, 7.0)


def test_open_windows_are_published_live_within_a_second(
    psettings: Settings, redis_client: redis.Redis, running: QesmonProcess
) -> None:
    pubsub = redis_client.pubsub()
    pubsub.subscribe(f"{psettings.key_prefix}:live")
    wait_for(lambda: pubsub.get_message(timeout=0.1), 5, "the subscription")
    wait_reading(redis_client, psettings, running)
    stream = psettings.streams.metrics[0]
    for value in (1, 2, 3):
        redis_client.xadd(stream, {"name": "live_x", "value": str(value), "tenant": "t9"})
    sent = time.monotonic()

    def live_total() -> dict[str, object] | None:
        message = pubsub.get_message(timeout=0.1)
        if message and message["type"] == "message":
            for w in orjson.loads(message["data"])["windows"]:
                if w["name"] == "live_x" and w["count"] == 3:
                    return w
        return None

    window = wait_for(live_total, 5, "a live update with all three events")
    # 250 ms publishing + 50 ms polling; the margin absorbs a loaded test machine
    assert time.monotonic() - sent < 1.5
    assert (window["sum"], window["tenant"], window["width_s"]) == (6.0, "t9", 10)
    stored = redis_client.hgetall(f"{psettings.key_prefix}:live:windows:{int(window['start'])}")
    assert any(orjson.loads(v)["count"] == 3 for v in stored.values())  # type: ignore[union-attr]
    pubsub.close()


def test_backfill_shard_has_its_own_watermark(
    psettings: Settings, redis_client: redis.Redis, running: QesmonProcess, db: psycopg.Connection
) -> None:
    live = psettings.streams.metrics[0]
    redis_client.xadd(live, {"name": "now_metric", "value": "1"})  # live time is now
    week_ago = time.time() - 7 * 86400
    wait_for(
        lambda: (
            db.execute("SELECT 1 FROM metrics_rollup WHERE name = 'now_metric'").fetchone()
            or not redis_client.xadd(live, {"name": "tick", "value": "1"})
        ),
        20,
        "the live window",
    )
    for i in range(20):
        redis_client.xadd(
            psettings.streams.backfill,
            {"name": "old_metric", "value": "2", "ts": str(week_ago + i * 5)},
        )
    redis_client.xadd(
        psettings.streams.backfill, {"name": "old_clock", "value": "1", "ts": str(week_ago + 3600)}
    )
    rows = wait_for(
        lambda: (
            db.execute(
                "SELECT coalesce(sum(count), 0) FROM metrics_rollup WHERE name = 'old_metric'"
                " AND width_s = 10"
            ).fetchone()[0]
            == 20
        ),
        20,
        "the backfilled windows",
    )
    assert rows
    assert not [d for d in dead_letters(redis_client, psettings) if d.get("name") == "old_metric"]


def test_two_shards_on_a_two_process_cluster_equal_the_ground_truth(
    psettings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    settings = dataclasses.replace(psettings, stream_shards=2)
    work = wl.generate(6000, seed=21, span_s=600)
    shards: list[list[tuple[str, dict[str, str]]]] = [[], []]
    for entry in work.entries:  # a tenant's events stay on one shard, as the SDK does it
        shards[int(entry[1].get("tenant", "tenant-0")[-1]) % 2].append(entry)
    expected: dict[tuple[wl.SeriesKey, int, int], wl.Truth] = {}
    for stream, entries in zip(settings.streams.metrics, shards, strict=True):
        expected.update(feed(redis_client, stream, wl.Workload(entries, 0, work.start_ms))[0])
    proc = QesmonProcess(
        ["pipeline", "-p", "2", "--recovery-dir", str(tmp_path / "recovery")],
        settings_env(settings),
        tmp_path / "cluster.log",
    ).start()
    try:
        assert wl.compare(expected, settle(settings, len(expected), proc)) == []
    finally:
        proc.stop()


def test_consumed_entries_are_trimmed_and_a_crash_after_trimming_loses_nothing(
    psettings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    work = wl.generate(4000, seed=4, span_s=600)
    stream = psettings.streams.metrics[0]
    expected, _ = feed(redis_client, stream, work)
    proc = pipeline(psettings, tmp_path, STREAM_TRIM_AFTER_SECONDS="1").start()
    try:
        settle(psettings, len(expected), proc)
        wait_for(
            lambda: redis_client.xlen(stream) < len(work.entries) // 2,
            15,
            "the consumed entries to be trimmed",
        )
        proc.kill()  # the trimmed entries must not be needed by the restart
        with psycopg.connect(psettings.database_url, autocommit=True) as conn:
            # so the restart must rebuild nothing
            conn.execute("TRUNCATE metric_rollups_10s, metric_rollups_1m, metric_rollups_1h")
        redis_client.delete(psettings.streams.key("health", "pipeline"))  # count afresh
        proc.start()
        # a probe pushed after the restart: once it is counted, everything before it in the
        # stream has been read too, so the count says whether anything was read again
        assert wait_counted(redis_client, psettings, proc) == 1.0  # the probe alone
        rewritten = wl.fetch_rollups(psettings.database_url)
        assert not [key for key in rewritten if key[0][0] != "probe"], rewritten
    finally:
        proc.stop()
