"""Who may call what: no key, bad key, viewer, admin, tenant-scoped keys; keys stored hashed."""

from __future__ import annotations

import hashlib
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient

from api.keys import create_key_cli
from qesmon.settings import Settings
from tests.api.conftest import Keys, auth

P = "/api/v1/metrics"
READS = [f"{P}/dashboard", f"{P}/business-intelligence", f"{P}/performance", f"{P}/alerts"]
ADMIN_POSTS = [
    (f"{P}/record", {"name": "x", "value": 1}),
    (f"{P}/alerts/configure", {"channel": "slack", "config": {}}),
    (f"{P}/alerts/test?channel=slack", None),
]


@pytest.mark.parametrize("path", READS + [p for p, _ in ADMIN_POSTS])
@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "missing_api_key"),
        ("Bearer qes_not-a-real-key", "invalid_api_key"),
        ("Basic dXNlcjpwYXNz", "invalid_api_key"),
        ("Bearer ", "invalid_api_key"),
    ],
)
async def test_requests_without_a_valid_key_get_401(
    client: TestClient[Any, Any], keys: Keys, path: str, header: str | None, code: str
) -> None:
    headers = {"Authorization": header} if header else {}
    method = client.get if path in READS else client.post
    resp = await method(path, headers=headers)
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == code


@pytest.mark.parametrize(("path", "body"), ADMIN_POSTS)
async def test_viewer_keys_cannot_use_admin_endpoints(
    client: TestClient[Any, Any], keys: Keys, path: str, body: Any
) -> None:
    resp = await client.post(path, json=body, headers=auth(keys.viewer))
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "admin_required"


@pytest.mark.parametrize("path", READS)
async def test_viewer_and_admin_keys_read_every_report(
    client: TestClient[Any, Any], keys: Keys, path: str
) -> None:
    for key in (keys.viewer, keys.admin):
        resp = await client.get(path, headers=auth(key))
        assert resp.status == 200, await resp.text()


@pytest.mark.parametrize("path", READS)
async def test_a_tenant_key_sees_its_tenant_and_is_refused_another(
    client: TestClient[Any, Any], keys: Keys, path: str
) -> None:
    own = await client.get(path, headers=auth(keys.tenant_a))
    assert own.status == 200
    assert (await own.json())["tenant_id"] == "tenant-a"  # scoped without asking
    explicit = await client.get(path, params={"tenant_id": "tenant-a"}, headers=auth(keys.tenant_a))
    assert explicit.status == 200
    other = await client.get(path, params={"tenant_id": "tenant-b"}, headers=auth(keys.tenant_a))
    assert other.status == 403
    assert (await other.json())["error"]["code"] == "tenant_forbidden"


async def test_a_tenant_admin_key_records_only_for_its_tenant(
    client: TestClient[Any, Any], keys: Keys
) -> None:
    resp = await client.post(
        f"{P}/record",
        json={"name": "x", "value": 1, "tenant_id": "tenant-a"},
        headers=auth(keys.tenant_b_admin),
    )
    assert resp.status == 403


async def test_revoked_keys_are_refused(
    client: TestClient[Any, Any], keys: Keys, db: psycopg.Connection[Any]
) -> None:
    db.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE key_hash = %s",
        (hashlib.sha256(keys.viewer.encode()).hexdigest(),),
    )
    resp = await client.get(f"{P}/alerts", headers=auth(keys.viewer))
    assert resp.status == 401


async def test_health_and_openapi_need_no_key(client: TestClient[Any, Any]) -> None:
    assert (await client.get("/api/v1/openapi.json")).status == 200
    assert (await client.get(f"{P}/health")).status in (200, 503)


def test_keys_create_prints_the_key_once_and_stores_only_its_hash(
    settings: Settings, db: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert create_key_cli(settings, role="viewer", tenant="t-9", name="admin UI") == 0
    key = capsys.readouterr().out.splitlines()[0]
    assert key.startswith("qes_") and len(key) > 40
    rows = db.execute("SELECT key_hash, role, tenant_id, name, key_prefix FROM api_keys").fetchall()
    assert rows == [
        (hashlib.sha256(key.encode()).hexdigest(), "viewer", "t-9", "admin UI", key[:8])
    ]
    dump = str(db.execute("SELECT * FROM api_keys").fetchall())
    assert key not in dump
