"""Notification channels: one module per channel, registered by name in ``REGISTRY``.

========== ============================================ ==========================
name       wire format                                  environment variables
========== ============================================ ==========================
email      SMTP (STARTTLS or implicit TLS, AUTH),       EMAIL_SMTP_HOST, _PORT, _USER,
           multipart text + HTML                        _PASSWORD, EMAIL_FROM, EMAIL_TO
slack      incoming webhook JSON                        SLACK_WEBHOOK_URL
discord    webhook JSON with an embed                   DISCORD_WEBHOOK_URL
webhook    Alertmanager v4 JSON (or ours), headers      WEBHOOK_URL
sms        Twilio REST, form POST, basic auth           TWILIO_ACCOUNT_SID, _AUTH_TOKEN,
                                                        TWILIO_FROM, SMS_TO, TWILIO_API_URL
pagerduty  Events API v2 trigger/acknowledge/resolve    PAGERDUTY_ROUTING_KEY, _EVENTS_URL
alertmanager POST /api/v2/alerts                        ALERTMANAGER_URL
========== ============================================ ==========================
"""

from __future__ import annotations

from notifier.channels import (  # noqa: F401  (importing registers them)
    alertmanager,
    discord,
    email,
    pagerduty,
    slack,
    sms,
    webhook,
)
from notifier.channels.base import REGISTRY, Channel, Message, SendEnv, SendResult
from qesmon.errors import ChannelError

CHANNEL_NAMES = frozenset(REGISTRY)


def channel_class(name: str) -> type[Channel]:
    """The class of channel ``name``; ChannelError for an unknown name."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ChannelError(
            f"unknown channel (known: {', '.join(sorted(REGISTRY))})", name
        ) from None


__all__ = [
    "CHANNEL_NAMES",
    "REGISTRY",
    "Channel",
    "Message",
    "SendEnv",
    "SendResult",
    "channel_class",
]
