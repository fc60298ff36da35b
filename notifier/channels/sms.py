"""SMS through a Twilio-style REST API.

``POST <api_url>/2010-04-01/Accounts/{account_sid}/Messages.json``, HTTP Basic auth
(account SID or API key SID, auth token), a form body ``To``, ``From`` (or
``MessagingServiceSid``), ``Body``; success is ``201`` with the message ``sid``. One segment
holds 160 GSM-7 characters, or 70 when the text needs UCS-2 (one emoji is enough).
``mode: split`` sends up to ``max_parts`` messages each within ``segment`` characters,
numbered ``(1/3)``; ``mode: truncate`` sends one, cut with ``...``. Twilio has no
idempotency key, so a retry after a timeout can send an SMS twice.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, ClassVar

import orjson

from notifier.channels.base import Channel, Message, SendEnv, SendResult, register
from notifier.secrets import DEFAULT_PREFIX
from qesmon.settings import ChannelSettings

GSM7 = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "ÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)


def segment_limit(text: str, gsm_limit: int) -> int:
    """Characters per message: ``gsm_limit`` for GSM-7 text, 70 when UCS-2 is needed."""
    return gsm_limit if all(c in GSM7 for c in text) else min(gsm_limit, 70)


def split_sms(text: str, limit: int, mode: str, max_parts: int) -> list[str]:
    """Cut ``text`` into messages of at most ``limit`` characters (see module docstring)."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return [text]
    if mode == "truncate" or max_parts == 1:
        return [text[: limit - 3] + "..."]
    suffix_len = len(f" ({max_parts}/{max_parts})")
    size = limit - suffix_len
    chunks = [text[i : i + size] for i in range(0, len(text), size)]
    if len(chunks) > max_parts:
        chunks = chunks[:max_parts]
        chunks[-1] = chunks[-1][: size - 3] + "..."
    n = len(chunks)
    return [f"{chunk} ({i}/{n})" for i, chunk in enumerate(chunks, 1)]


@register
class Sms(Channel):
    name = "sms"
    secret_fields = frozenset({"auth_token"})
    references: ClassVar[Mapping[str, str]] = {"auth_token": "the auth token"}
    kinds = frozenset({"firing", "repeat", "escalated", "resolved", "test"})

    @classmethod
    def validate(
        cls, config: Mapping[str, Any], secret_prefix: str = DEFAULT_PREFIX
    ) -> dict[str, Any]:
        f = cls.fields(config, secret_prefix)
        f.text("account_sid", required=True)
        f.secret("auth_token", required=True)
        sender = f.text("from")
        service = f.text("messaging_service_sid")
        if not sender and not service:
            raise f.fail("from", "is required (or give messaging_service_sid)")
        numbers = f.str_list("to", required=True)
        for number in numbers:
            if not (number.startswith("+") and number[1:].isdigit() and 8 <= len(number) <= 16):
                raise f.fail("to", f"{number!r} is not an E.164 number like +4915112345678")
        f.url("api_url", default="https://api.twilio.com")
        f.choice("mode", ("split", "truncate"), "split")
        f.number("segment", 160, lo=20, hi=1600)
        f.number("max_parts", 3, lo=1, hi=10)
        f.url("status_callback")
        f.number("timeout", 10.0, lo=0.1, hi=120)
        return f.done()

    @classmethod
    def from_settings(cls, channels: ChannelSettings) -> dict[str, Any] | None:
        if not (channels.twilio_account_sid and channels.twilio_auth_token and channels.sms_to):
            return None
        return {
            "account_sid": channels.twilio_account_sid,
            "auth_token": channels.twilio_auth_token,
            "from": channels.twilio_from,
            "to": channels.sms_to,
            "api_url": channels.twilio_api_url,
        }

    def bodies(self, message: Message, env: SendEnv) -> list[str]:
        text = env.renderer.render(
            self.name, message.kind, "txt", message.context(), message.template_set
        )
        limit = segment_limit(text, int(self.config.get("segment", 160)))
        return split_sms(
            text, limit, self.config.get("mode", "split"), int(self.config.get("max_parts", 3))
        )

    async def send(self, message: Message, env: SendEnv) -> SendResult:
        config = self.resolved(env.environ)
        url = (
            f"{config['api_url'].rstrip('/')}/2010-04-01/Accounts/"
            f"{config['account_sid']}/Messages.json"
        )
        token = base64.b64encode(f"{config['account_sid']}:{config['auth_token']}".encode())
        headers = {"Authorization": "Basic " + token.decode()}
        sids = []
        status = None
        for to in config["to"]:
            for body in self.bodies(message, env):
                form = {"To": to, "Body": body}
                if config.get("messaging_service_sid"):
                    form["MessagingServiceSid"] = config["messaging_service_sid"]
                else:
                    form["From"] = config["from"]
                if config.get("status_callback"):
                    form["StatusCallback"] = config["status_callback"]
                status, raw = await self.post(
                    env.session,
                    url,
                    form=form,
                    headers=headers,
                    timeout=config.get("timeout", 10.0),
                )
                sid = _sid(raw)
                if sid:
                    sids.append(sid)
        return SendResult(status, "sid=" + ",".join(sids))


def _sid(raw: bytes) -> str:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ""
    return str(doc.get("sid", "")) if isinstance(doc, dict) else ""
