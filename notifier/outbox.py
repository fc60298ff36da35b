"""The outbox's leases: delivery workers claim the due rows of a channel, record each attempt.

:mod:`notifier.store` queues the rows (``notifier_outbox``, one per notification key and
channel) in the transaction that decided them; here they are taken out. :func:`claim` leases
whole groups, oldest first, to one worker until the lease runs out (``locked_until``), so
two workers never send the same row and a crashed worker's rows come due again;
:func:`complete` writes one ``deliveries`` row per row and attempt and moves the rows on
(sent, pending again for a retry, failed, given up), or closes them when the database
refuses that record. Every function takes the pool and a ``now`` from the notifier's clock.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from notifier.clock import to_datetime
from qesmon import db

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    key: str
    kind: str
    alert_id: int | None
    group_key: str
    context: dict[str, Any]
    template_set: str | None
    attempts: int
    created_at: float


async def claim(
    pool: AsyncConnectionPool[Any],
    channel: str,
    *,
    worker: str,
    now: float,
    lease: float,
    max_groups: int = 50,
    limit: int = 500,
) -> list[OutboxRow]:
    """Lease the due rows of ``channel``: whole groups, oldest first."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "WITH due AS ("
            "  SELECT group_key FROM notifier_outbox"
            "   WHERE channel = %(ch)s AND status = 'pending' AND next_attempt_at <= %(now)s"
            "     AND (locked_until IS NULL OR locked_until <= %(now)s)"
            "   GROUP BY group_key ORDER BY min(id) LIMIT %(groups)s"
            "), picked AS ("
            "  SELECT o.id FROM notifier_outbox o JOIN due USING (group_key)"
            "   WHERE o.channel = %(ch)s AND o.status = 'pending'"
            "     AND (o.locked_until IS NULL OR o.locked_until <= %(now)s)"
            "   ORDER BY o.id LIMIT %(limit)s FOR UPDATE OF o SKIP LOCKED"
            ") UPDATE notifier_outbox o SET locked_until = %(lease)s, locked_by = %(me)s"
            " FROM picked WHERE o.id = picked.id"
            " RETURNING o.id, o.notification_key, o.kind, o.alert_id, o.group_key, o.context,"
            " o.template_set, o.attempts, o.created_at",
            {
                "ch": channel,
                "now": to_datetime(now),
                "groups": max_groups,
                "limit": limit,
                "lease": to_datetime(now + lease),
                "me": worker,
            },
        )
        rows = await cur.fetchall()
    out = [
        OutboxRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8].timestamp()) for r in rows
    ]
    out.sort(key=lambda r: r.id)
    return out


async def next_due(pool: AsyncConnectionPool[Any], channel: str) -> float | None:
    """When the next pending row of ``channel`` becomes due (Unix seconds), if any."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT min(greatest(next_attempt_at, coalesce(locked_until, next_attempt_at)))"
            " FROM notifier_outbox WHERE channel = %s AND status = 'pending'",
            (channel,),
        )
        row = await cur.fetchone()
    return None if row is None or row[0] is None else float(row[0].timestamp())


@dataclass(frozen=True, slots=True)
class Attempt:
    """The result of sending one group: ``status`` is the deliveries status of every row."""

    status: str  # sent | retrying | failed | given_up
    http_status: int | None
    latency_ms: float
    error: str | None
    next_attempt: float | None = None


def storable(text: str | None, limit: int = 1000) -> str | None:
    """``text`` as a text column can hold it: NUL written as ``\\x00``, at most ``limit``
    characters (a receiver's answer ends up in error columns as it was sent)."""
    if text is None:
        return None
    return text.replace("\x00", "\\x00")[:limit]


async def complete(
    pool: AsyncConnectionPool[Any],
    channel: str,
    rows: Sequence[OutboxRow],
    attempt: Attempt,
    *,
    now: float,
) -> str | None:
    """Record one attempt for every row of a group and move the rows on.

    Returns None, or the database's message when it refused the record: the rows are then
    closed all the same (``sent`` stays sent, anything else becomes ``failed``) with that
    message as their ``last_error``, and no delivery row is written, so one refused record
    never puts its rows back in the queue to be sent and refused again."""
    ids = [r.id for r in rows]
    outbox_status = {
        "sent": "sent",
        "retrying": "pending",
        "failed": "failed",
        "given_up": "given_up",
    }[attempt.status]
    next_at = to_datetime(attempt.next_attempt if attempt.next_attempt is not None else now)
    error = storable(attempt.error)
    try:
        async with pool.connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE notifier_outbox SET status = %s, attempts = attempts + 1,"
                " next_attempt_at = %s, locked_until = NULL, locked_by = NULL,"
                " sent_at = CASE WHEN %s = 'sent' THEN %s::timestamptz END,"
                " last_status = %s, last_error = %s WHERE id = ANY(%s)",
                (
                    outbox_status,
                    next_at,
                    attempt.status,
                    to_datetime(now),
                    attempt.http_status,
                    error,
                    ids,
                ),
            )
            await conn.execute(
                "INSERT INTO deliveries (alert_id, notification_key, channel, attempt, status,"
                " http_status, latency_ms, error, created_at)"
                " SELECT a, k, %s, n, %s, %s, %s, %s, %s"
                " FROM unnest(%s::bigint[], %s::text[], %s::int[]) AS u(a, k, n)",
                (
                    channel,
                    attempt.status,
                    attempt.http_status,
                    attempt.latency_ms,
                    error,
                    to_datetime(now),
                    [r.alert_id for r in rows],
                    [r.key for r in rows],
                    [r.attempts + 1 for r in rows],
                ),
            )
        return None
    except psycopg.Error as exc:
        if not db.is_refusal(exc):
            raise
        refusal = db.describe(exc)
    log.error(
        "%s: the database refused the record of a delivery attempt (%s) for outbox rows %s;"
        " closing them as %s",
        channel,
        refusal,
        ids,
        "sent" if attempt.status == "sent" else "failed",
    )
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(
            "UPDATE notifier_outbox SET status = %s, attempts = attempts + 1,"
            " locked_until = NULL, locked_by = NULL,"
            " sent_at = CASE WHEN %s = 'sent' THEN %s::timestamptz END,"
            " last_status = %s, last_error = %s WHERE id = ANY(%s)",
            (
                "sent" if attempt.status == "sent" else "failed",
                attempt.status,
                to_datetime(now),
                attempt.http_status,
                storable(f"the database refused the delivery record: {refusal}"),
                ids,
            ),
        )
    return refusal
