"""The alerting client for the platform's code: configure and test channels, as in the seed::

    from notifier.client import AlertingSystem, NotificationChannel

    alerting = AlertingSystem(database_url=os.environ["DATABASE_URL"])
    alerting.configure_channel(NotificationChannel.PAGERDUTY,
                               {"routing_key": "${QESMON_SECRET_PAGERDUTY_KEY}"})
    result = await alerting.send_test(NotificationChannel.PAGERDUTY)   # {"ok": True, ...}

The config is validated at once (:class:`~qesmon.errors.ChannelError` names the field) and,
with a ``database_url``, written as the platform's receiver of the channel (table
``receivers``) where the running notifier picks it up within seconds; without one it is
only kept in this object (useful for validation in CI).
It lives in the notifier, next to the channel configs it validates and the test it sends, so
that the metrics SDK (:mod:`qesmon.sdk`) needs none of the notifier's dependencies.
Tokens, passwords and header values may be ``${NAME}`` references (the whole value, a
variable starting with ``secret_prefix``, by default ``QESMON_SECRET_``; see
:mod:`notifier.secrets`); they are stored as given and every return value is masked. Field
names per channel: see :mod:`notifier.channels`.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from notifier import outbound
from notifier.actions import send_test
from notifier.configs import ChannelConfig, validate
from notifier.secrets import DEFAULT_PREFIX
from qesmon.addresses import AllowList
from qesmon.db import connect
from qesmon.errors import ChannelError
from qesmon.settings import ChannelSettings, Settings


class NotificationChannel(StrEnum):
    """The channels the notifier can deliver to."""

    EMAIL = "email"
    SLACK = "slack"
    DISCORD = "discord"
    WEBHOOK = "webhook"
    SMS = "sms"
    PAGERDUTY = "pagerduty"
    ALERTMANAGER = "alertmanager"


class AlertingSystem:
    """Configure and test notification channels (see the module docstring)."""

    def __init__(
        self,
        database_url: str | None = None,
        *,
        secret_prefix: str = DEFAULT_PREFIX,
        outbound_allow: AllowList | None = None,
    ) -> None:
        self.database_url = database_url
        self.secret_prefix = secret_prefix
        #: non-public addresses :meth:`send_test` may reach (``OUTBOUND_ALLOW``)
        self.outbound_allow = outbound_allow
        self._configs: dict[str, tuple[bool, dict[str, Any]]] = {}

    def configure_channel(
        self, channel: NotificationChannel | str, config: Mapping[str, Any], *, enabled: bool = True
    ) -> dict[str, Any]:
        """Validate and store ``config`` for ``channel``; return it with secrets masked."""
        name = _name(channel)
        clean = validate(name, dict(config), self.secret_prefix)
        if self.database_url is not None:
            with connect(self.database_url, autocommit=True) as conn:
                conn.execute(
                    "INSERT INTO receivers (tenant_id, name, channel, enabled, config, updated_at)"
                    " VALUES ('', %s, %s, %s, %s, now()) ON CONFLICT (tenant_id, name) DO UPDATE"
                    " SET enabled = EXCLUDED.enabled, config = EXCLUDED.config, updated_at = now()",
                    (name, name, enabled, Jsonb(clean)),
                )
        self._configs[name] = (enabled, clean)
        return ChannelConfig(name, enabled, clean, "api", self.secret_prefix).masked()

    def channels(self) -> dict[str, dict[str, Any]]:
        """The channels configured through this object, masked."""
        return {
            name: ChannelConfig(name, on, cfg, "api").masked()
            for name, (on, cfg) in self._configs.items()
        }

    async def send_test(self, channel: NotificationChannel | str) -> dict[str, Any]:
        """Send a real test message through ``channel``; needs ``database_url``.

        Returns ``{"channel", "ok", "status", "latency_ms", "error"}``.
        """
        if self.database_url is None:
            raise ChannelError("send_test needs AlertingSystem(database_url=...)", _name(channel))
        settings = Settings(
            database_url=self.database_url,
            channels=ChannelSettings(
                reference_env_prefix=self.secret_prefix, outbound_allow=self.outbound_allow
            ),
        )
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self.database_url, min_size=1, max_size=1, open=False, kwargs={"autocommit": True}
        )
        await pool.open()
        try:
            async with outbound.session(self.outbound_allow) as session:
                return await send_test(pool, settings, session, _name(channel))
        finally:
            await pool.close()


def _name(channel: NotificationChannel | str) -> str:
    return channel.value if isinstance(channel, NotificationChannel) else str(channel)
