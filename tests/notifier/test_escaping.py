"""Label values and annotations reach each channel's text escaped for its format, while the
templates' own text stays as written (issue 15, item 7)."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio
from psycopg_pool import AsyncConnectionPool

from notifier.channels import Message
from notifier.channels.email import Email
from notifier.templating import (
    Renderer,
    build_context,
    discord_markdown,
    one_line,
    slack_mrkdwn,
)
from qesmon.settings import Settings
from tests.notifier.conftest import (
    Receiver,
    configure,
    push,
    running,
    transition,
    wait_for,
    write_policy,
)
from tests.notifier.test_channels import alert, build, env

PHISH = "<!channel> <https://evil.example/login|Reset your password> <@U123>"
FAKE_LINES = "\nFiring: Database down\r\nBcc: attacker@evil.example"
DISCORD_BAIT = "@everyone @here <@123456789012345678> <@&42> [click](https://evil.example)"


def test_slack_values_cannot_form_links_mentions_or_lines() -> None:
    assert slack_mrkdwn(PHISH) == (
        "&lt;!channel&gt; &lt;https://evil.example/login|Reset your password&gt; &lt;@U123&gt;"
    )
    assert slack_mrkdwn("p95 > 2 s & rising") == "p95 &gt; 2 s &amp; rising"
    assert "\n" not in slack_mrkdwn(FAKE_LINES)


def test_discord_values_cannot_ping_or_form_masked_links() -> None:
    escaped = discord_markdown(DISCORD_BAIT)
    assert "@everyone" not in escaped and "@here" not in escaped
    assert "@\u200beveryone" in escaped and "@\u200bhere" in escaped
    assert "<@1" not in escaped and "<@&" not in escaped
    assert "[click](" not in escaped and "\\[click\\](https://evil.example)" in escaped
    assert discord_markdown("**bold** `code` ||spoiler||") == (
        "\\*\\*bold\\*\\* \\`code\\` \\|\\|spoiler\\|\\|"
    )
    # ordinary values are left as they are
    plain = "/sign 0.42 acme user@example.com"
    assert discord_markdown(plain) == plain


def test_plain_text_values_are_one_line() -> None:
    assert one_line("ok" + FAKE_LINES) == "ok Firing: Database down Bcc: attacker@evil.example"
    assert one_line("tab\there\x00nul\x1b[31mred\u2028sep\u202egnp.exe") == (
        "tab here nul [31mred sep gnp.exe"
    )


def context(**labels: str) -> dict[str, Any]:
    hostile = alert(
        rule_name="High error rate" + FAKE_LINES,
        labels={"endpoint": "/sign", "lines": FAKE_LINES, **labels},
        annotations={"summary": "ok" + FAKE_LINES},
        by="mallory\nFiring: fake",
    )
    return build_context("firing", [hostile])


def test_every_channel_s_templates_get_escaped_values() -> None:
    renderer = Renderer()
    ctx = context(team=PHISH, note=DISCORD_BAIT)
    slack = renderer.render("slack", "firing", "md", ctx)
    assert "&lt;!channel&gt;" in slack and "<!channel>" not in slack
    assert "<https://evil" not in slack and "<@U123>" not in slack
    discord = renderer.render("discord", "firing", "md", ctx)
    assert "Database down" in discord and "\nFiring: Database down" not in discord
    for channel, part in [
        ("sms", "txt"),
        ("email", "subject"),
        ("email", "txt"),
        ("webhook", "txt"),
        ("pagerduty", "txt"),
    ]:
        text = renderer.render(channel, "firing", part, ctx)
        assert "\nFiring: Database down" not in text, (channel, part)
        assert "\nBcc:" not in text and "\rBcc" not in text, (channel, part)
    html = renderer.render("email", "firing", "html", ctx)
    assert "&lt;!channel&gt;" in html and "<!channel>" not in html
    assert renderer.errors == 0


def test_the_template_s_own_text_is_not_escaped(tmp_path: Path) -> None:
    """An operator may write Slack markup into a template; only the values are escaped."""
    own = tmp_path / "ops" / "slack"
    own.mkdir(parents=True)
    (own / "firing.md.j2").write_text(
        "<!here> <https://runbooks.example/{{ alert.rule_id }}|Runbook> *{{ alert.labels.team }}*"
    )
    text = Renderer([tmp_path]).render("slack", "firing", "md", context(team="<!channel>"), "ops")
    assert text == ("<!here> <https://runbooks.example/high_error_rate|Runbook> *&lt;!channel&gt;*")


async def test_discord_embed_fields_escape_values_and_allow_no_mentions(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    discord = build("discord", {"webhook_url": receiver.url + "/api/webhooks/1/tok"})
    hostile = alert(rule_name="@everyone [win](https://evil.example)", labels={"x": DISCORD_BAIT})
    await discord.send(Message("firing", [hostile], ["k"]), env(session))
    body = receiver.requests[0].json()
    assert body["allowed_mentions"] == {"parse": []}
    (embed,) = body["embeds"]
    (field,) = embed["fields"]
    assert "@everyone" not in field["name"] + field["value"] + embed["description"]
    assert "[win](" not in field["name"] and "[click](" not in field["value"]


async def test_email_subject_and_text_have_no_injected_lines(
    session: aiohttp.ClientSession,
) -> None:
    config = {"smtp_host": "h", "from": "a@qes.example", "to": ["b@qes.example"]}
    mail = Email(Email.validate(config))
    hostile = alert(rule_name="Disk full\nBcc: attacker@evil.example", annotations={})
    msg = mail.build(Message("firing", [hostile], ["k"]), env(session))
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    assert parsed["Bcc"] is None and "Bcc: attacker" in parsed["Subject"]
    text = parsed.get_body(("plain",))
    assert text is not None and "\nBcc:" not in text.get_content()


async def test_a_slack_message_with_a_hostile_label_arrives_escaped_end_to_end(
    nsettings: Settings,
    pool: AsyncConnectionPool[Any],
    receiver: Receiver,
    aredis: redis.asyncio.Redis,
) -> None:
    """From the alert stream through the running notifier to a loopback Slack webhook."""
    write_policy(
        nsettings,
        "routing:\n  defaults: {channels: [slack], group_wait: 0s, repeat_interval: 10m}\n",
    )
    await configure(pool, "slack", {"webhook_url": receiver.url + "/services/T/B/x"})
    t = transition(
        labels={"endpoint": "/sign", "team": "<!channel> <https://x|y>"},
        annotations={"summary": "see <https://x|y>\n*Firing:* fake"},
    )
    async with running(nsettings):
        await push(aredis, nsettings, t)
        await wait_for(lambda: len(receiver.requests) == 1, what="the Slack message")
    body = receiver.requests[0].json()
    text = body["blocks"][0]["text"]["text"]
    assert "`&lt;!channel&gt; &lt;https://x|y&gt;`" in text
    assert "see &lt;https://x|y&gt; *Firing:* fake" in text
    assert "<!channel>" not in receiver.requests[0].body.decode()
    assert "<https://x|y>" not in receiver.requests[0].body.decode()
