"""Generic webhook: ``POST <url>`` with custom headers and an Alertmanager-compatible body.

``format: alertmanager`` (default) sends Alertmanager's webhook payload version 4, so any
receiver written for Alertmanager (Alerta, bridges) takes our alerts unchanged;
``format: qesmon`` sends ``{"event", "status", "title", "message", "alerts": [...]}`` with
``message`` rendered from ``templates/webhook/<event>.txt.j2``. Every request carries
``Idempotency-Key`` (the same for a retry or a re-send after a crash), so a receiver can drop
duplicates. Header values are secrets (they usually hold tokens): masked, and each may be a
whole ``${QESMON_SECRET_...}`` reference; the URL and the header names are always literal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, ClassVar

from notifier.channels.base import Channel, Message, SendEnv, SendResult, register
from notifier.secrets import DEFAULT_PREFIX
from notifier.templating import one_line
from qesmon.settings import ChannelSettings

GO_ZERO_TIME = "0001-01-01T00:00:00Z"


def idempotency_key(message: Message) -> str:
    """Stable for one message: a hash of its notification keys."""
    return hashlib.sha256("\n".join(sorted(message.keys)).encode()).hexdigest()[:32]


def am_labels(alert: Mapping[str, Any]) -> dict[str, str]:
    """Alertmanager labels of an alert: ``alertname``, ``severity``, ``tenant``, its labels."""
    labels = {
        "alertname": str(alert["rule_name"]),
        "severity": str(alert["severity"]),
        "rule_id": str(alert["rule_id"]),
    }
    if alert.get("tenant"):
        labels["tenant"] = str(alert["tenant"])
    labels.update({str(k): str(v) for k, v in alert.get("labels", {}).items()})
    return labels


def am_alert(alert: Mapping[str, Any], resolved: bool) -> dict[str, Any]:
    """One alert in Alertmanager's webhook v4 shape."""
    return {
        "status": "resolved" if resolved else "firing",
        "labels": am_labels(alert),
        "annotations": {str(k): str(v) for k, v in alert.get("annotations", {}).items()},
        "startsAt": alert.get("fired_at") or alert["at"],
        "endsAt": (alert.get("resolved_at") or alert["at"]) if resolved else GO_ZERO_TIME,
        "generatorURL": alert.get("generator_url", ""),
        "fingerprint": alert["fingerprint"],
    }


def alertmanager_v4(message: Message, receiver: str, max_alerts: int = 0) -> dict[str, Any]:
    """Alertmanager's webhook payload (version 4) for a message."""
    resolved = message.kind == "resolved"
    alerts = [am_alert(a, resolved) for a in message.alerts]
    truncated = 0
    if max_alerts and len(alerts) > max_alerts:
        truncated = len(alerts) - max_alerts
        alerts = alerts[:max_alerts]
    label_sets = [a["labels"] for a in alerts]
    common = dict(label_sets[0]) if label_sets else {}
    for labels in label_sets[1:]:
        common = {k: v for k, v in common.items() if labels.get(k) == v}
    annotation_sets = [a["annotations"] for a in alerts]
    common_ann = dict(annotation_sets[0]) if annotation_sets else {}
    for ann in annotation_sets[1:]:
        common_ann = {k: v for k, v in common_ann.items() if ann.get(k) == v}
    group_labels = dict(part.split("=", 1) for part in message.group_key.split(",") if "=" in part)
    return {
        "version": "4",
        "groupKey": "{}:{" + message.group_key + "}",
        "truncatedAlerts": truncated,
        "status": "resolved" if resolved else "firing",
        "receiver": receiver,
        "groupLabels": group_labels,
        "commonLabels": common,
        "commonAnnotations": common_ann,
        "externalURL": "",
        "notification_reason": message.kind,
        "alerts": alerts,
    }


@register
class Webhook(Channel):
    name = "webhook"
    secret_fields = frozenset({"url", "headers"})
    references: ClassVar[Mapping[str, str]] = {"headers": "a header value"}

    @classmethod
    def validate(
        cls, config: Mapping[str, Any], secret_prefix: str = DEFAULT_PREFIX
    ) -> dict[str, Any]:
        f = cls.fields(config, secret_prefix)
        f.url("url", required=True)
        f.headers("headers")
        f.choice("format", ("alertmanager", "qesmon"), "alertmanager")
        f.number("max_alerts", 0, lo=0, hi=10000)
        f.number("timeout", 10.0, lo=0.1, hi=120)
        return f.done()

    @classmethod
    def from_settings(cls, channels: ChannelSettings) -> dict[str, Any] | None:
        if not channels.webhook_url:
            return None
        return {"url": channels.webhook_url}

    def payload(self, message: Message, env: SendEnv) -> dict[str, Any]:
        if self.config.get("format", "alertmanager") == "alertmanager":
            return alertmanager_v4(message, self.name, int(self.config.get("max_alerts", 0)))
        context = message.context()
        return {
            "event": message.kind,
            "status": context["status"],
            "title": one_line(context["title"]),
            "message": env.renderer.render(
                self.name, message.kind, "txt", context, message.template_set
            ),
            "alerts": list(message.alerts),
        }

    async def send(self, message: Message, env: SendEnv) -> SendResult:
        config = self.resolved(env.environ)
        headers = {
            "User-Agent": "qes-monitoring-notifier",
            **config.get("headers", {}),
            "Idempotency-Key": idempotency_key(message),
        }
        status, _ = await self.post(
            env.session,
            config["url"],
            json_body=self.payload(message, env),
            headers=headers,
            timeout=config.get("timeout", 10.0),
        )
        return SendResult(status)
