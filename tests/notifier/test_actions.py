"""The functions the API calls: configure (masked), list, send_test, acknowledge, resolve."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import pytest
from psycopg_pool import AsyncConnectionPool

from notifier import actions
from qesmon.errors import ChannelError, NotFound
from qesmon.settings import Settings
from tests.notifier.conftest import Answer, Receiver, rows


async def test_configure_channel_stores_as_given_and_answers_masked(
    nsettings: Settings,
    pool: AsyncConnectionPool[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    secret = "https://hooks.slack.com/services/T0/B0/verysecretpart"
    result = await actions.configure_channel(
        pool, nsettings, "slack", True, {"webhook_url": secret}
    )
    assert result == {
        "receiver": "slack",
        "tenant_id": None,
        "channel": "slack",
        "enabled": True,
        "source": "api",
        "config": {"webhook_url": "https://hooks.slack.com/***", "timeout": 10.0},
    }
    sms = await actions.configure_channel(
        pool,
        nsettings,
        "sms",
        False,
        {
            "account_sid": "AC1",
            "auth_token": "${QESMON_SECRET_TWILIO_TOKEN}",
            "from": "+15005550006",
            "to": ["+4915112345678"],
        },
    )
    assert sms["config"]["auth_token"] == "${QESMON_SECRET_TWILIO_TOKEN}"
    assert sms["enabled"] is False
    stored = dict(
        await rows(
            pool,
            "SELECT channel, config->>'webhook_url' FROM receivers WHERE channel = 'slack'",
        )
    )
    assert stored == {"slack": secret}
    assert "verysecretpart" not in caplog.text
    listing = {c["channel"]: c for c in await actions.list_channels(pool, nsettings)}
    assert listing["slack"]["config"]["webhook_url"] == "https://hooks.slack.com/***"
    assert listing["email"]["configured"] is False
    assert "verysecretpart" not in repr(listing)


async def test_configure_channel_refuses_a_bad_field_and_stores_nothing(
    nsettings: Settings,
    pool: AsyncConnectionPool[Any],
) -> None:
    with pytest.raises(ChannelError, match="field 'to'"):
        await actions.configure_channel(
            pool, nsettings, "email", True, {"smtp_host": "h", "from": "a@b.c", "to": "nobody"}
        )
    with pytest.raises(ChannelError, match="unknown channel"):
        actions.validate_channel_config("telegram", {})
    assert await rows(pool, "SELECT * FROM receivers") == []


async def test_send_test_delivers_a_real_message_and_records_it(
    nsettings: Settings,
    pool: AsyncConnectionPool[Any],
    receiver: Receiver,
    session: aiohttp.ClientSession,
) -> None:
    await actions.configure_channel(
        pool, nsettings, "webhook", True, {"url": receiver.url + "/t", "format": "qesmon"}
    )
    result = await actions.send_test(pool, nsettings, session, "webhook")
    assert result["ok"] is True and result["status"] == 200 and result["error"] is None
    assert result["latency_ms"] >= 0
    body = receiver.requests[0].json()
    assert body["event"] == "test" and body["message"].startswith("Test notification")
    receiver.default = Answer(403, body=b"<h1>nginx/1.2.3 at 10.0.0.7</h1>")
    failed = await actions.send_test(pool, nsettings, session, "webhook")
    assert failed["ok"] is False and failed["status"] == 403
    assert failed["error"] == "webhook: HTTP 403 Forbidden"  # the answer is not repeated
    recorded = await rows(pool, "SELECT channel, status, http_status FROM deliveries ORDER BY id")
    assert recorded == [("webhook", "sent", 200), ("webhook", "failed", 403)]
    with pytest.raises(ChannelError, match="not configured"):
        await actions.send_test(pool, nsettings, session, "discord")


async def test_send_test_never_shows_a_resolved_secret_in_its_error(
    nsettings: Settings,
    pool: AsyncConnectionPool[Any],
    session: aiohttp.ClientSession,
) -> None:
    await actions.configure_channel(
        pool, nsettings, "webhook", True, {"url": "http://127.0.0.1:9/tok-abcdef"}
    )
    result = await actions.send_test(pool, nsettings, session, "webhook")
    assert result["ok"] is False and "tok-abcdef" not in (result["error"] or "")


async def test_acknowledge_and_resolve_unknown_alerts_raise_not_found(
    nsettings: Settings,
    pool: AsyncConnectionPool[Any],
) -> None:
    with pytest.raises(NotFound):
        await actions.acknowledge_alert(pool, nsettings, 12345, "alice")
    with pytest.raises(NotFound):
        await actions.resolve_alert(pool, nsettings, 12345, "alice")


async def test_manual_resolve_sets_the_state_and_records_an_event(
    nsettings: Settings,
    pool: AsyncConnectionPool[Any],
) -> None:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO alerts (fingerprint, rule_id, rule_name, severity, state, started_at,"
            " fired_at) VALUES ('m1', 'r', 'R', 'warning', 'firing', now(), now()) RETURNING id"
        )
        (alert_id,) = await cur.fetchone()
    result = await actions.resolve_alert(pool, nsettings, alert_id, "carol")
    assert result["state"] == "resolved" and result["resolved_at"] is not None
    events = await rows(pool, "SELECT from_state, to_state, details->>'by' FROM alert_events")
    assert events == [("firing", "resolved", "carol")]
    again = await actions.resolve_alert(pool, nsettings, alert_id, "carol")
    assert again["notified"] == []
