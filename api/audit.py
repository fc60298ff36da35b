"""Who changed the notification setup: one ``audit_log`` row per configure or test call.

Acknowledge and resolve are recorded with the alert itself (``alert_events``, see
:mod:`notifier.actions`); this log holds the admin actions that concern no alert::

    await record(pool, principal, "configure", "webhook", {"enabled": True})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from api.keys import Principal


async def record(
    pool: AsyncConnectionPool[Any],
    principal: Principal,
    action: str,
    target: str,
    details: Mapping[str, Any] | None = None,
) -> None:
    """Append who (key id, name, tenant) did ``action`` on ``target``."""
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO audit_log (action, target, key_id, key_name, tenant_id, details)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (
                action,
                target,
                principal.key_id,
                principal.name,
                principal.tenant,
                Jsonb({"role": principal.role, **(details or {})}),
            ),
        )
