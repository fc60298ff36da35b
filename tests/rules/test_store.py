"""AlertStore against the real Redis and TimescaleDB: stream then tables, idempotent on
replay, and blocking (not dropping) while a server is cut off."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator

import psycopg
import pytest
import redis

from qesmon.alerts import AlertState, AlertTransition, Severity
from qesmon.errors import RuleError
from qesmon.settings import Settings
from rules.store import AlertStore
from tests.support.faults import TcpProxy
from tests.support.processes import wait_for

T0 = 1_800_000_000.0
Db = psycopg.Connection[tuple[object, ...]]


def _t(
    from_state: str, to_state: str, at: float, value: float | None = 7.5, fp: str = "fp-1"
) -> AlertTransition:
    return AlertTransition(
        fingerprint=fp,
        rule_id="high_error_rate",
        rule_name="High error rate",
        severity=Severity.CRITICAL,
        from_state=AlertState(from_state),
        to_state=AlertState(to_state),
        at=at,
        value=value,
        tenant="tenant-1",
        labels={"service": "signing", "endpoint": "/sign"},
        annotations={"summary": f"{value} % errors"},
        channels=("slack",),
        escalation="default",
        repeat_interval=3600.0,
    )


EPISODE = [
    _t("inactive", "pending", T0 + 10),
    _t("pending", "firing", T0 + 30, 9.0),
    _t("firing", "resolved", T0 + 80, 1.0),
]


@pytest.fixture
def store(settings: Settings) -> Iterator[AlertStore]:
    s = AlertStore(settings, max_backoff=0.2)
    yield s
    s.close()


def _alerts(db: Db) -> list[tuple[object, ...]]:
    return db.execute(
        "SELECT fingerprint, state, value, extract(epoch FROM started_at)::float8,"
        " extract(epoch FROM fired_at)::float8, extract(epoch FROM resolved_at)::float8,"
        " tenant_id, labels, annotations, severity FROM alerts ORDER BY id"
    ).fetchall()


def _events(db: Db) -> list[tuple[object, ...]]:
    return db.execute(
        "SELECT e.fingerprint, from_state, to_state, extract(epoch FROM at)::float8, e.value,"
        " e.alert_id = a.id FROM alert_events e LEFT JOIN alerts a ON a.id = e.alert_id"
        " ORDER BY e.id"
    ).fetchall()


def _stream(client: redis.Redis, settings: Settings) -> list[AlertTransition]:
    return [AlertTransition.from_fields(f) for _, f in client.xrange(settings.streams.alerts)]


def test_an_episode_goes_to_the_stream_and_to_one_alert_row(
    store: AlertStore, settings: Settings, db: Db, redis_client: redis.Redis
) -> None:
    store.record(EPISODE[:1])
    assert _alerts(db) == [
        (
            "fp-1",
            "pending",
            7.5,
            T0 + 10,
            None,
            None,
            "tenant-1",
            {"service": "signing", "endpoint": "/sign"},
            {"summary": "7.5 % errors"},
            "critical",
        )
    ]
    store.record(EPISODE[1:])
    assert _stream(redis_client, settings) == EPISODE
    assert _alerts(db) == [
        (
            "fp-1",
            "resolved",
            1.0,
            T0 + 10,
            T0 + 30,
            T0 + 80,
            "tenant-1",
            {"service": "signing", "endpoint": "/sign"},
            {"summary": "1.0 % errors"},
            "critical",
        )
    ]
    assert _events(db) == [
        ("fp-1", "inactive", "pending", T0 + 10, 7.5, True),
        ("fp-1", "pending", "firing", T0 + 30, 9.0, True),
        ("fp-1", "firing", "resolved", T0 + 80, 1.0, True),
    ]


def test_a_replay_changes_no_table_and_the_stream_keys_dedupe(
    store: AlertStore, settings: Settings, db: Db, redis_client: redis.Redis
) -> None:
    store.record(EPISODE)
    before = (_alerts(db), _events(db))
    store.record(EPISODE)  # a pipeline replay of the whole episode
    store.record(EPISODE[1:2])  # and of the firing alone, after the resolve
    assert (_alerts(db), _events(db)) == before
    stream = _stream(redis_client, settings)
    assert len(stream) == 7
    assert {t.key for t in stream} == {t.key for t in EPISODE}


def test_a_pending_that_clears_closes_unfired_and_the_next_one_opens_a_new_episode(
    store: AlertStore, db: Db
) -> None:
    store.record([_t("inactive", "pending", T0 + 10), _t("pending", "inactive", T0 + 20)])
    store.record([_t("inactive", "firing", T0 + 50, 8.0)])
    rows = _alerts(db)
    assert [(r[1], r[3], r[4], r[5]) for r in rows] == [
        ("resolved", T0 + 10, None, T0 + 20),  # never fired
        ("firing", T0 + 50, T0 + 50, None),
    ]


def _retries(caplog: pytest.LogCaptureFixture, what: str) -> int:
    return sum(1 for r in caplog.records if r.getMessage().startswith(f"{what} unavailable"))


def test_database_down_blocks_with_retries_and_loses_nothing(
    settings: Settings, db: Db, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    with TcpProxy.for_url(settings.database_url, 5432) as proxy:
        cut_settings = dataclasses.replace(
            settings, database_url=proxy.url_for(settings.database_url)
        )
        store = AlertStore(cut_settings, max_backoff=0.2)
        try:
            store.record(EPISODE[:1])  # connection established through the proxy
            proxy.cut()  # the open connection dies and new ones are refused
            worker = threading.Thread(target=store.record, args=(EPISODE[1:],))
            worker.start()
            # the stream gets the transitions first; the tables wait for the database
            wait_for(lambda: len(_stream(redis_client, settings)) == 3, 20, "the stream")
            wait_for(lambda: _retries(caplog, "database") >= 3, 20, "retries (still blocked)")
            assert worker.is_alive()
            assert [r[1] for r in _alerts(db)] == ["pending"]
            proxy.restore()
            worker.join(timeout=20)
            assert not worker.is_alive()
        finally:
            store.close()
    assert [r[1:6] for r in _alerts(db)] == [("resolved", 1.0, T0 + 10, T0 + 30, T0 + 80)]
    assert len(_events(db)) == 3
    assert _stream(redis_client, settings) == EPISODE


def test_redis_down_blocks_with_retries_and_loses_nothing(
    settings: Settings, db: Db, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    with TcpProxy.for_url(settings.redis_url, 6379) as proxy:
        cut_settings = dataclasses.replace(settings, redis_url=proxy.url_for(settings.redis_url))
        store = AlertStore(cut_settings, max_backoff=0.2)
        try:
            store.record(EPISODE[:1])
            proxy.cut()
            worker = threading.Thread(target=store.record, args=(EPISODE[1:],))
            worker.start()
            wait_for(lambda: _retries(caplog, "redis") >= 3, 20, "redis retries")
            assert worker.is_alive()
            assert len(_stream(redis_client, settings)) == 1
            assert [r[1] for r in _alerts(db)] == ["pending"]  # stream first, then tables
            proxy.restore()
            worker.join(timeout=20)
            assert not worker.is_alive()
        finally:
            store.close()
    assert _stream(redis_client, settings) == EPISODE
    assert [r[1] for r in _alerts(db)] == ["resolved"]


def test_rule_status_is_published_for_the_health_endpoint(
    store: AlertStore, settings: Settings, redis_client: redis.Redis
) -> None:
    import orjson

    store.publish_rule_status(5, [RuleError("severity 'x' is bad", "rules/a.yaml:3")])
    status = orjson.loads(redis_client.get(settings.streams.key("rules", "status")) or "{}")
    assert status["rules"] == 5
    assert status["errors"] == ["rules/a.yaml:3: severity 'x' is bad"]
