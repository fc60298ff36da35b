"""Slack incoming webhook: ``POST <webhook_url>`` with ``text`` + one mrkdwn section block.

Success is ``200`` with the body ``ok``. The URL is the credential, so it is a secret field.
A section block holds at most 3,000 characters; longer text is cut with a marker. Values
are mrkdwn-escaped where they enter the text (see :mod:`notifier.templating`), the headline
in ``text`` and the attachment's fallback too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from notifier.channels.base import Channel, Message, SendEnv, SendResult, register
from notifier.secrets import DEFAULT_PREFIX
from notifier.templating import slack_mrkdwn
from qesmon.settings import ChannelSettings

SECTION_LIMIT = 3000
TEXT_LIMIT = 40000
COLORS = {"critical": "#d62728", "warning": "#ff7f0e", "info": "#1f77b4", "resolved": "#2ca02c"}


def cut(text: str, limit: int, marker: str = "…") -> str:
    """``text`` shortened to at most ``limit`` characters, ending in ``marker`` when cut."""
    return text if len(text) <= limit else text[: limit - len(marker)] + marker


@register
class Slack(Channel):
    name = "slack"
    secret_fields = frozenset({"webhook_url"})

    @classmethod
    def validate(
        cls, config: Mapping[str, Any], secret_prefix: str = DEFAULT_PREFIX
    ) -> dict[str, Any]:
        f = cls.fields(config, secret_prefix)
        f.url("webhook_url", required=True)
        f.text("username")
        f.text("icon_emoji")
        f.text("channel")
        f.number("timeout", 10.0, lo=0.1, hi=120)
        return f.done()

    @classmethod
    def from_settings(cls, channels: ChannelSettings) -> dict[str, Any] | None:
        if not channels.slack_webhook_url:
            return None
        return {"webhook_url": channels.slack_webhook_url}

    def payload(self, message: Message, env: SendEnv) -> dict[str, Any]:
        context = message.context()
        text = env.renderer.render(self.name, message.kind, "md", context, message.template_set)
        severity = "resolved" if message.kind == "resolved" else context["alert"]["severity"]
        headline = slack_mrkdwn(context["title"])
        body: dict[str, Any] = {
            "text": cut(headline, TEXT_LIMIT),
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": cut(text, SECTION_LIMIT)}}
            ],
            "attachments": [
                {"color": COLORS.get(severity, "#999999"), "fallback": cut(headline, 300)}
            ],
        }
        for key in ("username", "icon_emoji", "channel"):
            if self.config.get(key):
                body[key] = self.config[key]
        return body

    async def send(self, message: Message, env: SendEnv) -> SendResult:
        config = self.resolved(env.environ)
        status, body = await self.post(
            env.session,
            config["webhook_url"],
            json_body=self.payload(message, env),
            timeout=config.get("timeout", 10.0),
        )
        if body.strip() not in (b"ok", b""):
            raise self.error(
                f"HTTP {status} without Slack's 'ok' answer", status=status, retryable=False
            )
        return SendResult(status)
