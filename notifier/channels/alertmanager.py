"""Alertmanager: ``POST <url>/api/v2/alerts`` with a JSON array of alerts.

Alertmanager expects the sender to keep re-sending firing alerts; an alert it does not hear
about again is resolved after ``endsAt``. We send ``endsAt`` = now + ``ends_after`` (default
1 h, so the alert survives until the next repeat notice if the repeat interval is shorter),
and on resolve ``endsAt`` = the resolve time, which resolves it at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from notifier.channels.base import Channel, Message, SendEnv, SendResult, register
from notifier.channels.webhook import am_labels
from notifier.clock import iso
from notifier.secrets import DEFAULT_PREFIX
from qesmon.settings import ChannelSettings


@register
class Alertmanager(Channel):
    name = "alertmanager"
    secret_fields = frozenset({"headers"})
    references: ClassVar[Mapping[str, str]] = {"headers": "a header value"}
    kinds = frozenset({"firing", "repeat", "escalated", "resolved", "test"})

    @classmethod
    def validate(
        cls, config: Mapping[str, Any], secret_prefix: str = DEFAULT_PREFIX
    ) -> dict[str, Any]:
        f = cls.fields(config, secret_prefix)
        f.url("url", required=True)
        f.headers("headers")
        f.number("ends_after", 3600.0, lo=60, hi=7 * 86400)
        f.text("generator_url")
        f.number("timeout", 10.0, lo=0.1, hi=120)
        return f.done()

    @classmethod
    def from_settings(cls, channels: ChannelSettings) -> dict[str, Any] | None:
        if not channels.alertmanager_url:
            return None
        return {"url": channels.alertmanager_url}

    def payload(self, message: Message, now: float) -> list[dict[str, Any]]:
        resolved = message.kind == "resolved"
        out = []
        for alert in message.alerts:
            annotations = {str(k): str(v) for k, v in alert.get("annotations", {}).items()}
            if alert.get("value") is not None:
                annotations.setdefault("value", f"{alert['value']:g}")
            item: dict[str, Any] = {
                "labels": am_labels(alert),
                "annotations": annotations,
                "startsAt": alert.get("fired_at") or alert["at"],
                "endsAt": (alert.get("resolved_at") or alert["at"])
                if resolved
                else iso(now + float(self.config.get("ends_after", 3600.0))),
            }
            if self.config.get("generator_url"):
                item["generatorURL"] = self.config["generator_url"]
            out.append(item)
        return out

    async def send(self, message: Message, env: SendEnv) -> SendResult:
        config = self.resolved(env.environ)
        now = env.clock.now()
        url = config["url"].rstrip("/") + "/api/v2/alerts"
        status, _ = await self.post(
            env.session,
            url,
            json_body=self.payload(message, now),
            headers=config.get("headers", {}),
            timeout=config.get("timeout", 10.0),
        )
        return SendResult(status)
