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
from notifier.receivers import NAME, receiver_id
from notifier.secrets import DEFAULT_PREFIX, scrub, secret_values
from notifier.service import template_dirs
from notifier.templating import Renderer
from qesmon.errors import ChannelError, DeliveryError
from qesmon.settings import Settings

log = logging.getLogger(__name__)


class InvalidChannelConfig(ChannelError):
    """A channel config given to :func:`configure_channel` is refused: an unknown channel, a
    config that is not an object, a bad or missing field (the message names which)."""


class TooManyReceivers(ChannelError):
    """A tenant has ``RECEIVERS_PER_TENANT`` receivers already."""


class UnknownReceiver(ChannelError):
    """No such receiver (for this owner)."""


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
    *,
    tenant: str = "",
    name: str | None = None,
    who: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Validate and store a receiver, return it masked.

    ``tenant`` "" configures the platform's receiver of ``channel`` (named after it, replacing
    the environment's config); a tenant's receiver is named ``name`` (default: the channel
    type) and only ever gets that tenant's alerts. A tenant has at most
    ``RECEIVERS_PER_TENANT`` receivers (TooManyReceivers beyond). ``who`` (the API key's id
    and name) is stored with it. Returns ``{"receiver", "tenant_id", "channel", "enabled",
    "source": "api", "config": {...secrets masked...}}``. A running notifier picks the
    change up within its housekeeping interval (2 s).
    """
    if not isinstance(enabled, bool):
        raise InvalidChannelConfig("enabled must be true or false", channel)
    name = _receiver_name(channel, tenant, name)
    clean = validate_channel_config(channel, config, settings.channels.reference_env_prefix)
    async with pool.connection() as conn, conn.transaction():
        if tenant:
            # one at a time per tenant, so concurrent requests cannot pass the bound together
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"rcv:{tenant}",))
            cur = await conn.execute(
                "SELECT count(*) FILTER (WHERE name <> %s) FROM receivers WHERE tenant_id = %s",
                (name, tenant),
            )
            row = await cur.fetchone()
            bound = settings.channels.receivers_per_tenant
            if row is not None and row[0] >= bound:
                raise TooManyReceivers(
                    f"tenant {tenant[:100]!r} has {row[0]} receivers already"
                    f" (at most {bound}: RECEIVERS_PER_TENANT); delete one first",
                    channel,
                )
        await conn.execute(
            "INSERT INTO receivers (tenant_id, name, channel, enabled, config, updated_at,"
            " updated_by) VALUES (%s, %s, %s, %s, %s, now(), %s)"
            " ON CONFLICT (tenant_id, name) DO UPDATE SET channel = EXCLUDED.channel,"
            " enabled = EXCLUDED.enabled, config = EXCLUDED.config, updated_at = now(),"
            " updated_by = EXCLUDED.updated_by",
            (tenant, name, channel, enabled, Jsonb(clean), Jsonb(dict(who or {}))),
        )
    result = ChannelConfig(channel, enabled, clean, "api", tenant=tenant, name=name).masked()
    log.info("receiver %s configured: %s", receiver_id(tenant, name), result)
    return result


def _receiver_name(channel: str, tenant: str, name: str | None) -> str:
    """The receiver's name, checked: the channel type for the platform's."""
    channel_class(channel)
    if name is None:
        return channel
    if not tenant and name != channel:
        raise InvalidChannelConfig(
            f"receiver: the platform's receivers are named after their channel ({channel!r})",
            channel,
        )
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidChannelConfig(
            "receiver: 1-63 of a-z, 0-9, '_' and '-', starting with a letter or digit", channel
        )
    return name


async def list_channels(
    pool: AsyncConnectionPool[Any], settings: Settings, *, tenant: str | None = None
) -> list[dict[str, Any]]:
    """Receivers with their effective config masked: every one (``tenant`` None), or only
    ``tenant``'s (a tenant sees nothing of the platform's or another tenant's). The platform's
    listing has a row for every channel type (``configured`` false when neither the
    environment nor the API set one)."""
    configs = await load_configs(pool, settings, tenant=tenant)
    out = [{**c.masked(), "configured": True} for _, c in sorted(configs.items())]
    if tenant:
        return out
    for name in sorted(REGISTRY):
        if name not in configs:
            out.append(
                {
                    "receiver": name,
                    "tenant_id": None,
                    "channel": name,
                    "enabled": False,
                    "source": None,
                    "config": {},
                    "configured": False,
                }
            )
    return out


async def delete_receiver(pool: AsyncConnectionPool[Any], tenant: str, name: str) -> None:
    """Remove ``tenant``'s receiver ``name`` (for the platform's, its stored config: the
    environment's applies again). UnknownReceiver when there is none."""
    if not NAME.fullmatch(name):
        raise UnknownReceiver(f"no receiver {name[:63]!r} is configured here", name[:63])
    async with pool.connection() as conn:
        cur = await conn.execute(
            "DELETE FROM receivers WHERE tenant_id = %s AND name = %s", (tenant, name)
        )
        if cur.rowcount == 0:
            raise UnknownReceiver(f"no receiver {name[:63]!r} is configured here", name[:63])
    log.info("receiver %s deleted", receiver_id(tenant, name))


def test_alert(now: float, tenant: str = "") -> dict[str, Any]:
    """The synthetic alert a test message is about."""
    return {
        "alert_id": None,
        "fingerprint": f"test-{uuid.uuid4().hex[:12]}",
        "rule_id": "qesmon-test",
        "rule_name": "Test notification",
        "severity": "info",
        "state": "firing",
        "value": None,
        "tenant": tenant,
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
    tenant: str = "",
    name: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Send a real test message to a receiver now (not through the outbox) and report it:
    the platform's receiver of ``channel`` (``tenant`` ""), or ``tenant``'s receiver ``name``
    (default: the channel type), whose test alert carries that tenant.

    Returns ``{"receiver", "tenant_id", "channel", "ok", "status", "latency_ms", "error"}``
    (``error`` has secrets scrubbed) and records the attempt in ``deliveries`` with key
    ``test:<uuid>``. Raises ChannelError when the channel is unknown or the receiver not
    configured (disabled receivers can be tested, so they can be checked before being
    switched on).
    """
    name = _receiver_name(channel, tenant, name)
    rid = receiver_id(tenant, name)
    configs = await load_configs(pool, settings, tenant=tenant)
    if rid not in configs or configs[rid].channel != channel:
        how = "/alerts/configure" + ("" if tenant else " or its environment variables")
        raise ChannelError(f"receiver {name!r} is not configured: set it with {how}", channel)
    instance = configs[rid].build()
    clock = SystemClock()
    now = clock.now()
    key = f"test:{uuid.uuid4().hex}"
    message = Message("test", [test_alert(now, tenant)], [key], group_key="test")
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
            (key, rid, "sent" if error is None else "failed", status, latency, error),
        )
    return {
        "receiver": name,
        "tenant_id": tenant or None,
        "channel": channel,
        "ok": error is None,
        "status": status,
        "latency_ms": latency,
        "error": error,
    }
