"""The real pipeline against hostile producers: any bytes, database refusals, label explosions.

Monitoring must be the last thing standing: every test here checks that the pipeline process
never exited, that the hostile input is in the dead letters with its reason (and its original
bytes), and that the well-behaved events around it are counted exactly.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import psutil
import psycopg
import pytest
import redis

from qesmon import deadletter
from qesmon.settings import Settings
from tests.pipeline import workload as wl
from tests.support.processes import QesmonProcess, settings_env, wait_for
from tests.support.settings import replace_settings

MAX_ENTRY = 65536


@pytest.fixture
def psettings(settings: Settings, tmp_path: Path) -> Settings:
    rules = tmp_path / "rules"
    rules.mkdir()
    return replace_settings(
        settings,
        pipeline=dict(watermark_wait=1.0, allowed_lateness=5.0, snapshot_interval=1),
        rules_dir=rules,
    )


@pytest.fixture
def raw(settings: Settings) -> Iterator[redis.Redis]:
    """A client that neither encodes nor decodes: what any producer in any language can send."""
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    client.close()


def start(settings: Settings, tmp_path: Path, **env: str) -> QesmonProcess:
    return QesmonProcess(
        ["pipeline", "--recovery-dir", str(tmp_path / "recovery")],
        settings_env(settings, **{"MAX_ENTRY_BYTES": str(MAX_ENTRY), **env}),
        tmp_path / "pipeline.log",
    ).start()


def dead_by_source(settings: Settings) -> dict[str, list[dict[str, str]]]:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        out: dict[str, list[dict[str, str]]] = {}
        for _, fields in client.xrange(settings.streams.dead):  # type: ignore[union-attr]
            out.setdefault(fields["source_id"], []).append(fields)
        return out
    finally:
        client.close()


def rollup_counts(settings: Settings, width: int = 10) -> dict[tuple[str, str], int]:
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT name, coalesce(tenant_id, ''), sum(count) FROM metrics_rollup"
            " WHERE width_s = %s GROUP BY 1, 2",
            (width,),
        ).fetchall()
    return {(name, tenant): int(total) for name, tenant, total in rows}


def _events(*items: object) -> dict[bytes, bytes]:
    return {b"events": orjson.dumps(list(items))}


# (fields as sent, a phrase of the reason); every one must become a dead letter
HOSTILE: list[tuple[dict[bytes, bytes], str]] = [
    ({b"name": b"\xff\xfe", b"value": b"1"}, "not valid UTF-8"),
    ({b"na\xffme": b"x", b"value": b"1"}, "not valid UTF-8"),
    ({b"name": b"x", b"value": b"\xff1"}, "not valid UTF-8"),
    ({b"name": b"x", b"value": b"1", b"tenant": b"\xc3\x28"}, "not valid UTF-8"),
    ({b"name": b"x", b"value": b"1", b"tenant": b"t\x00"}, "tenant: contains control"),
    ({b"name": b"x", b"value": b"1", b"user": b"u\x07"}, "user: contains control"),
    ({b"name": b"x\x00", b"value": b"1"}, "name:"),
    ({b"name": b"x", b"value": b"1", b"type": b"revenue\x00"}, "type:"),
    ({b"name": b"x", b"value": b"1", b"labels": b'{"a":"x\\u0000y"}'}, "control character"),
    ({b"name": b"x", b"value": b"1", b"labels": b'{"a":"\\u009b"}'}, "control character"),
    ({b"name": b"x", b"value": b"1", b"labels": b'{"a":"\\ud800"}'}, "labels: not valid JSON"),
    ({b"name": b"x", b"value": b"1", b"labels": b'{"a":"\xff"}'}, "not valid UTF-8"),
    ({b"name": b"x", b"value": b"1", b"labels": b'{"a":"x\x01"}'}, "labels: not valid JSON"),
    ({b"name": b"x", b"value": b"1", b"labels": b"[" * 5000}, "labels: not valid JSON"),
    ({b"name": b"x", b"value": b"1", b"labels": b'{"a":{"b":"c"}}'}, "must be a string"),
    ({b"name": b"x", b"value": b"1", b"labels": b'"str"'}, "expected a JSON object"),
    ({b"name": b"x", b"value": b"nan"}, "not finite"),
    ({b"name": b"x", b"value": b"-inf"}, "not finite"),
    ({b"name": b"x", b"value": b"1e999"}, "not finite"),
    ({b"name": b"x", b"value": b" " * 100 + b"1"}, "value: longer than"),
    ({b"name": b"x", b"value": b"1", b"ts": b"nan"}, "ts:"),
    ({b"name": b"x", b"value": b"1", b"ts": b"1e20"}, "ts:"),
    ({b"name": b"x", b"value": b"1", b"ts": b"9" * 10_000}, "ts: longer than"),
    (
        {b"name": b"x", b"value": b"1", b"labels": b'{"a":"' + b"y" * 70_000 + b'"}'},
        "bytes, at most",
    ),
    ({b"name": b"x", b"value": b"1", **{b"f%d" % i: b"v" for i in range(2000)}}, "unknown field"),
    ({b"events": b"\xff[]"}, "not valid JSON"),
    ({b"events": b"[" * 3000}, "not valid JSON"),
    ({b"events": b'[{"name":"x","value":1}]', b"name": b"x"}, "must be the only field"),
    ({b"events": b"[" + b'{"name":"x","value":1},' * 9000 + b"{}]"}, "bytes, at most"),
    (_events(*[1] * 10_001), "at most 10000 allowed"),
]
# batched entries whose bad elements are refused while the good element is counted
MIXED = _events(
    {"name": "probe_batch", "value": 2, "tenant": "t1"},
    {"name": "x\u0000y", "value": 1},
    {"name": "x", "value": 1, "tenant": "t\u0000"},
    {"name": "x", "value": 1, "labels": {"a": "x\u0000y"}},
    {"name": "x", "value": 1, "labels": {"a": "\u0085"}},
    {"name": "x", "value": [[[[1]]]]},
    [1, 2, 3],
)
MIXED_BAD = 6


def test_no_entry_stops_the_pipeline_and_every_hostile_one_is_a_dead_letter(
    psettings: Settings, raw: redis.Redis, tmp_path: Path
) -> None:
    proc = start(psettings, tmp_path)
    try:
        stream = psettings.streams.metrics[0]
        sent: dict[str, tuple[dict[bytes, bytes], str]] = {}
        for fields, reason in HOSTILE:
            entry_id = raw.xadd(stream, fields)  # type: ignore[arg-type]
            sent[entry_id.decode()] = (fields, reason)  # type: ignore[union-attr]
        mixed_id = raw.xadd(stream, MIXED).decode()  # type: ignore[arg-type,union-attr]
        raw.xadd(stream, {b"name": b"probe_ok", b"value": b"1", b"tenant": b"t1"})
        counts = wait_for(
            lambda: (c := rollup_counts(psettings)).get(("probe_ok", "t1")) and c,
            40,
            "the well-behaved event after the hostile ones in metrics_rollup",
            interval=0.3,
        )
        assert proc.alive(), proc.log()
        assert counts == {("probe_ok", "t1"): 1, ("probe_batch", "t1"): 1}, counts
        dead = wait_for(
            lambda: (d := dead_by_source(psettings)) and len(d) >= len(sent) + 1 and d,
            20,
            "the dead letters",
        )
        for entry_id, (fields, reason) in sent.items():
            (letter,) = dead[entry_id]
            assert letter["kind"] == "invalid"
            assert reason in letter["error"], (fields, letter["error"])
            assert sum(len(k) + len(v.encode()) for k, v in letter.items()) <= 8192
            cut = orjson.loads(letter.get("truncated", '{"fields": {}}'))["fields"]
            for key, value in fields.items():
                stored = deadletter.as_text(key)
                if stored in letter and stored not in cut:  # kept: byte for byte
                    assert deadletter.original(letter[stored]) == value
        assert len(dead[mixed_id]) == MIXED_BAD
        assert proc.alive(), proc.log()
        assert "Traceback" not in proc.log()
    finally:
        proc.stop()


REFUSE_SQL = """
CREATE OR REPLACE FUNCTION qesmon_test_refuse_series() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.name = 'refuse_series' THEN
    RAISE EXCEPTION 'test refuses series %', NEW.name USING ERRCODE = 'check_violation';
  END IF;
  RETURN NEW;
END $$;
CREATE OR REPLACE FUNCTION qesmon_test_refuse_rollup() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.count = 13 AND NEW.series_id IN (SELECT id FROM series WHERE name = 'unlucky') THEN
    RAISE EXCEPTION 'test refuses 13 events' USING ERRCODE = 'numeric_value_out_of_range';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER qesmon_test_refuse_series BEFORE INSERT ON series
  FOR EACH ROW EXECUTE FUNCTION qesmon_test_refuse_series();
CREATE TRIGGER qesmon_test_refuse_rollups BEFORE INSERT OR UPDATE ON metric_rollups_10s
  FOR EACH ROW EXECUTE FUNCTION qesmon_test_refuse_rollup();
CREATE TRIGGER qesmon_test_refuse_rollups BEFORE INSERT OR UPDATE ON metric_rollups_1m
  FOR EACH ROW EXECUTE FUNCTION qesmon_test_refuse_rollup();
CREATE TRIGGER qesmon_test_refuse_rollups BEFORE INSERT OR UPDATE ON metric_rollups_1h
  FOR EACH ROW EXECUTE FUNCTION qesmon_test_refuse_rollup();
"""
UNREFUSE_SQL = """
DROP TRIGGER IF EXISTS qesmon_test_refuse_series ON series;
DROP TRIGGER IF EXISTS qesmon_test_refuse_rollups ON metric_rollups_10s;
DROP TRIGGER IF EXISTS qesmon_test_refuse_rollups ON metric_rollups_1m;
DROP TRIGGER IF EXISTS qesmon_test_refuse_rollups ON metric_rollups_1h;
DROP FUNCTION IF EXISTS qesmon_test_refuse_series();
DROP FUNCTION IF EXISTS qesmon_test_refuse_rollup();
"""


def test_what_the_database_refuses_is_isolated_and_the_rest_is_exact(
    psettings: Settings, raw: redis.Redis, tmp_path: Path
) -> None:
    with psycopg.connect(psettings.database_url, autocommit=True) as conn:
        conn.execute(REFUSE_SQL)
    try:
        work = wl.generate(3000, seed=21, span_s=300)
        t0 = work.entries[0][0].split("-")[0]
        base = int(t0) // 1000
        extra = []
        ms = int(t0) // 10_000 * 10_000 - 600_000  # a 10 s window before the workload's
        for i in range(5):  # a series the database refuses outright
            extra.append((f"{ms + i}-0", {"name": "refuse_series", "value": "1", "tenant": "r"}))
        for i in range(13):  # one 10 s window of 13 events: that row is refused
            extra.append((f"{ms + 100 + i}-0", {"name": "unlucky", "value": "1", "tenant": "r"}))
        for i in range(4):
            extra.append((f"{ms + 200 + i}-0", {"name": "lucky", "value": "1", "tenant": "r"}))
        assert base * 1000 > ms + 300
        stream = psettings.streams.metrics[0]
        wl.push(raw, stream, extra + work.entries)
        wl.push_clock(raw, stream)
        expected, _ = wl.ground_truth(work, wait=1.0, lateness=5.0)
        proc = start(psettings, tmp_path)
        try:

            def done() -> dict[tuple[wl.SeriesKey, int, int], dict[str, float]] | None:
                assert proc.alive(), proc.log()
                rows = wl.fetch_rollups(psettings.database_url)
                return rows if len(rows) >= len(expected) + 3 else None

            rows = wait_for(done, 60, "the rollups", interval=0.3)
            ours = {k: v for k, v in rows.items() if k[0][0] not in ("unlucky", "lucky")}
            assert wl.compare(expected, ours) == []
            lucky = {k[1]: v["count"] for k, v in rows.items() if k[0][0] == "lucky"}
            assert lucky == {10: 4, 60: 4, 3600: 4}
            # 'unlucky': the 10 s, 1 min and 1 h rows all hold 13 events: each is refused
            assert not [k for k in rows if k[0][0] in ("refuse_series", "unlucky")]
            dead = wait_for(
                lambda: (
                    [
                        d
                        for ds in dead_by_source(psettings).values()
                        for d in ds
                        if d["kind"] == "refused"
                    ]
                    or None
                ),
                20,
                "refused dead letters",
            )
            names = sorted((d["name"], d["width_s"]) for d in dead)
            assert names == sorted(
                [("refuse_series", w) for w in ("10", "60", "3600")]
                + [("unlucky", w) for w in ("10", "60", "3600")]
            ), names
            assert all("database refused it" in d["error"] for d in dead)
            assert any("test refuses series" in d["error"] for d in dead)
            health = redis.Redis.from_url(psettings.redis_url, decode_responses=True)
            key = psettings.streams.key("health", "pipeline")
            wait_for(
                lambda: float(health.hget(key, "db_refused_total") or 0) == 6,
                10,
                "db_refused_total = 6 in the pipeline's health",
            )
            health.close()
            assert proc.alive(), proc.log()
        finally:
            proc.stop()
    finally:
        with psycopg.connect(psettings.database_url, autocommit=True) as conn:
            conn.execute(UNREFUSE_SQL)


EXPLOSION_EVENTS = 100_000
SERIES_LIMIT = 1_000
#: the pipeline's peak RSS with the limit in place (`bench/cardinality.py`: 168 MiB with the
#: limit, 854 MiB for the same producer when no limit is reached)
RSS_BOUND = 320 * 2**20


def test_a_label_explosion_is_limited_and_memory_stays_bounded(
    psettings: Settings, raw: redis.Redis, tmp_path: Path
) -> None:
    stream = psettings.streams.metrics[0]
    now = time.time()
    batch: list[dict[str, object]] = []
    pipe = raw.pipeline(transaction=False)
    for i in range(EXPLOSION_EVENTS):
        batch.append(
            {"name": "req", "value": 1.0, "tenant": "noisy", "ts": now, "labels": {"id": f"{i}"}}
        )
        if len(batch) == 500:
            pipe.xadd(stream, {b"events": orjson.dumps(batch)})
            batch = []
    pipe.xadd(stream, {b"name": b"req", b"value": b"1", b"tenant": b"calm"})
    pipe.execute()
    proc = start(
        psettings, tmp_path, MAX_SERIES_PER_TENANT=str(SERIES_LIMIT), MAX_ENTRY_BYTES="4194304"
    )
    try:
        key = psettings.streams.key("health", "pipeline")
        client = redis.Redis.from_url(psettings.redis_url, decode_responses=True)
        peak = 0

        def limited() -> float | None:
            nonlocal peak
            assert proc.alive(), proc.log()
            assert proc.proc is not None
            peak = max(peak, psutil.Process(proc.proc.pid).memory_info().rss)
            value = client.hget(key, "limited_events_total")
            done = value is not None and float(value) >= EXPLOSION_EVENTS - SERIES_LIMIT  # type: ignore[arg-type]
            return float(value) if done else None  # type: ignore[arg-type]

        total = wait_for(limited, 120, "the limit to be counted", interval=0.2)
        assert total == EXPLOSION_EVENTS - SERIES_LIMIT
        note = client.hget(key, "last_limit")
        assert note is not None and "'noisy'" in note and "MAX_SERIES_PER_TENANT" in note
        print(f"label explosion: peak RSS {peak / 2**20:.0f} MiB (bound {RSS_BOUND / 2**20:.0f})")
        assert peak < RSS_BOUND, f"peak RSS {peak / 2**20:.0f} MiB"
        # the calm tenant is not affected: its event is counted when its window closes
        counts = wait_for(
            lambda: (
                (c := rollup_counts(psettings)).get(("req", "calm"))
                and c.get(("req", "noisy")) == SERIES_LIMIT
                and c
            ),
            40,
            "the calm tenant's event and the admitted noisy series in the rollups",
        )
        assert counts == {("req", "calm"): 1, ("req", "noisy"): SERIES_LIMIT}
        client.close()
        assert proc.alive(), proc.log()
    finally:
        proc.stop()
