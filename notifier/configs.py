"""Channel configuration: environment variables first, the ``channel_configs`` table on top.

A row in ``channel_configs`` (written by the API's ``/alerts/configure`` through
:func:`notifier.actions.configure_channel`) replaces the environment's config of that channel
entirely, and ``enabled = false`` switches the channel off. Configs are validated on the way
in (:func:`validate`) and kept as given: ``${NAME}`` references stay references until a send,
and may only name variables with the ``SECRET_ENV_PREFIX`` prefix (see :mod:`notifier.secrets`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from psycopg_pool import AsyncConnectionPool

from notifier.channels import REGISTRY, Channel, channel_class
from notifier.secrets import DEFAULT_PREFIX, mask_config
from qesmon.errors import ChannelError, ConfigError
from qesmon.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """One channel's effective configuration and where it came from (``env`` or ``api``),
    with the prefix its ``${NAME}`` references may name."""

    channel: str
    enabled: bool
    config: Mapping[str, Any]
    source: str
    secret_prefix: str = DEFAULT_PREFIX

    def masked(self) -> dict[str, Any]:
        secret = channel_class(self.channel).secret_fields
        return {
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
    """Configs given by environment variables; ConfigError when one is malformed."""
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
    pool: AsyncConnectionPool[Any], settings: Settings
) -> dict[str, ChannelConfig]:
    """The effective config of every configured channel (env, overridden by the table)."""
    configs = env_configs(settings)
    prefix = settings.channels.reference_env_prefix
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT channel, enabled, config FROM channel_configs")
        rows = await cur.fetchall()
    for channel, enabled, config in rows:
        if channel not in REGISTRY:
            log.warning("channel_configs has unknown channel %r; ignored", channel)
            continue
        try:
            configs[channel] = ChannelConfig(
                channel, bool(enabled), validate(channel, config, prefix), "api", prefix
            )
        except ChannelError as exc:
            log.error("stored config of %s is invalid, channel off: %s", channel, exc)
            configs.pop(channel, None)
    return configs


def enabled(configs: Mapping[str, ChannelConfig]) -> frozenset[str]:
    """Names of the channels that can be sent to."""
    return frozenset(name for name, c in configs.items() if c.enabled)
