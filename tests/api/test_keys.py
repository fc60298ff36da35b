"""Key lifecycle: the ``qesmon keys`` commands, rotation, expiry, ``last_used_at``, the key
cache under a spray of random keys, and who acknowledged, resolved, configured or tested."""

from __future__ import annotations

import dataclasses
import re
import secrets
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient

from api.auth import KeyCache, authenticate
from api.keys import create_key_sync, hash_key, lookup, parse_duration, rotate_key_sync
from api.resources import KEY_CACHE, POOL
from qesmon.errors import BadRequest, Unauthorized
from qesmon.settings import Settings
from tests.api.conftest import auth
from tests.support.processes import settings_env

P = "/api/v1/metrics"


def qesmon(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _key_id(db: psycopg.Connection[Any], key: str) -> int:
    row = db.execute("SELECT id FROM api_keys WHERE key_hash = %s", (hash_key(key),)).fetchone()
    assert row is not None
    return int(row[0])


async def _principal(settings: Settings, key: str) -> Any:
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, autocommit=True
    ) as conn:
        return await lookup(conn, key)


async def test_keys_create_list_rotate_revoke_from_the_command_line(
    settings: Settings, db: psycopg.Connection[Any]
) -> None:
    created = qesmon(
        settings, "keys", "create", "--role", "responder", "--tenant", "t-1", "--name", "oncall",
        "--expires", "90d",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    key = created.stdout.splitlines()[0]
    assert key.startswith("qes_") and "expires" in created.stdout
    key_id = _key_id(db, key)
    expires = db.execute(
        "SELECT expires_at - now() FROM api_keys WHERE id = %s", (key_id,)
    ).fetchone()
    assert expires is not None and timedelta(days=89) < expires[0] <= timedelta(days=90)

    listed = qesmon(settings, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    line = next(ln for ln in listed.stdout.splitlines() if ln.split()[0] == str(key_id))
    assert line.split()[1:5] == [key[:8] + "...", "responder", "t-1", "active"]
    assert line.endswith("oncall") and key not in listed.stdout and key[8:] not in listed.stdout

    rotated = qesmon(settings, "keys", "rotate", str(key_id))
    assert rotated.returncode == 0, rotated.stderr
    new_key = rotated.stdout.splitlines()[0]
    assert new_key.startswith("qes_") and new_key != key
    assert await _principal(settings, key) is None
    principal = await _principal(settings, new_key)
    assert (principal.key_id, principal.role, principal.tenant, principal.name) == (
        key_id,
        "responder",
        "t-1",
        "oncall",
    )
    assert principal.expires_at is not None

    revoked = qesmon(settings, "keys", "revoke", str(key_id))
    assert revoked.returncode == 0, revoked.stderr
    assert await _principal(settings, new_key) is None
    listed = qesmon(settings, "keys", "list")
    assert re.search(rf"^{key_id}\s.*\srevoked\s", listed.stdout, re.M)
    assert qesmon(settings, "keys", "rotate", str(key_id)).returncode == 1  # no revival
    assert qesmon(settings, "keys", "revoke", "999999").returncode == 1


def test_keys_create_refuses_a_malformed_expiry(settings: Settings) -> None:
    for bad in ("0d", "90", "1y", "-3d"):
        result = qesmon(settings, "keys", "create", "--role", "viewer", "--expires", bad)
        assert result.returncode == 2 and "--expires" in result.stderr, bad
    assert parse_duration("2w") == timedelta(weeks=2)
    assert parse_duration("36h") == timedelta(hours=36)


async def test_rotation_invalidates_the_old_secret_for_the_api(
    client: TestClient[Any, Any], db: psycopg.Connection[Any]
) -> None:
    client.app[KEY_CACHE].ttl = 0.0  # what a running API does once its cache entry is stale
    key = create_key_sync(db, role="viewer", name="ui")
    assert (await client.get(f"{P}/alerts", headers=auth(key))).status == 200
    new_key = rotate_key_sync(db, _key_id(db, key))
    old = await client.get(f"{P}/alerts", headers=auth(key))
    assert old.status == 401 and (await old.json())["error"]["code"] == "invalid_api_key"
    assert (await client.get(f"{P}/alerts", headers=auth(new_key))).status == 200


def test_rotating_a_revoked_or_expired_key_is_refused(db: psycopg.Connection[Any]) -> None:
    key = create_key_sync(db, role="admin")
    key_id = _key_id(db, key)
    db.execute("UPDATE api_keys SET expires_at = now() - interval '1 s' WHERE id = %s", (key_id,))
    with pytest.raises(BadRequest, match="no such active key"):
        rotate_key_sync(db, key_id)


async def test_an_expired_key_gets_the_same_401_as_an_unknown_one(
    client: TestClient[Any, Any], db: psycopg.Connection[Any]
) -> None:
    key = create_key_sync(db, role="admin", expires_in=timedelta(days=1))
    assert (await client.get(f"{P}/alerts", headers=auth(key))).status == 200
    db.execute("UPDATE api_keys SET expires_at = now() - interval '1 s'")
    client.app[KEY_CACHE].hits.clear()
    expired = await client.get(f"{P}/alerts", headers=auth(key))
    unknown = await client.get(f"{P}/alerts", headers=auth("qes_" + "y" * 43))
    assert expired.status == unknown.status == 401
    assert await expired.json() == await unknown.json()


async def test_a_cached_key_stops_working_when_it_expires(
    client: TestClient[Any, Any], db: psycopg.Connection[Any]
) -> None:
    key = create_key_sync(db, role="viewer", expires_in=timedelta(seconds=60))
    assert (await client.get(f"{P}/alerts", headers=auth(key))).status == 200
    cache = client.app[KEY_CACHE]
    ((digest, (until, principal)),) = cache.hits.items()
    # the key's expiry passes while its entry is still fresh in the cache
    db.execute("UPDATE api_keys SET expires_at = now() - interval '1 s'")
    cache.hits[digest] = (until, dataclasses.replace(principal, expires_at=time.time() - 1))
    assert (await client.get(f"{P}/alerts", headers=auth(key))).status == 401


async def test_last_used_at_is_written_at_most_once_a_minute(
    settings: Settings, db: psycopg.Connection[Any]
) -> None:
    key = create_key_sync(db, role="viewer")
    assert db.execute("SELECT last_used_at FROM api_keys").fetchone() == (None,)
    await _principal(settings, key)
    first = db.execute("SELECT last_used_at, xmin::text FROM api_keys").fetchone()
    assert first is not None and first[0] is not None
    for _ in range(3):
        await _principal(settings, key)
    # not rewritten (same row version) within the minute
    assert db.execute("SELECT last_used_at, xmin::text FROM api_keys").fetchone() == first
    db.execute("UPDATE api_keys SET last_used_at = now() - interval '61 s'")
    await _principal(settings, key)
    later = db.execute("SELECT last_used_at FROM api_keys").fetchone()
    assert later is not None and later[0] > first[0]


class _NoPool:
    """A pool that fails the test if anything asks it for a connection."""

    def connection(self) -> Any:
        raise AssertionError("the key cache went to the database")


async def test_a_spray_of_random_keys_does_not_evict_a_valid_key_from_the_cache(
    client: TestClient[Any, Any], db: psycopg.Connection[Any]
) -> None:
    key = create_key_sync(db, role="viewer", name="in use")
    cache = KeyCache(ttl=600.0, max_entries=100, max_misses=1000)
    pool = client.app[POOL]
    principal = await authenticate(f"Bearer {key}", pool, cache)
    for _ in range(10_000):
        with pytest.raises(Unauthorized):
            await authenticate(f"Bearer qes_{secrets.token_urlsafe(32)}", pool, cache)
    assert len(cache.misses) == 1000 and len(cache.hits) == 1
    # no database query for the valid key: it is still cached
    assert await authenticate(f"Bearer {key}", _NoPool(), cache) == principal  # type: ignore[arg-type]


async def _firing_alert(db: psycopg.Connection[Any], tenant: str = "") -> int:
    row = db.execute(
        "INSERT INTO alerts (fingerprint, rule_id, rule_name, severity, state, tenant_id,"
        " started_at, fired_at) VALUES ('who-1', 'r', 'R', 'critical', 'firing', %s, now(),"
        " now()) RETURNING id",
        (tenant,),
    ).fetchone()
    assert row is not None
    return int(row[0])


async def test_acknowledge_and_resolve_record_who_did_it_in_the_alert_history(
    client: TestClient[Any, Any], db: psycopg.Connection[Any]
) -> None:
    alert_id = await _firing_alert(db, "tenant-a")
    acker = create_key_sync(db, role="responder", tenant="tenant-a", name="alice on call")
    resolver = create_key_sync(db, role="admin", name="bob")
    ack = await client.post(f"{P}/alerts/{alert_id}/acknowledge", headers=auth(acker))
    assert ack.status == 200, await ack.text()
    acker_id, resolver_id = _key_id(db, acker), _key_id(db, resolver)
    assert (await ack.json())["acknowledged_by"] == f"key:{acker_id} (alice on call)"
    res = await client.post(f"{P}/alerts/{alert_id}/resolve", headers=auth(resolver))
    assert res.status == 200, await res.text()
    history = db.execute(
        "SELECT from_state, to_state, details FROM alert_events WHERE alert_id = %s ORDER BY id",
        (alert_id,),
    ).fetchall()
    assert history == [
        (
            "firing",
            "acknowledged",
            {
                "by": f"key:{acker_id} (alice on call)",
                "key_id": acker_id,
                "key_name": "alice on call",
                "role": "responder",
            },
        ),
        (
            "firing",
            "resolved",
            {
                "manual": True,
                "by": f"key:{resolver_id} (bob)",
                "key_id": resolver_id,
                "key_name": "bob",
                "role": "admin",
            },
        ),
    ]


async def test_a_viewer_can_neither_acknowledge_nor_resolve(
    client: TestClient[Any, Any], db: psycopg.Connection[Any]
) -> None:
    alert_id = await _firing_alert(db)
    viewer = create_key_sync(db, role="viewer")
    for action in ("acknowledge", "resolve"):
        resp = await client.post(f"{P}/alerts/{alert_id}/{action}", headers=auth(viewer))
        assert resp.status == 403
        assert (await resp.json())["error"]["code"] == "responder_required"
    state = db.execute("SELECT state, acknowledged_at FROM alerts").fetchone()
    assert state == ("firing", None)
    assert db.execute("SELECT count(*) FROM alert_events").fetchone() == (0,)


async def test_configure_and_test_record_who_did_it(
    client: TestClient[Any, Any], db: psycopg.Connection[Any]
) -> None:
    admin = create_key_sync(db, role="admin", name="carol")
    admin_id = _key_id(db, admin)
    hook = {"channel": "webhook", "enabled": False, "config": {"url": "http://127.0.0.1:9/h"}}
    assert (await client.post(f"{P}/alerts/configure", json=hook, headers=auth(admin))).ok
    tested = await client.post(f"{P}/alerts/test?channel=webhook", headers=auth(admin))
    assert tested.status == 200, await tested.text()
    log = db.execute("SELECT action, target, key_id, key_name, tenant_id FROM audit_log").fetchall()
    assert log == [
        ("configure", "webhook", admin_id, "carol", None),
        ("test", "webhook", admin_id, "carol", None),
    ]
