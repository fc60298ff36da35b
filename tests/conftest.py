"""Fixtures shared by the whole suite: the real Redis and the real TimescaleDB.

The suite runs against the servers ``make test`` starts (``REDIS_URL`` / ``DATABASE_URL`` from
``var/env.sh``). Each pytest session gets its own database (migrated from scratch, dropped at
the end) and each test its own Redis key prefix and emptied tables, so tests never see each
other's data and several sessions can share the servers.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
import redis.asyncio

from qesmon.migrate import apply_migrations
from qesmon.settings import ChannelSettings, Settings
from tests.support.settings import LOOPBACK

TABLES = (
    "series, metric_rollups_10s, metric_rollups_1m, metric_rollups_1h, metric_rollups_1d,"
    " alerts, alert_events, deliveries, receivers, api_keys, notifier_seen_transitions,"
    " notifier_outbox, notifier_episodes, notifier_timers, audit_log, maintenance, exporter_state"
)


def _required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.exit(
            f"{name} is not set: run the suite with `make test`, which starts Redis and "
            "TimescaleDB and sets it (or export it yourself)",
            returncode=2,
        )
    return value


def _with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


@pytest.fixture(scope="session")
def base_settings() -> Iterator[Settings]:
    """Settings pointing at a fresh, migrated database of this session."""
    server_url = _required_env("DATABASE_URL")
    redis_url = _required_env("REDIS_URL")
    dbname = f"qesmon_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    url = _with_database(server_url, dbname)
    apply_migrations(url)
    yield Settings(
        redis_url=redis_url,
        database_url=url,
        key_prefix=f"t{uuid.uuid4().hex[:8]}",
        channels=ChannelSettings(outbound_allow=LOOPBACK),
    )
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


@pytest.fixture
def settings(base_settings: Settings) -> Iterator[Settings]:
    """Per-test settings: emptied tables and a Redis key prefix of its own."""
    with psycopg.connect(base_settings.database_url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
    prefix = f"t{uuid.uuid4().hex[:12]}"
    yield dataclasses.replace(base_settings, key_prefix=prefix)
    client = redis.Redis.from_url(base_settings.redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def redis_client(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
async def aredis(settings: Settings) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(settings.redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def db(settings: Settings) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        yield conn
