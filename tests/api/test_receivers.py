"""Receivers through the API: a tenant admin configures, lists, tests and deletes its own
receivers only; the platform's receivers only platform admins; every change is audited."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from api.app import create_app
from api.keys import create_key_sync
from api.routes import PREFIX
from qesmon.settings import Settings
from tests.api.conftest import auth
from tests.notifier.conftest import Receiver
from tests.support.settings import LOOPBACK, replace_settings

P = f"{PREFIX}/alerts"


@pytest.fixture
def app(settings: Settings) -> web.Application:
    # the tests' receivers listen on loopback
    return create_app(
        replace_settings(settings, channels=dict(outbound_allow=LOOPBACK)), monitor=False
    )


@pytest.fixture
async def hook() -> Any:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


async def test_a_tenant_admin_owns_its_receivers_and_sees_nothing_else(
    client: TestClient[Any, Any], db: psycopg.Connection[Any], hook: Receiver
) -> None:
    platform = auth(create_key_sync(db, role="admin", name="ops"))
    acme = auth(create_key_sync(db, role="admin", tenant="acme", name="acme admin"))
    beta = auth(create_key_sync(db, role="admin", tenant="beta"))
    config = {"url": hook.url + "/h", "headers": {"X-Token": "s3cr3t-value-123"}}

    # the platform's webhook, acme's own "ops" (its key names no tenant), beta's by the platform
    for headers, body in (
        (platform, {"channel": "webhook", "config": config}),
        (acme, {"channel": "webhook", "receiver": "ops", "config": config}),
        (platform, {"channel": "webhook", "tenant_id": "beta", "config": config}),
    ):
        resp = await client.post(f"{P}/configure", json=body, headers=headers)
        assert resp.status == 200, await resp.text()
        assert "s3cr3t-value-123" not in await resp.text()
    stored = db.execute(
        "SELECT tenant_id, name, updated_by->>'key_name' FROM receivers ORDER BY 1, 2"
    ).fetchall()
    assert stored == [
        ("", "webhook", "ops"),
        ("acme", "ops", "acme admin"),
        ("beta", "webhook", "ops"),
    ]

    # a tenant key cannot name another tenant, nor the platform's receiver's other name
    for body in (
        {"channel": "webhook", "tenant_id": "beta", "config": config},
        {"channel": "webhook", "tenant_id": "", "config": config, "receiver": "x"},
    ):
        resp = await client.post(f"{P}/configure", json=body, headers=acme)
        if body["tenant_id"]:
            assert resp.status == 403 and (await resp.json())["error"]["code"] == "tenant_forbidden"
        else:  # "" is no tenant: the key's own
            assert resp.status == 200
    assert db.execute("SELECT count(*) FROM receivers WHERE tenant_id = 'beta'").fetchone() == (1,)

    # listings are scoped: acme sees its own two, nothing of beta's or the platform's
    listing = await (await client.get(f"{P}/receivers", headers=acme)).json()
    assert [(r["tenant_id"], r["receiver"]) for r in listing["receivers"]] == [
        ("acme", "ops"),
        ("acme", "x"),
    ]
    assert "s3cr3t-value-123" not in str(listing)
    resp = await client.get(f"{P}/receivers", params={"tenant_id": "beta"}, headers=acme)
    assert resp.status == 403
    everything = await (await client.get(f"{P}/receivers", headers=platform)).json()
    configured = {
        (r["tenant_id"], r["receiver"]) for r in everything["receivers"] if r["configured"]
    }
    assert configured == {(None, "webhook"), ("acme", "ops"), ("acme", "x"), ("beta", "webhook")}

    # a test message to acme's receiver carries acme's tenant; beta's cannot be tested by acme
    resp = await client.post(
        f"{P}/test", params={"channel": "webhook", "receiver": "ops"}, headers=acme
    )
    result = await resp.json()
    assert resp.status == 200 and result["ok"] is True, result
    assert (result["receiver"], result["tenant_id"]) == ("ops", "acme")
    sent = hook.requests[-1].json()
    assert sent["alerts"][0]["labels"]["tenant"] == "acme"
    for params in ({"channel": "webhook", "tenant_id": "beta"},):
        resp = await client.post(f"{P}/test", params=params, headers=acme)
        assert resp.status == 403
    # acme has no receiver named "webhook": the platform's is not reachable through its key
    resp = await client.post(f"{P}/test", params={"channel": "webhook"}, headers=acme)
    assert resp.status == 400 and "not configured" in (await resp.json())["error"]["message"]
    assert len(hook.requests) == 1

    # deleting: own yes, another tenant's no, a missing one 404
    resp = await client.delete(f"{P}/receivers/webhook", params={"tenant_id": "acme"}, headers=beta)
    assert resp.status == 403
    resp = await client.delete(f"{P}/receivers/x", headers=acme)
    assert resp.status == 200 and (await resp.json())["deleted"] is True
    resp = await client.delete(f"{P}/receivers/x", headers=acme)
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "receiver_not_found"

    audit = db.execute(
        "SELECT action, target, key_name, tenant_id FROM audit_log ORDER BY id"
    ).fetchall()
    assert ("configure", "ops@acme", "acme admin", "acme") in audit
    assert ("test", "ops@acme", "acme admin", "acme") in audit
    assert ("delete", "x@acme", "acme admin", "acme") in audit
    assert ("configure", "webhook@beta", "ops", None) in audit


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"channel": "webhook", "tenant_id": "a\x00b"}, "tenant_id"),
        ({"channel": "webhook", "tenant_id": 7}, "tenant_id"),
        ({"channel": "webhook", "tenant_id": "x" * 5000}, "tenant_id"),
        ({"channel": "webhook", "receiver": ["ops"]}, "receiver"),
        ({"channel": "webhook", "receiver": "a\u202eb", "tenant_id": "t"}, "receiver"),
        ({"channel": "webhook", "receiver": "ops"}, "named after their channel"),
    ],
)
async def test_hostile_owners_and_names_are_refused_with_a_reason(
    client: TestClient[Any, Any], db: psycopg.Connection[Any], body: dict[str, Any], fragment: str
) -> None:
    admin = auth(create_key_sync(db, role="admin"))
    body = {**body, "config": {"url": "https://hooks.example/x"}}
    resp = await client.post(f"{P}/configure", json=body, headers=admin)
    assert resp.status == 400, await resp.text()
    assert fragment in (await resp.json())["error"]["message"]
    assert db.execute("SELECT count(*) FROM receivers").fetchone() == (0,)
    for path in ("/receivers/a%00b", "/receivers/" + "y" * 300):
        resp = await client.delete(P + path, headers=admin)
        assert resp.status == 404
    # the same through the test route's query
    for query in (
        {"channel": "webhook", "receiver": "a\x00b"},
        {"channel": "webhook", "receiver": "x" * 64, "tenant_id": "t"},
        {"channel": "webhook", "tenant_id": "a\x00b"},
        {"channel": "webhook", "receiver": "Ops", "tenant_id": "t"},
    ):
        resp = await client.post(f"{P}/test", params=query, headers=admin)
        assert resp.status == 400, (query, await resp.text())
