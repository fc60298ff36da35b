"""What the API calls: acknowledge, resolve, configure and test channels, list channels.

Each function takes the API's :class:`psycopg_pool.AsyncConnectionPool` and
:class:`~qesmon.settings.Settings`; notifications they cause go through the outbox, so a
running notifier delivers them (with retries) even if the API process dies right after.
Errors, domain errors that the API's error middleware maps to HTTP answers:
:class:`~notifier.store.UnknownAlert` (a ``NotFound``) for an unknown alert;
:class:`InvalidChannelConfig` naming the channel and field for a config that
:func:`configure_channel` refuses; :class:`~qesmon.errors.ChannelError` for a channel that
:func:`send_test` cannot use (unknown, not configured).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

import aiohttp
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from notifier import store
from notifier.channels import REGISTRY, Message, SendEnv, channel_class
from notifier.clock import Clock, SystemClock, iso
from notifier.configs import ChannelConfig, enabled, load_configs
from notifier.configs import validate as _validate
from notifier.secrets import DEFAULT_PREFIX, scrub, secret_values
from notifier.service import template_dirs
from notifier.templating import Renderer
from qesmon.errors import ChannelError, DeliveryError
from qesmon.settings import Settings

log = logging.getLogger(__name__)


class InvalidChannelConfig(ChannelError):
    """A channel config given to :func:`configure_channel` is refused: an unknown channel, a
    config that is not an object, a bad or missing field (the message names which)."""


async def acknowledge_alert(
    pool: AsyncConnectionPool[Any],
    settings: Settings,
    alert_id: int,
    by: str,
    *,
    clock: Clock | None = None,
    who: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Acknowledge alert ``alert_id`` on behalf of ``by``.

    Sets ``acknowledged_at``/``acknowledged_by`` and records an ``alert_events`` row
    (``to_state`` ``acknowledged``, details ``{"by", **who}``, ``who`` being the API key's
    id and name); the first ack wins, acking again is a no-op. Cancels the escalation
    levels and repeat notices not yet sent, and queues an acknowledged notice to the
    channels that were told (PagerDuty gets
    ``event_action: acknowledge`` for the same ``dedup_key``; SMS and Alertmanager get
    nothing). Returns ``{"id", "fingerprint", "rule_id", "state", "acknowledged_at",
    "acknowledged_by", "resolved_at", "escalation_stopped", "notified"}``.
    Raises UnknownAlert when there is no such alert.
    """
    now = (clock or SystemClock()).now()
    available = enabled(await load_configs(pool, settings))
    async with pool.connection() as conn, conn.transaction():
        summary, _ = await store.acknowledge(
            conn, alert_id, by, now=now, available=available, who=who
        )
    return summary


async def resolve_alert(
    pool: AsyncConnectionPool[Any],
    settings: Settings,
    alert_id: int,
    by: str,
    *,
    clock: Clock | None = None,
    who: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Resolve alert ``alert_id`` by hand on behalf of ``by``.

    Sets the alert ``resolved`` (and records an ``alert_events`` row with
    ``{"manual": true, "by": ..., **who}``), stops escalation and repeats, and queues resolved
    notices to every channel that was told. Resolving twice sends nothing new. Returns the
    same shape as :func:`acknowledge_alert`; raises UnknownAlert when there is no such alert.
    """
    now = (clock or SystemClock()).now()
    available = enabled(await load_configs(pool, settings))
    async with pool.connection() as conn, conn.transaction():
        summary, _ = await store.manual_resolve(
            conn, alert_id, by, now=now, available=available, who=who
        )
    return summary


def validate_channel_config(
    channel: str, config: dict[str, Any], secret_prefix: str = DEFAULT_PREFIX
) -> dict[str, Any]:
    """Check ``config`` for ``channel`` and return it normalised (defaults filled in).

    Raises InvalidChannelConfig (message ``"<channel>: field '<name>': <problem>"``) for a
    non-object config, an unknown channel or a bad field. Secrets are kept as given,
    ``${NAME}`` references included (whole values naming a variable that starts with
    ``secret_prefix``; see :mod:`notifier.secrets`).
    """
    if not isinstance(config, dict):
        raise InvalidChannelConfig("config must be a JSON object", channel)
    try:
        return _validate(channel, config, secret_prefix)
    except ChannelError as exc:
        refused = InvalidChannelConfig(str(exc))
        refused.channel = exc.channel
        raise refused from None


async def configure_channel(
    pool: AsyncConnectionPool[Any],
    settings: Settings,
    channel: str,
    enabled: bool,
    config: dict[str, Any],
) -> dict[str, Any]:
    """Validate and store ``channel``'s config (replacing the environment's), return it masked.

    Returns ``{"channel", "enabled", "source": "api", "config": {...secrets masked...}}``.
    A running notifier picks the change up within its housekeeping interval (2 s).
    """
    if not isinstance(enabled, bool):
        raise InvalidChannelConfig("enabled must be true or false", channel)
    clean = validate_channel_config(channel, config, settings.channels.reference_env_prefix)
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO channel_configs (channel, enabled, config, updated_at)"
            " VALUES (%s, %s, %s, now()) ON CONFLICT (channel) DO UPDATE SET"
            " enabled = EXCLUDED.enabled, config = EXCLUDED.config, updated_at = now()",
            (channel, enabled, Jsonb(clean)),
        )
    result = ChannelConfig(channel, enabled, clean, "api").masked()
    log.info("channel %s configured: %s", channel, result)
    return result


async def list_channels(pool: AsyncConnectionPool[Any], settings: Settings) -> list[dict[str, Any]]:
    """Every known channel with its effective config masked (``configured`` false when
    neither the environment nor the API set one)."""
    configs = await load_configs(pool, settings)
    out = []
    for name in sorted(REGISTRY):
        if name in configs:
            out.append({**configs[name].masked(), "configured": True})
        else:
            out.append(
                {
                    "channel": name,
                    "enabled": False,
                    "source": None,
                    "config": {},
                    "configured": False,
                }
            )
    return out


def test_alert(now: float) -> dict[str, Any]:
    """The synthetic alert a test message is about."""
    return {
        "alert_id": None,
        "fingerprint": f"test-{uuid.uuid4().hex[:12]}",
        "rule_id": "qesmon-test",
        "rule_name": "Test notification",
        "severity": "info",
        "state": "firing",
        "value": None,
        "tenant": "",
        "labels": {"test": "true"},
        "annotations": {"summary": "If you can read this, the channel works."},
        "started_at": iso(now),
        "fired_at": iso(now),
        "resolved_at": None,
        "at": iso(now),
        "level": 0,
        "by": "",
    }


async def send_test(
    pool: AsyncConnectionPool[Any],
    settings: Settings,
    session: aiohttp.ClientSession,
    channel: str,
    *,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Send a real test message on ``channel`` now (not through the outbox) and report it.

    Returns ``{"channel", "ok", "status", "latency_ms", "error"}`` (``error`` has secrets
    scrubbed) and records the attempt in ``deliveries`` with key ``test:<uuid>``. Raises
    ChannelError when the channel is unknown or not configured (disabled channels can be
    tested, so they can be checked before being switched on).
    """
    channel_class(channel)
    configs = await load_configs(pool, settings)
    if channel not in configs:
        raise ChannelError(
            "not configured: set it with /alerts/configure or its environment variables", channel
        )
    instance = configs[channel].build()
    clock = SystemClock()
    now = clock.now()
    key = f"test:{uuid.uuid4().hex}"
    message = Message("test", [test_alert(now)], [key], group_key="test")
    env = SendEnv(session, Renderer(template_dirs(settings)), clock, environ)
    started = time.perf_counter()
    status: int | None = None
    error: str | None = None
    try:
        result = await instance.send(message, env)
        status = result.status
    except DeliveryError as exc:
        status, error = exc.status, str(exc)
    except ChannelError as exc:
        error = str(exc)
    latency = round((time.perf_counter() - started) * 1000, 1)
    if error is not None:
        with contextlib.suppress(ChannelError):
            error = scrub(error, secret_values(instance.resolved(environ), instance.secret_fields))
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO deliveries (notification_key, channel, attempt, status, http_status,"
            " latency_ms, error) VALUES (%s, %s, 1, %s, %s, %s, %s)",
            (key, channel, "sent" if error is None else "failed", status, latency, error),
        )
    return {
        "channel": channel,
        "ok": error is None,
        "status": status,
        "latency_ms": latency,
        "error": error,
    }
