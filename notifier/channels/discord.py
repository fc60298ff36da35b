"""Discord webhook: ``POST <webhook_url>?wait=true`` with one embed.

Limits (over them Discord answers 400): content 2,000, embed title 256, description 4,096,
at most 25 fields of name 256 / value 1,024, 6,000 characters over the embed. Alert text
must never ping anyone, so ``allowed_mentions`` is ``{"parse": []}`` unless roles to mention
are configured (``mention_role_ids``), and then only those roles may be pinged. Values are
markdown-escaped where they enter the description and the fields (mentions broken, no
masked links; see :mod:`notifier.templating`), and the title is one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from notifier.channels.base import Channel, Message, SendEnv, SendResult, register
from notifier.channels.slack import cut
from notifier.secrets import DEFAULT_PREFIX
from notifier.templating import discord_markdown, one_line
from qesmon.settings import ChannelSettings

COLORS = {"critical": 0xD62728, "warning": 0xFF7F0E, "info": 0x1F77B4, "resolved": 0x2CA02C}
MAX_FIELDS = 25


def with_wait(url: str) -> str:
    """The webhook URL with ``wait=true`` (so Discord answers 200 with the message)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query["wait"] = "true"
    return urlunsplit(parts._replace(query=urlencode(query)))


@register
class Discord(Channel):
    name = "discord"
    secret_fields = frozenset({"webhook_url"})

    @classmethod
    def validate(
        cls, config: Mapping[str, Any], secret_prefix: str = DEFAULT_PREFIX
    ) -> dict[str, Any]:
        f = cls.fields(config, secret_prefix)
        f.url("webhook_url", required=True)
        f.text("username")
        f.url("avatar_url")
        roles = f.str_list("mention_role_ids")
        if any(not r.isdigit() for r in roles):
            raise f.fail("mention_role_ids", "must be numeric Discord role ids")
        f.number("timeout", 10.0, lo=0.1, hi=120)
        return f.done()

    @classmethod
    def from_settings(cls, channels: ChannelSettings) -> dict[str, Any] | None:
        if not channels.discord_webhook_url:
            return None
        return {"webhook_url": channels.discord_webhook_url}

    def payload(self, message: Message, env: SendEnv) -> dict[str, Any]:
        context = message.context()
        text = env.renderer.render(self.name, message.kind, "md", context, message.template_set)
        severity = "resolved" if message.kind == "resolved" else context["alert"]["severity"]
        fields = []
        for alert in message.alerts[:MAX_FIELDS]:
            value = "" if alert.get("value") is None else f"value {alert['value']:g} "
            labels = " ".join(
                f"{k}={discord_markdown(str(v))}"
                for k, v in sorted(alert.get("labels", {}).items())
            )
            name = f"{discord_markdown(str(alert['rule_name']))} [{alert['state']}]"
            fields.append(
                {
                    "name": cut(name, 256),
                    "value": cut((value + labels).strip() or "-", 1024),
                    "inline": False,
                }
            )
        embed: dict[str, Any] = {
            "title": cut(one_line(context["title"]), 256),
            "description": cut(text, 4096),
            "color": COLORS.get(severity, 0x999999),
            "fields": fields,
            "footer": {"text": "qes-monitoring"},
        }
        # keep the embed under Discord's 6,000-character total by dropping fields from the end
        while fields and _embed_size(embed) > 6000:
            fields.pop()
        roles = self.config.get("mention_role_ids") or []
        body: dict[str, Any] = {
            "content": cut(" ".join(f"<@&{r}>" for r in roles), 2000),
            "embeds": [embed],
            "allowed_mentions": {"parse": [], "roles": roles} if roles else {"parse": []},
        }
        for key in ("username", "avatar_url"):
            if self.config.get(key):
                body[key] = self.config[key]
        return body

    async def send(self, message: Message, env: SendEnv) -> SendResult:
        config = self.resolved(env.environ)
        status, _ = await self.post(
            env.session,
            with_wait(config["webhook_url"]),
            json_body=self.payload(message, env),
            timeout=config.get("timeout", 10.0),
        )
        return SendResult(status)


def _embed_size(embed: Mapping[str, Any]) -> int:
    size = len(embed["title"]) + len(embed["description"]) + len(embed["footer"]["text"])
    return size + sum(len(f["name"]) + len(f["value"]) for f in embed["fields"])
