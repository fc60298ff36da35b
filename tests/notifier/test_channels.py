"""Each channel's wire format against real loopback servers, field by field."""

from __future__ import annotations

import base64
import email
import email.policy
import socket
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from notifier.channels import REGISTRY, Message, SendEnv
from notifier.channels.pagerduty import dedup_key
from notifier.channels.sms import segment_limit, split_sms
from notifier.clock import FakeClock
from notifier.templating import Renderer
from qesmon.errors import ChannelError, DeliveryError
from tests.notifier.conftest import Answer, Receiver


def alert(**over: Any) -> dict[str, Any]:
    base = {
        "alert_id": 7,
        "fingerprint": "abc123",
        "rule_id": "high_error_rate",
        "rule_name": "High error rate",
        "severity": "critical",
        "state": "firing",
        "value": 0.42,
        "tenant": "acme",
        "labels": {"endpoint": "/sign"},
        "annotations": {"summary": "Error rate above 5%"},
        "started_at": "2023-11-14T22:13:20.000Z",
        "fired_at": "2023-11-14T22:13:20.000Z",
        "resolved_at": None,
        "at": "2023-11-14T22:13:20.000Z",
        "level": 0,
        "by": "",
    }
    base.update(over)
    return base


def env(session: aiohttp.ClientSession, environ: dict[str, str] | None = None) -> SendEnv:
    return SendEnv(session, Renderer(), FakeClock(1_700_000_000.0), environ or {})


def build(name: str, config: dict[str, Any]) -> Any:
    cls = REGISTRY[name]
    return cls(cls.validate(config))


async def test_slack_posts_text_blocks_and_colour_and_needs_ok(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    slack = build("slack", {"webhook_url": receiver.url + "/services/T/B/x", "username": "qes"})
    msg = Message("firing", [alert(), alert(fingerprint="d", tenant="globex")], ["k1", "k2"])
    await slack.send(msg, env(session))
    req = receiver.requests[0]
    assert req.path == "/services/T/B/x" and req.headers["Content-Type"] == "application/json"
    body = req.json()
    assert body["text"] == "[FIRING:2] High error rate (critical)"
    assert body["username"] == "qes"
    block = body["blocks"][0]
    assert block["type"] == "section" and block["text"]["type"] == "mrkdwn"
    assert "*High error rate* `critical` value `0.42` tenant `acme`" in block["text"]["text"]
    assert "tenant `globex`" in block["text"]["text"]
    assert body["attachments"][0]["color"] == "#d62728"
    receiver.default = Answer(200, body=b"invalid_payload")
    with pytest.raises(DeliveryError) as err:
        await slack.send(msg, env(session))
    assert not err.value.retryable


async def test_slack_cuts_section_text_at_3000_characters(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    slack = build("slack", {"webhook_url": receiver.url})
    many = [alert(fingerprint=str(i), labels={"endpoint": "/x" * 40}) for i in range(100)]
    await slack.send(Message("firing", many, ["k"]), env(session))
    text = receiver.requests[0].json()["blocks"][0]["text"]["text"]
    assert len(text) == 3000 and text.endswith("…")


async def test_discord_sends_an_embed_within_limits_and_pings_nobody(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    discord = build("discord", {"webhook_url": receiver.url + "/api/webhooks/1/tok"})
    many = [alert(fingerprint=str(i), rule_name="R" * 300) for i in range(30)]
    await discord.send(Message("firing", many, ["k"]), env(session))
    req = receiver.requests[0]
    assert req.path == "/api/webhooks/1/tok" and req.query == {"wait": "true"}
    body = req.json()
    assert body["allowed_mentions"] == {"parse": []}
    embed = body["embeds"][0]
    assert len(embed["title"]) <= 256 and len(embed["description"]) <= 4096
    assert 0 < len(embed["fields"]) <= 25
    assert all(len(f["name"]) <= 256 and len(f["value"]) <= 1024 for f in embed["fields"])
    size = len(embed["title"]) + len(embed["description"]) + len(embed["footer"]["text"])
    assert size + sum(len(f["name"]) + len(f["value"]) for f in embed["fields"]) <= 6000
    assert embed["color"] == 0xD62728


async def test_discord_429_reports_retry_after_from_the_body(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    discord = build("discord", {"webhook_url": receiver.url})
    receiver.answers = [
        Answer(429, body=b'{"message": "rate limited", "retry_after": 1.5, "global": false}')
    ]
    with pytest.raises(DeliveryError) as err:
        await discord.send(Message("firing", [alert()], ["k"]), env(session))
    assert err.value.retryable and err.value.retry_after == 1.5 and err.value.status == 429


async def test_webhook_sends_alertmanager_v4_with_custom_headers_and_idempotency_key(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    hook = build(
        "webhook", {"url": receiver.url + "/in", "headers": {"X-Token": "${QESMON_SECRET_TOK}"}}
    )
    msg = Message(
        "resolved",
        [alert(state="resolved", resolved_at="2023-11-14T23:00:00.000Z")],
        ["k1"],
        group_key="rule_id=high_error_rate",
    )
    await hook.send(msg, env(session, {"QESMON_SECRET_TOK": "sekret"}))
    await hook.send(msg, env(session, {"QESMON_SECRET_TOK": "sekret"}))
    first, again = receiver.requests
    assert first.headers["X-Token"] == "sekret"
    assert first.headers["Idempotency-Key"] == again.headers["Idempotency-Key"]
    body = first.json()
    assert body["version"] == "4" and body["status"] == "resolved"
    assert body["groupLabels"] == {"rule_id": "high_error_rate"}
    assert body["groupKey"] == "{}:{rule_id=high_error_rate}"
    (a,) = body["alerts"]
    assert a["labels"] == {
        "alertname": "High error rate",
        "severity": "critical",
        "rule_id": "high_error_rate",
        "tenant": "acme",
        "endpoint": "/sign",
    }
    assert a["startsAt"] == "2023-11-14T22:13:20.000Z"
    assert a["endsAt"] == "2023-11-14T23:00:00.000Z" and a["fingerprint"] == "abc123"


async def test_sms_posts_twilio_form_with_basic_auth_split_at_the_limit(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    receiver.default = Answer(201, body=b'{"sid": "SM42", "status": "queued"}')
    sms = build(
        "sms",
        {
            "account_sid": "AC1",
            "auth_token": "${QESMON_SECRET_TW}",
            "from": "+15005550006",
            "to": "+4915112345678,+4915187654321",
            "api_url": receiver.url,
        },
    )
    many = [alert(fingerprint=str(i), rule_name=f"Rule number {i}") for i in range(20)]
    result = await sms.send(
        Message("firing", many, ["k"]), env(session, {"QESMON_SECRET_TW": "tok"})
    )
    assert result.status == 201 and "SM42" in result.detail
    assert len(receiver.requests) == 6  # 3 parts to each of 2 numbers
    req = receiver.requests[0]
    assert req.path == "/2010-04-01/Accounts/AC1/Messages.json"
    assert req.headers["Authorization"] == "Basic " + base64.b64encode(b"AC1:tok").decode()
    assert req.headers["Content-Type"].startswith("application/x-www-form-urlencoded")
    form = req.form()
    assert form["To"] == "+4915112345678" and form["From"] == "+15005550006"
    bodies = [r.form()["Body"] for r in receiver.requests[:3]]
    assert all(len(b) <= 160 for b in bodies)
    assert [b[-5:] for b in bodies] == ["(1/3)", "(2/3)", "(3/3)"]
    assert bodies[2].endswith("... (3/3)")


def test_sms_segments_are_70_characters_when_the_text_needs_ucs2() -> None:
    assert segment_limit("plain text", 160) == 160
    assert segment_limit("alarm 🔥", 160) == 70
    assert split_sms("x" * 200, 160, "truncate", 3) == ["x" * 157 + "..."]
    assert split_sms("short", 160, "split", 3) == ["short"]


async def test_pagerduty_trigger_acknowledge_resolve_share_one_dedup_key(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    receiver.default = Answer(202, body=b'{"status":"success"}')
    key = "0123456789abcdef0123456789abcdef"
    pd = build("pagerduty", {"routing_key": key, "events_url": receiver.url + "/v2/enqueue"})
    for kind in ("firing", "acknowledged", "resolved"):
        await pd.send(Message(kind, [alert()], ["k"]), env(session))
    trigger, ack, resolve = receiver.bodies()
    assert trigger["routing_key"] == key and trigger["event_action"] == "trigger"
    assert trigger["dedup_key"] == dedup_key("abc123") == "qesmon-abc123"
    payload = trigger["payload"]
    assert (
        payload["summary"] == "High error rate (critical) value 0.42 tenant acme: Error rate"
        " above 5%"
    )
    assert payload["severity"] == "critical" and payload["source"] == "qes-monitoring"
    assert payload["timestamp"] == "2023-11-14T22:13:20.000Z"
    assert payload["class"] == "high_error_rate" and payload["group"] == "acme"
    assert payload["custom_details"]["labels"] == {"endpoint": "/sign"}
    assert ack == {"routing_key": key, "dedup_key": "qesmon-abc123", "event_action": "acknowledge"}
    assert resolve["event_action"] == "resolve" and resolve["dedup_key"] == "qesmon-abc123"
    receiver.answers = [Answer(400, body=b'{"status":"invalid event"}')]
    with pytest.raises(DeliveryError) as err:
        await pd.send(Message("firing", [alert()], ["k"]), env(session))
    assert not err.value.retryable and err.value.status == 400


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (408, True),
        (410, False),
        (422, False),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (301, False),
    ],
)
async def test_http_status_decides_retry(
    receiver: Receiver, session: aiohttp.ClientSession, status: int, retryable: bool
) -> None:
    receiver.default = Answer(status, headers={"Location": "/x"} if status == 301 else {})
    hook = build("webhook", {"url": receiver.url})
    with pytest.raises(DeliveryError) as err:
        await hook.send(Message("firing", [alert()], ["k"]), env(session))
    assert err.value.retryable is retryable and err.value.status == status


@pytest.mark.parametrize(
    ("channel", "config", "field"),
    [
        ("slack", {}, "webhook_url"),
        ("slack", {"webhook_url": "ftp://x"}, "webhook_url"),
        ("slack", {"webhook_url": "https://x", "colour": "red"}, "colour"),
        ("email", {"smtp_host": "h", "from": "a@b", "to": []}, "to"),
        ("email", {"smtp_host": "h", "from": "nobody", "to": ["a@b"]}, "from"),
        ("email", {"smtp_host": "h", "from": "a@b", "to": "a@b", "username": "u"}, "password"),
        ("sms", {"account_sid": "A", "auth_token": "t", "from": "+1", "to": ["0151"]}, "to"),
        ("sms", {"account_sid": "A", "auth_token": "t", "to": ["+4915112345678"]}, "from"),
        ("pagerduty", {"routing_key": "short"}, "routing_key"),
        ("webhook", {"url": "http://x", "format": "xml"}, "format"),
        ("webhook", {"url": "http://x", "timeout": 0}, "timeout"),
        (
            "discord",
            {"webhook_url": "http://x", "mention_role_ids": ["@everyone"]},
            "mention_role_ids",
        ),
        ("alertmanager", {}, "url"),
    ],
)
def test_invalid_configs_are_refused_naming_the_field(
    channel: str, config: dict[str, Any], field: str
) -> None:
    with pytest.raises(ChannelError) as err:
        REGISTRY[channel].validate(config)
    assert f"field {field!r}" in str(err.value) and str(err.value).startswith(channel)


# -- email against a real SMTP server with STARTTLS and AUTH ---------------------------------


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.refuse: int | None = None

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        if self.refuse is not None:
            return f"{self.refuse} mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted"


def authenticator(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        b"alerts",
        b"pw-123",
    )
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def smtp(tmp_path: Path) -> Any:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    inbox = Inbox()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        tls_context=server_ctx,
        require_starttls=True,
        auth_required=True,
        authenticator=authenticator,
        auth_require_tls=True,
    )
    controller.start()
    try:
        yield inbox, controller.port, str(ca_file)
    finally:
        controller.stop()


def email_config(port: int, ca_file: str | None, **over: Any) -> dict[str, Any]:
    config = {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "username": "alerts",
        "password": "${QESMON_SECRET_SMTP_PW}",
        "from": "alerts@qes.example",
        "to": ["oncall@qes.example", "ops@qes.example"],
        "ca_file": ca_file,
    }
    config.update(over)
    return config


async def test_email_goes_through_starttls_and_auth_as_text_and_html(
    smtp: Any, session: aiohttp.ClientSession
) -> None:
    inbox, port, ca_file = smtp
    mail = build("email", email_config(port, ca_file))
    evil = alert(rule_name="<script>alert(1)</script>")
    result = await mail.send(
        Message("firing", [evil], ["k"]), env(session, {"QESMON_SECRET_SMTP_PW": "pw-123"})
    )
    assert result.status == 250
    ((sender, rcpts, raw),) = inbox.messages
    assert sender == "alerts@qes.example"
    assert rcpts == ["oncall@qes.example", "ops@qes.example"]
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == ("[FIRING] <script>alert(1)</script> (critical) - Firing")
    assert msg["To"] == "oncall@qes.example, ops@qes.example"
    assert msg.get_content_type() == "multipart/alternative"
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "value:    0.42" in text and "tenant:   acme" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html


async def test_email_bad_password_is_not_retried_and_refused_recipient_4xx_is(
    smtp: Any, session: aiohttp.ClientSession
) -> None:
    inbox, port, ca_file = smtp
    mail = build("email", email_config(port, ca_file))
    with pytest.raises(DeliveryError) as err:
        await mail.send(
            Message("firing", [alert()], ["k"]), env(session, {"QESMON_SECRET_SMTP_PW": "wrong"})
        )
    assert err.value.status == 535 and not err.value.retryable
    inbox.refuse = 451
    with pytest.raises(DeliveryError) as err:
        await mail.send(
            Message("firing", [alert()], ["k"]), env(session, {"QESMON_SECRET_SMTP_PW": "pw-123"})
        )
    assert err.value.status == 451 and err.value.retryable
    assert inbox.messages == []


async def test_email_refuses_a_server_certificate_it_cannot_verify(
    smtp: Any, session: aiohttp.ClientSession
) -> None:
    _, port, _ = smtp
    mail = build("email", email_config(port, None))
    with pytest.raises(DeliveryError) as err:
        await mail.send(
            Message("firing", [alert()], ["k"]), env(session, {"QESMON_SECRET_SMTP_PW": "pw-123"})
        )
    assert err.value.retryable and "SMTP failed" in str(err.value)
