"""Alert endpoints: listing, acknowledge, resolve, channel configuration and a real test send."""

from __future__ import annotations

from typing import Any

import psycopg
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.api.conftest import Keys, auth
from tests.api.test_dashboard import _insert_alert

P = "/api/v1/metrics/alerts"


async def test_alerts_lists_open_alerts_by_default_and_all_on_request(
    client: TestClient[Any, Any], keys: Keys, db: psycopg.Connection[Any]
) -> None:
    firing = _insert_alert(db, "tenant-a", "firing", "critical")
    resolved = _insert_alert(db, "tenant-a", "resolved", "warning")
    pending = _insert_alert(db, "tenant-b", "pending", "info")
    body = await (await client.get(P, headers=auth(keys.viewer))).json()
    assert [a["id"] for a in body["alerts"]] == [firing, pending]
    assert body["count"] == 2
    body = await (
        await client.get(P, params={"active_only": "false"}, headers=auth(keys.viewer))
    ).json()
    assert {a["id"] for a in body["alerts"]} == {firing, resolved, pending}
    body = await (
        await client.get(P, params={"active_only": "false"}, headers=auth(keys.tenant_a))
    ).json()
    assert {a["id"] for a in body["alerts"]} == {firing, resolved}
    bad = await client.get(P, params={"active_only": "maybe"}, headers=auth(keys.viewer))
    assert bad.status == 400
    assert "active_only" in (await bad.json())["error"]["message"]


async def test_acknowledge_and_resolve_change_the_alert_and_record_who(
    client: TestClient[Any, Any], keys: Keys, db: psycopg.Connection[Any]
) -> None:
    alert = _insert_alert(db, "tenant-a", "firing", "critical")
    resp = await client.post(f"{P}/{alert}/acknowledge", headers=auth(keys.tenant_a_responder))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["id"] == alert and body["acknowledged_by"].startswith("key:")
    row = db.execute(
        "SELECT acknowledged_at IS NOT NULL, acknowledged_by, state FROM alerts WHERE id = %s",
        (alert,),
    ).fetchone()
    assert row is not None and row[0] and row[2] == "firing"
    resp = await client.post(f"{P}/{alert}/resolve", headers=auth(keys.responder))
    assert resp.status == 200, await resp.text()
    state = db.execute("SELECT state FROM alerts WHERE id = %s", (alert,)).fetchone()
    assert state == ("resolved",)


async def test_acting_on_a_missing_or_foreign_alert_is_404(
    client: TestClient[Any, Any], keys: Keys, db: psycopg.Connection[Any]
) -> None:
    foreign = _insert_alert(db, "tenant-b", "firing", "warning")
    for path, key in (
        (f"{P}/999999/acknowledge", keys.admin),
        (f"{P}/{foreign}/resolve", keys.tenant_a_responder),
    ):
        resp = await client.post(path, headers=auth(key))
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "alert_not_found"
    resp = await client.post(f"{P}/abc/acknowledge", headers=auth(keys.admin))
    assert resp.status == 400
    assert "alert_id" in (await resp.json())["error"]["message"]
    state = db.execute("SELECT state FROM alerts WHERE id = %s", (foreign,)).fetchone()
    assert state == ("firing",)


async def test_configure_validates_per_channel_and_never_returns_the_secret(
    client: TestClient[Any, Any], keys: Keys, db: psycopg.Connection[Any]
) -> None:
    secret = "https://hooks.example.invalid/services/T000/B000/very-secret-token"
    resp = await client.post(
        f"{P}/configure",
        headers=auth(keys.admin),
        json={"channel": "slack", "enabled": True, "config": {"webhook_url": secret}},
    )
    assert resp.status == 200, await resp.text()
    text = await resp.text()
    assert "very-secret-token" not in text
    assert db.execute("SELECT channel, enabled FROM receivers").fetchall() == [("slack", True)]
    for body, fragment in (
        ({"channel": "slack", "config": {"webhook_url": "not a url"}}, "webhook_url"),
        ({"channel": "carrier-pigeon", "config": {}}, "carrier-pigeon"),
        ({"channel": "slack", "enabled": "yes", "config": {}}, "enabled"),
        ({"channel": "slack", "config": [], "extra": 1}, "extra"),
    ):
        resp = await client.post(f"{P}/configure", headers=auth(keys.admin), json=body)
        assert resp.status == 400, body
        assert fragment in (await resp.json())["error"]["message"]


async def test_test_send_reaches_a_real_webhook_and_reports_the_delivery(
    client: TestClient[Any, Any], keys: Keys, db: psycopg.Connection[Any]
) -> None:
    received: list[dict[str, Any]] = []

    async def slack(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(text="ok")

    receiver = web.Application()
    receiver.router.add_post("/hook", slack)
    async with TestServer(receiver, host="127.0.0.1") as server:
        url = str(server.make_url("/hook"))
        resp = await client.post(
            f"{P}/configure",
            headers=auth(keys.admin),
            json={"channel": "slack", "config": {"webhook_url": url}},
        )
        assert resp.status == 200
        resp = await client.post(f"{P}/test", params={"channel": "slack"}, headers=auth(keys.admin))
        assert resp.status == 200, await resp.text()
        result = await resp.json()
    assert result["ok"] is True and result["status"] == 200
    assert len(received) == 1 and "text" in received[0]
    assert db.execute("SELECT channel, status FROM deliveries").fetchall() == [("slack", "sent")]
    missing = await client.post(f"{P}/test", headers=auth(keys.admin))
    assert missing.status == 400
    assert "channel" in (await missing.json())["error"]["message"]
