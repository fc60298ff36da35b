"""PagerDuty Events API v2: trigger, acknowledge and resolve with a stable ``dedup_key``.

``POST <events_url>`` (default ``https://events.pagerduty.com/v2/enqueue``); the integration
key goes in the body as ``routing_key``; success is ``202``. Each alert is its own event (no
grouping): ``dedup_key`` is derived from the alert's fingerprint, so a re-sent trigger after a
crash lands on the same PagerDuty alert, and acknowledge / resolve find it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, ClassVar

import orjson

from notifier.channels.base import Channel, Message, SendEnv, SendResult, register
from notifier.channels.slack import cut
from notifier.secrets import DEFAULT_PREFIX
from qesmon.settings import ChannelSettings

SEVERITY = {"critical": "critical", "warning": "warning", "info": "info"}
ACTIONS = {"acknowledged": "acknowledge", "resolved": "resolve"}
MAX_BODY = 512_000


def dedup_key(fingerprint: str) -> str:
    """The PagerDuty dedup_key of an alert: ``qesmon-<fingerprint>`` (at most 255 chars)."""
    key = f"qesmon-{fingerprint}"
    return key if len(key) <= 255 else "qesmon-" + hashlib.sha256(fingerprint.encode()).hexdigest()


@register
class PagerDuty(Channel):
    name = "pagerduty"
    secret_fields = frozenset({"routing_key"})
    references: ClassVar[Mapping[str, str]] = {"routing_key": "the 32-character integration key"}
    groupable = False

    @classmethod
    def validate(
        cls, config: Mapping[str, Any], secret_prefix: str = DEFAULT_PREFIX
    ) -> dict[str, Any]:
        f = cls.fields(config, secret_prefix)
        f.secret("routing_key", required=True, check=lambda key: len(key) == 32)
        f.url("events_url", default="https://events.pagerduty.com/v2/enqueue")
        f.text("source", default="qes-monitoring")
        f.url("client_url")
        f.number("timeout", 10.0, lo=0.1, hi=120)
        return f.done()

    @classmethod
    def from_settings(cls, channels: ChannelSettings) -> dict[str, Any] | None:
        if not channels.pagerduty_routing_key:
            return None
        return {
            "routing_key": channels.pagerduty_routing_key,
            "events_url": channels.pagerduty_events_url,
        }

    def events(self, message: Message, env: SendEnv, routing_key: str) -> list[dict[str, Any]]:
        """The request bodies for ``message`` (one per alert; a test is trigger + resolve)."""
        out = []
        for alert in message.alerts:
            key = dedup_key(alert["fingerprint"])
            action = ACTIONS.get(message.kind)
            if action is not None:
                out.append({"routing_key": routing_key, "dedup_key": key, "event_action": action})
                continue
            single = Message(
                message.kind, [alert], message.keys, message.group_key, message.template_set
            )
            summary = env.renderer.render(
                self.name, message.kind, "txt", single.context(), message.template_set
            )
            details = {
                "value": alert.get("value"),
                "tenant": alert.get("tenant", ""),
                "labels": alert.get("labels", {}),
                "annotations": alert.get("annotations", {}),
                "alert_id": alert.get("alert_id"),
                "level": alert.get("level", 0),
            }
            event: dict[str, Any] = {
                "routing_key": routing_key,
                "event_action": "trigger",
                "dedup_key": key,
                "payload": {
                    "summary": cut(summary.replace("\n", " ") or single.context()["title"], 1024),
                    "source": self.config.get("source", "qes-monitoring"),
                    "severity": SEVERITY.get(str(alert["severity"]), "error"),
                    "timestamp": alert.get("fired_at") or alert["at"],
                    "component": str(alert.get("labels", {}).get("service", alert["rule_id"])),
                    "group": str(alert.get("tenant") or "platform"),
                    "class": str(alert["rule_id"]),
                    "custom_details": details,
                },
                "client": "qes-monitoring",
            }
            if self.config.get("client_url"):
                event["client_url"] = self.config["client_url"]
            if len(orjson.dumps(event)) > MAX_BODY:
                event["payload"]["custom_details"] = {"truncated": True}
            out.append(event)
            if message.kind == "test":
                out.append(
                    {"routing_key": routing_key, "dedup_key": key, "event_action": "resolve"}
                )
        return out

    async def send(self, message: Message, env: SendEnv) -> SendResult:
        config = self.resolved(env.environ)
        status = None
        keys = []
        for event in self.events(message, env, config["routing_key"]):
            status, _ = await self.post(
                env.session,
                config["events_url"],
                json_body=event,
                timeout=config.get("timeout", 10.0),
            )
            keys.append(event["dedup_key"])
        return SendResult(status, "dedup_key=" + ",".join(dict.fromkeys(keys)))
