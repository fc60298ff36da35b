"""Receiver configuration: environment variables first, the ``receivers`` table on top.

The environment configures platform receivers (one per channel type, named after it). A row
in ``receivers`` (written by the API's ``/alerts/configure`` through
:func:`notifier.actions.configure_channel`) is a platform receiver, replacing the
environment's config of its channel entirely, or a tenant's receiver (see
:mod:`notifier.receivers`); ``enabled = false`` switches it off. Configs are validated on the
way in (:func:`validate`) and kept as given: ``${NAME}`` references stay references until a
send, and may only name variables with the ``SECRET_ENV_PREFIX`` prefix (see
:mod:`notifier.secrets`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from psycopg_pool import AsyncConnectionPool

from notifier.channels import REGISTRY, Channel, channel_class
from notifier.receivers import Available, receiver_id
from notifier.secrets import DEFAULT_PREFIX, mask_config
from qesmon.errors import ChannelError, ConfigError
from qesmon.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """One receiver's effective configuration: its channel type, owner (``tenant``, "" for
    the platform) and name (the channel type for the platform's), where it came from (``env``
    or ``api``), and the prefix its ``${NAME}`` references may name."""

    channel: str
    enabled: bool
    config: Mapping[str, Any]
    source: str
    secret_prefix: str = DEFAULT_PREFIX
    tenant: str = ""
    name: str = ""

    def masked(self) -> dict[str, Any]:
        secret = channel_class(self.channel).secret_fields
        return {
            "receiver": self.name or self.channel,
            "tenant_id": self.tenant or None,
            "channel": self.channel,
            "enabled": self.enabled,
            "source": self.source,
            "config": mask_config(self.config, secret),
        }

    def build(self) -> Channel:
        return channel_class(self.channel)(self.config, self.secret_prefix)


def validate(
    channel: str, config: Mapping[str, Any], secret_prefix: str = DEFAULT_PREFIX
) -> dict[str, Any]:
    """Validate a channel config; ChannelError names the channel and the field."""
    return channel_class(channel).validate(config, secret_prefix)


def env_configs(settings: Settings) -> dict[str, ChannelConfig]:
    """Platform receivers given by environment variables, by id; ConfigError when one is
    malformed."""
    out = {}
    prefix = settings.channels.reference_env_prefix
    for name, cls in REGISTRY.items():
        raw = cls.from_settings(settings.channels)
        if raw is None:
            continue
        try:
            out[name] = ChannelConfig(name, True, cls.validate(raw, prefix), "env", prefix)
        except ChannelError as exc:
            raise ConfigError(f"environment configuration of channel {exc}") from None
    return out


async def load_configs(
    pool: AsyncConnectionPool[Any], settings: Settings, *, tenant: str | None = None
) -> dict[str, ChannelConfig]:
    """The effective config of every configured receiver by id (the environment's platform
    receivers overridden by the table), or only of ``tenant``'s ("" for the platform's)."""
    configs = env_configs(settings) if tenant in (None, "") else {}
    prefix = settings.channels.reference_env_prefix
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT channel, enabled, config, tenant_id, name FROM receivers"
            " WHERE %(tenant)s::text IS NULL OR tenant_id = %(tenant)s",
            {"tenant": tenant},
        )
        rows = await cur.fetchall()
    for channel, enabled, config, owner, name in rows:
        rid = receiver_id(owner, name)
        if channel not in REGISTRY:
            log.warning("receiver %r has unknown channel %r; ignored", rid, channel)
            continue
        try:
            configs[rid] = ChannelConfig(
                channel,
                bool(enabled),
                validate(channel, config, prefix),
                "api",
                prefix,
                owner,
                name,
            )
        except ChannelError as exc:
            log.error("stored config of receiver %s is invalid, receiver off: %s", rid, exc)
            configs.pop(rid, None)
    return configs


def enabled(configs: Mapping[str, ChannelConfig]) -> Available:
    """The receivers that can be sent to (by id, with their channel type)."""
    return Available({rid: c.channel for rid, c in configs.items() if c.enabled})
