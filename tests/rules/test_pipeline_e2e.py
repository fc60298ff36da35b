"""The default rules through Redis and the real pipeline process, into `alerts`.

Events go in with XADD (batched entries, as the SDK sends them); ``qesmon pipeline`` runs as a
subprocess with the six default rule files; the alerts appear in TimescaleDB and on the
``qes:alerts`` stream. The second test SIGKILLs the pipeline while an alert is firing.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from qesmon.alerts import AlertTransition
from qesmon.encode import encode_batch, event_dict
from qesmon.settings import Settings
from rules.loader import load_rules
from tests.rules.helpers import REPO
from tests.support.processes import QesmonProcess, settings_env, wait_for
from tests.support.settings import replace_settings

Db = psycopg.Connection[tuple[object, ...]]


@pytest.fixture
def esettings(settings: Settings, tmp_path: Path) -> Settings:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    for path in (REPO / "rules").glob("*.yaml"):
        shutil.copy(path, rules_dir)
    return replace_settings(
        settings,
        rules_dir=rules_dir,
        pipeline=dict(watermark_wait=2.0, allowed_lateness=30.0, snapshot_interval=1),
    )


def _pipeline(settings: Settings, tmp_path: Path) -> QesmonProcess:
    return QesmonProcess(
        ["pipeline", "--recovery-dir", str(tmp_path / "recovery")],
        settings_env(settings),
        tmp_path / "pipeline.log",
    )


@pytest.fixture
def proc(esettings: Settings, tmp_path: Path) -> Iterator[QesmonProcess]:
    p = _pipeline(esettings, tmp_path)
    yield p
    if p.proc is not None:
        p.stop()


def _recovery_epochs(recovery: Path) -> tuple[int, int]:
    """(frontier, committed) of Bytewax's recovery store: the epoch the dataflow is in, and
    the newest epoch whose snapshots are complete ((0, 0) until there is one)."""
    frontiers, commits = [], []
    for part in recovery.glob("part-*.sqlite3"):
        try:
            with contextlib.closing(sqlite3.connect(f"file:{part}?mode=ro", uri=True)) as conn:
                front = conn.execute("SELECT max(worker_frontier) FROM fronts").fetchone()
                commit = conn.execute("SELECT max(commit_epoch) FROM commits").fetchone()
        except sqlite3.OperationalError:  # being written: ask again
            return 0, 0
        frontiers.append(int(front[0] or 0))
        commits.append(int(commit[0] or 0))
    return max(frontiers, default=0), min(commits, default=0)


def _push(client: redis.Redis, settings: Settings, events: list[dict[str, Any]]) -> None:
    for i in range(0, len(events), 1000):
        client.xadd(settings.streams.metrics[0], encode_batch(events[i : i + 1000]))  # type: ignore[arg-type]


def _http(
    ts: float, *, failures: int, duration: float, endpoint: str, n: int = 20
) -> list[dict[str, Any]]:
    labels = {"service": "signing", "endpoint": endpoint, "method": "POST"}
    return [
        event_dict(
            "http_request",
            duration,
            type="performance",
            ts=ts + i * 0.4,
            labels=labels,
            success=i >= failures,
        )
        for i in range(n)
    ]


def _sample(name: str, ts: float, value: float, **labels: str) -> dict[str, Any]:
    tenant = labels.pop("tenant", None)
    return event_dict(
        name, value, type="usage" if tenant else "system", ts=ts, tenant=tenant, labels=labels
    )


def _episodes(db: Db) -> dict[str, list[tuple[object, ...]]]:
    rows = db.execute(
        "SELECT rule_id, state, extract(epoch FROM fired_at)::float8,"
        " extract(epoch FROM resolved_at)::float8, labels, tenant_id FROM alerts ORDER BY id"
    ).fetchall()
    out: dict[str, list[tuple[object, ...]]] = {}
    for row in rows:
        out.setdefault(str(row[0]), []).append(row[1:])
    return out


def test_each_default_rule_fires_and_resolves_through_the_pipeline(
    esettings: Settings, proc: QesmonProcess, redis_client: redis.Redis, db: Db
) -> None:
    """A backlog of 16 minutes of event time: bad, then good, for every default rule."""
    rules, errors = load_rules([esettings.rules_dir])
    assert errors == [] and len(rules) == 6
    base = math.floor((time.time() - 16 * 60) / 60) * 60
    events: list[dict[str, Any]] = []
    for i in range(12 * 6):  # 12 minutes of 10 s windows of requests
        ts = base + i * 10
        bad = i < 6  # the first minute is bad on both endpoints, then all is well
        events += _http(ts, failures=4 if bad else 0, duration=0.1, endpoint="/sign")
        events += _http(ts, failures=0, duration=3.0 if i < 9 else 0.2, endpoint="/verify", n=4)
    for minute in range(12):  # resources every 20 s: 8 bad minutes, then 4 good ones
        bad = minute < 8
        for k in range(3):
            ts = base + minute * 60 + k * 20
            events += [
                _sample("cpu_usage", ts, 97 if bad else 15, host="app-1"),
                _sample("memory_usage", ts, 98 if bad else 50, host="app-1"),
                _sample("disk_usage", ts, 91 if bad else 40, host="db-1", mount="/var"),
                _sample(
                    "quota_utilization",
                    ts,
                    96 if bad else 30,
                    tenant="tenant-1",
                    resource="signatures",
                ),
            ]
    _push(redis_client, esettings, sorted(events, key=lambda e: e["ts"]))
    proc.start()

    def all_resolved() -> dict[str, list[tuple[object, ...]]] | None:
        assert proc.alive(), proc.log()
        episodes = _episodes(db)
        done = len(episodes) == 6 and all(
            r[0] == "resolved" for rows in episodes.values() for r in rows
        )
        return episodes if done else None

    episodes = wait_for(all_resolved, 60, "six resolved alerts", interval=0.3)
    for rule in rules:
        (row,) = episodes[rule.id]  # one episode each: no duplicate
        n_bad = {"high_error_rate": 6, "slow_response_time": 9}.get(rule.id, 8)
        fired = base + max(1, math.ceil(rule.for_s / rule.window)) * rule.window
        resolved = (
            base + n_bad * rule.window + math.ceil(rule.keep_firing_for / rule.window) * rule.window
        )
        assert row[1:3] == (fired, resolved), rule.id
    assert episodes["quota_exceeded"][0][4] == "tenant-1"
    assert episodes["high_error_rate"][0][3] == {"service": "signing", "endpoint": "/sign"}
    stream = [
        AlertTransition.from_fields(f) for _, f in redis_client.xrange(esettings.streams.alerts)
    ]  # type: ignore[union-attr]
    fired_keys = {(t.rule_id, t.to_state.value) for t in stream}
    for rule in rules:
        assert (rule.id, "firing") in fired_keys and (rule.id, "resolved") in fired_keys
    assert len([t for t in stream if t.to_state.value == "firing"]) == 6
    assert redis_client.get(esettings.streams.key("rules", "status")) is not None


def test_sigkill_while_firing_neither_fires_twice_nor_loses_the_resolve(
    esettings: Settings, tmp_path: Path, redis_client: redis.Redis, db: Db
) -> None:
    """Three bad windows fire high_error_rate; SIGKILL once the firing is snapshotted; good
    windows arrive while it is down; after the restart the alert resolves, once, and the
    firing is not repeated. (Event times a minute back, lateness 5 min: no waiting.)"""
    esettings = replace_settings(esettings, pipeline=dict(allowed_lateness=300.0))
    s = math.floor(time.time() / 10) * 10 - 80
    bad = [
        e for w in range(3) for e in _http(s + w * 10, failures=5, duration=0.1, endpoint="/sign")
    ]
    good = [
        e for w in (3, 4) for e in _http(s + w * 10, failures=0, duration=0.1, endpoint="/sign")
    ]
    _push(redis_client, esettings, bad)
    proc = _pipeline(esettings, tmp_path).start()
    try:
        wait_for(
            lambda: (
                proc.alive() and _episodes(db).get("high_error_rate", [("",)])[0][0] == "firing"
            ),
            30,
            "the alert to fire",
            interval=0.1,
        )
        # The firing was decided at the latest in the epoch after the frontier (the input
        # runs at most one epoch ahead); once that epoch is committed a snapshot holds it.
        recovery = tmp_path / "recovery"
        frontier, _ = _recovery_epochs(recovery)
        wait_for(
            lambda: _recovery_epochs(recovery)[1] >= frontier + 1,
            20,
            "a snapshot taken after the firing",
            interval=0.1,
        )
        proc.kill()
        assert _episodes(db)["high_error_rate"][0][0] == "firing"
        _push(redis_client, esettings, good)
        proc = _pipeline(esettings, tmp_path).start()
        wait_for(
            lambda: proc.alive() and _episodes(db)["high_error_rate"][0][0] == "resolved",
            30,
            "the alert to resolve after the restart",
            interval=0.1,
        )
    finally:
        proc.stop()
    (row,) = _episodes(db)["high_error_rate"]
    assert row[1:3] == (s + 30, s + 50)
    assert db.execute(
        "SELECT from_state, to_state, extract(epoch FROM at)::float8 FROM alert_events ORDER BY at"
    ).fetchall() == [
        ("inactive", "pending", s + 10),
        ("pending", "firing", s + 30),
        ("firing", "resolved", s + 50),
    ]
    stream = [
        AlertTransition.from_fields(f) for _, f in redis_client.xrange(esettings.streams.alerts)
    ]  # type: ignore[union-attr]
    assert sorted({(t.to_state.value, t.at) for t in stream}) == [
        ("firing", s + 30),
        ("pending", s + 10),
        ("resolved", s + 50),
    ]
