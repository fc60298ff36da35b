"""The notifier's database side: transitions into outbox rows, timers, leases, results.

Every function takes an open async connection inside the caller's transaction (or the pool,
for the self-contained ones) and a ``now`` from the notifier's clock. Tables: ``alerts``
(read, and written for manual resolve / acknowledge), ``notifier_*`` (migration 0200) and
``deliveries`` (one row per attempt per alert).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from notifier.channels import REGISTRY
from notifier.clock import iso, to_datetime
from notifier.policy import NotifierPolicy
from qesmon import db
from qesmon.alerts import AlertState, AlertTransition
from qesmon.errors import NotFound

log = logging.getLogger(__name__)

Conn = psycopg.AsyncConnection[Any]


@dataclass(slots=True)
class Plan:
    """What a transition or timer did; the service turns it into counters and wake-ups."""

    outcome: str
    alert_id: int | None = None
    channels: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


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


def _stamp(value: Any) -> str | None:
    """A timestamp column as ISO text (None stays None)."""
    return None if value is None else iso(value.timestamp())


def alert_context(
    row: Mapping[str, Any], *, state: str, at: float, level: int = 0, by: str = ""
) -> dict[str, Any]:
    """The snapshot of an alert the templates and wire formats read (stored in the outbox)."""

    return {
        "alert_id": row["id"],
        "fingerprint": row["fingerprint"],
        "rule_id": row["rule_id"],
        "rule_name": row["rule_name"],
        "severity": row["severity"],
        "state": state,
        "value": row["value"],
        "tenant": row["tenant_id"],
        "labels": dict(row["labels"] or {}),
        "annotations": dict(row["annotations"] or {}),
        "started_at": _stamp(row["started_at"]),
        "fired_at": _stamp(row["fired_at"]),
        "resolved_at": _stamp(row["resolved_at"]),
        "at": iso(at),
        "level": level,
        "by": by,
    }


_ALERT_COLS = (
    "id, fingerprint, rule_id, rule_name, severity, state, tenant_id, labels, "
    "annotations, value, started_at, fired_at, resolved_at, acknowledged_at, "
    "acknowledged_by"
)


async def _alert_for_firing(conn: Conn, t: AlertTransition) -> dict[str, Any]:
    """The episode a firing transition belongs to; created when the rule engine did not."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"SELECT {_ALERT_COLS} FROM alerts WHERE fingerprint = %s"
        " ORDER BY (state <> 'resolved') DESC, id DESC LIMIT 1",
        (t.fingerprint,),
    )
    row = await cur.fetchone()
    at = to_datetime(t.at)
    if row is not None and (row["state"] != "resolved" or (row["resolved_at"] or at) >= at):
        return row
    await cur.execute(
        "INSERT INTO alerts (fingerprint, rule_id, rule_name, severity, state, tenant_id,"
        " labels, annotations, value, started_at, fired_at)"
        " VALUES (%s, %s, %s, %s, 'firing', %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (fingerprint) WHERE state <> 'resolved' DO NOTHING"
        f" RETURNING {_ALERT_COLS}",
        (
            t.fingerprint,
            t.rule_id,
            t.rule_name,
            t.severity.value,
            t.tenant,
            Jsonb(dict(t.labels)),
            Jsonb(dict(t.annotations)),
            t.value,
            at,
            at,
        ),
    )
    row = await cur.fetchone()
    if row is None:  # the rule engine inserted it concurrently
        await cur.execute(
            f"SELECT {_ALERT_COLS} FROM alerts WHERE fingerprint = %s AND state <> 'resolved'",
            (t.fingerprint,),
        )
        row = await cur.fetchone()
    assert row is not None
    return row


async def _alert_by_id(conn: Conn, alert_id: int, lock: bool = False) -> dict[str, Any] | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"SELECT {_ALERT_COLS} FROM alerts WHERE id = %s" + (" FOR UPDATE" if lock else ""),
        (alert_id,),
    )
    return await cur.fetchone()


async def _episode(conn: Conn, alert_id: int) -> dict[str, Any] | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute("SELECT * FROM notifier_episodes WHERE alert_id = %s FOR UPDATE", (alert_id,))
    return await cur.fetchone()


async def enqueue(
    conn: Conn,
    *,
    key: str,
    channels: Sequence[str],
    kind: str,
    alert_id: int | None,
    group_key: str,
    context: Mapping[str, Any],
    template_set: str | None,
    now: float,
    delay: float = 0.0,
) -> list[str]:
    """Add one outbox row per channel (idempotent on (key, channel)); return those added."""
    added = []
    for name in channels:
        cls = REGISTRY[name]
        if kind not in cls.kinds:
            continue
        gk = f"{kind}|{template_set or ''}|" + (group_key if cls.groupable else f"alert={alert_id}")
        cur = await conn.execute(
            "INSERT INTO notifier_outbox (notification_key, channel, kind, alert_id, group_key,"
            " context, template_set, created_at, next_attempt_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (notification_key, channel) DO NOTHING RETURNING id",
            (
                key,
                name,
                kind,
                alert_id,
                gk,
                Jsonb(dict(context)),
                template_set,
                to_datetime(now),
                to_datetime(now + delay),
            ),
        )
        if await cur.fetchone() is not None:
            added.append(name)
    return added


async def record_transition(
    conn: Conn,
    t: AlertTransition,
    stream_id: str,
    *,
    policy: NotifierPolicy,
    available: Collection[str],
    now: float,
    time_scale: float,
) -> Plan:
    """Turn one stream entry into outbox rows and timers; a seen key is a no-op."""
    cur = await conn.execute(
        "INSERT INTO notifier_seen_transitions (key, stream_id) VALUES (%s, %s)"
        " ON CONFLICT (key) DO NOTHING RETURNING key",
        (t.key, stream_id),
    )
    if await cur.fetchone() is None:
        return Plan("duplicate")
    if t.to_state is AlertState.FIRING:
        return await _on_firing(conn, t, policy, available, now, time_scale)
    if t.to_state is AlertState.RESOLVED:
        return await _on_resolved(conn, t, policy, available, now)
    return Plan("ignored")


async def _on_firing(
    conn: Conn,
    t: AlertTransition,
    policy: NotifierPolicy,
    available: Collection[str],
    now: float,
    time_scale: float,
) -> Plan:
    alert = await _alert_for_firing(conn, t)
    alert_id = int(alert["id"])
    episode = await _episode(conn, alert_id)
    if episode is not None and episode["firing_notified_at"] is not None:
        return Plan("deduped", alert_id)
    route = policy.routing.route(t)
    escalation = policy.escalation.get(route.escalation) if route.escalation else None
    if route.escalation and escalation is None:
        log.warning(
            "alert %s names escalation policy %r, which is not defined",
            t.fingerprint,
            route.escalation,
        )
    wanted = list(route.channels)
    if escalation is not None:
        wanted += [c for c in escalation.immediate_channels() if c not in wanted]
    channels = [c for c in wanted if c in available]
    skipped = [c for c in wanted if c not in available]
    context = alert_context(alert, state="firing", at=t.at)
    added = await enqueue(
        conn,
        key=t.key,
        channels=channels,
        kind="firing",
        alert_id=alert_id,
        group_key=route.group_key,
        context=context,
        template_set=t.template,
        now=now,
        delay=route.group_wait,
    )
    base = min(now, t.at) if t.at > 0 else now
    await conn.execute(
        "INSERT INTO notifier_episodes (alert_id, fingerprint, told_channels, policy,"
        " repeat_interval, template_set, group_key, firing_notified_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (alert_id) DO UPDATE SET told_channels = EXCLUDED.told_channels,"
        " policy = EXCLUDED.policy, repeat_interval = EXCLUDED.repeat_interval,"
        " template_set = EXCLUDED.template_set, group_key = EXCLUDED.group_key,"
        " firing_notified_at = EXCLUDED.firing_notified_at",
        (
            alert_id,
            t.fingerprint,
            channels,
            escalation.name if escalation else None,
            route.repeat_interval,
            t.template,
            route.group_key,
            to_datetime(now),
        ),
    )
    if escalation is not None:
        for level, delay, level_channels in escalation.delayed_levels(time_scale):
            await conn.execute(
                "INSERT INTO notifier_timers (alert_id, kind, level, due_at, channels)"
                " VALUES (%s, 'escalate', %s, %s, %s) ON CONFLICT DO NOTHING",
                (alert_id, level, to_datetime(max(now, base + delay)), list(level_channels)),
            )
    if route.repeat_interval > 0 and channels:
        await conn.execute(
            "INSERT INTO notifier_timers (alert_id, kind, level, due_at)"
            " VALUES (%s, 'repeat', 1, %s) ON CONFLICT DO NOTHING",
            (alert_id, to_datetime(now + route.repeat_interval * time_scale)),
        )
    return Plan("notified", alert_id, added, skipped)


async def _find_resolved_alert(conn: Conn, t: AlertTransition) -> dict[str, Any] | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"SELECT {_ALERT_COLS} FROM alerts WHERE fingerprint = %s"
        " ORDER BY (started_at <= %s) DESC, id DESC LIMIT 1",
        (t.fingerprint, to_datetime(t.at)),
    )
    return await cur.fetchone()


async def _on_resolved(
    conn: Conn, t: AlertTransition, policy: NotifierPolicy, available: Collection[str], now: float
) -> Plan:
    alert = await _find_resolved_alert(conn, t)
    if alert is None:
        return Plan("ignored")
    at = to_datetime(t.at)
    await conn.execute(
        "UPDATE alerts SET state = 'resolved', resolved_at = coalesce(resolved_at, %s),"
        " updated_at = %s WHERE id = %s AND state <> 'resolved'",
        (at, to_datetime(now), alert["id"]),
    )
    if alert["resolved_at"] is None:
        alert["resolved_at"] = at
    group_wait = policy.routing.route(t).group_wait
    return await resolve_episode(
        conn, alert, key=t.key, now=now, at=t.at, available=available, delay=group_wait
    )


async def resolve_episode(
    conn: Conn,
    alert: Mapping[str, Any],
    *,
    key: str,
    now: float,
    at: float,
    available: Collection[str],
    by: str = "",
    delay: float = 0.0,
) -> Plan:
    """Cancel the timers of an episode and queue resolved notices to every channel told."""
    alert_id = int(alert["id"])
    await conn.execute(
        "UPDATE notifier_timers SET status = 'cancelled'"
        " WHERE alert_id = %s AND status = 'pending'",
        (alert_id,),
    )
    episode = await _episode(conn, alert_id)
    if episode is None or episode["firing_notified_at"] is None:
        return Plan("ignored", alert_id)
    if episode["resolved_notified_at"] is not None:
        return Plan("deduped", alert_id)
    told = list(episode["told_channels"])
    channels = [c for c in told if c in available]
    context = alert_context(alert, state="resolved", at=at, by=by)
    added = await enqueue(
        conn,
        key=key,
        channels=channels,
        kind="resolved",
        alert_id=alert_id,
        group_key=episode["group_key"],
        context=context,
        template_set=episode["template_set"],
        now=now,
        delay=delay,
    )
    await conn.execute(
        "UPDATE notifier_episodes SET resolved_notified_at = %s WHERE alert_id = %s",
        (to_datetime(now), alert_id),
    )
    return Plan("notified", alert_id, added, [c for c in told if c not in available])


async def fire_due_timers(
    conn: Conn, *, now: float, available: Collection[str], time_scale: float, limit: int = 100
) -> list[Plan]:
    """Fire escalation and repeat timers that are due (skipping acknowledged/resolved ones)."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT t.id, t.alert_id, t.kind, t.level, t.channels FROM notifier_timers t"
        " WHERE t.status = 'pending' AND t.due_at <= %s ORDER BY t.due_at LIMIT %s"
        " FOR UPDATE OF t SKIP LOCKED",
        (to_datetime(now), limit),
    )
    timers = await cur.fetchall()
    plans = []
    for timer in timers:
        alert = await _alert_by_id(conn, timer["alert_id"])
        episode = await _episode(conn, timer["alert_id"])
        live = (
            alert is not None
            and episode is not None
            and alert["state"] != "resolved"
            and alert["acknowledged_at"] is None
            and episode["resolved_notified_at"] is None
        )
        if not live:
            await conn.execute(
                "UPDATE notifier_timers SET status = 'cancelled' WHERE id = %s", (timer["id"],)
            )
            plans.append(Plan("cancelled", timer["alert_id"]))
            continue
        assert alert is not None and episode is not None
        alert_id = int(alert["id"])
        if timer["kind"] == "escalate":
            wanted = list(timer["channels"])
            kind, key = "escalated", f"{alert_id}:escalate:{timer['level']}"
        else:
            wanted = list(episode["told_channels"])
            kind, key = "repeat", f"{alert_id}:repeat:{timer['level']}"
        channels = [c for c in wanted if c in available]
        context = alert_context(alert, state="firing", at=now, level=timer["level"])
        added = await enqueue(
            conn,
            key=key,
            channels=channels,
            kind=kind,
            alert_id=alert_id,
            group_key=f"level={timer['level']}," + episode["group_key"],
            context=context,
            template_set=episode["template_set"],
            now=now,
        )
        if kind == "escalated":
            told = list(episode["told_channels"]) + [
                c for c in channels if c not in episode["told_channels"]
            ]
            await conn.execute(
                "UPDATE notifier_episodes SET told_channels = %s WHERE alert_id = %s",
                (told, alert_id),
            )
        elif episode["repeat_interval"]:
            await conn.execute(
                "INSERT INTO notifier_timers (alert_id, kind, level, due_at)"
                " VALUES (%s, 'repeat', %s, %s) ON CONFLICT DO NOTHING",
                (
                    alert_id,
                    timer["level"] + 1,
                    to_datetime(now + float(episode["repeat_interval"]) * time_scale),
                ),
            )
        await conn.execute(
            "UPDATE notifier_timers SET status = 'fired', fired_at = %s WHERE id = %s",
            (to_datetime(now), timer["id"]),
        )
        plans.append(Plan(kind, alert_id, added, [c for c in wanted if c not in available]))
    return plans


async def acknowledge(
    conn: Conn, alert_id: int, by: str, *, now: float, available: Collection[str]
) -> tuple[dict[str, Any], Plan]:
    """Mark an alert acknowledged, stop its timers, queue acknowledged notices."""
    alert = await _alert_by_id(conn, alert_id, lock=True)
    if alert is None:
        raise NotFound(f"alert {alert_id} does not exist")
    if alert["acknowledged_at"] is None:
        alert["acknowledged_at"] = to_datetime(now)
        alert["acknowledged_by"] = by
        await conn.execute(
            "UPDATE alerts SET acknowledged_at = %s, acknowledged_by = %s,"
            " updated_at = %s WHERE id = %s",
            (alert["acknowledged_at"], by, alert["acknowledged_at"], alert_id),
        )
    cur = await conn.execute(
        "UPDATE notifier_timers SET status = 'cancelled'"
        " WHERE alert_id = %s AND status = 'pending' RETURNING id",
        (alert_id,),
    )
    stopped = len(await cur.fetchall())
    plan = Plan("acknowledged", alert_id)
    episode = await _episode(conn, alert_id)
    if (
        episode is not None
        and alert["state"] != "resolved"
        and episode["acknowledged_notified_at"] is None
        and episode["resolved_notified_at"] is None
    ):
        channels = [c for c in episode["told_channels"] if c in available]
        context = alert_context(alert, state=alert["state"], at=now, by=by)
        plan.channels = await enqueue(
            conn,
            key=f"{alert_id}:acknowledged",
            channels=channels,
            kind="acknowledged",
            alert_id=alert_id,
            group_key=episode["group_key"],
            context=context,
            template_set=episode["template_set"],
            now=now,
        )
        await conn.execute(
            "UPDATE notifier_episodes SET acknowledged_notified_at = %s WHERE alert_id = %s",
            (to_datetime(now), alert_id),
        )
    return _summary(alert, stopped=stopped, notified=plan.channels), plan


async def manual_resolve(
    conn: Conn, alert_id: int, by: str, *, now: float, available: Collection[str]
) -> tuple[dict[str, Any], Plan]:
    """Resolve an alert by hand: state, an alert event, and resolved notices."""
    alert = await _alert_by_id(conn, alert_id, lock=True)
    if alert is None:
        raise NotFound(f"alert {alert_id} does not exist")
    if alert["state"] != "resolved":
        at = to_datetime(now)
        await conn.execute(
            "UPDATE alerts SET state = 'resolved', resolved_at = %s, updated_at = %s WHERE id = %s",
            (at, at, alert_id),
        )
        await conn.execute(
            "INSERT INTO alert_events (alert_id, fingerprint, from_state, to_state, at, value,"
            " details) VALUES (%s, %s, %s, 'resolved', %s, %s, %s)"
            " ON CONFLICT DO NOTHING",
            (
                alert_id,
                alert["fingerprint"],
                alert["state"],
                at,
                alert["value"],
                Jsonb({"manual": True, "by": by}),
            ),
        )
        alert["state"], alert["resolved_at"] = "resolved", at
    cur = await conn.execute(
        "SELECT count(*) FROM notifier_timers WHERE alert_id = %s AND status = 'pending'",
        (alert_id,),
    )
    pending = await cur.fetchone()
    plan = await resolve_episode(
        conn, alert, key=f"{alert_id}:resolve", now=now, at=now, available=available, by=by
    )
    return _summary(alert, stopped=int(pending[0]) if pending else 0, notified=plan.channels), plan


def _summary(alert: Mapping[str, Any], *, stopped: int, notified: list[str]) -> dict[str, Any]:
    return {
        "id": alert["id"],
        "fingerprint": alert["fingerprint"],
        "rule_id": alert["rule_id"],
        "state": alert["state"],
        "acknowledged_at": _stamp(alert["acknowledged_at"]),
        "acknowledged_by": alert["acknowledged_by"],
        "resolved_at": _stamp(alert["resolved_at"]),
        "escalation_stopped": stopped,
        "notified": notified,
    }


# -- outbox leases and results ---------------------------------------------------------------


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


def describe(exc: BaseException) -> str:
    """The database's message for ``exc`` with its SQLSTATE, on one line."""
    state = getattr(exc, "sqlstate", None)
    diag = getattr(exc, "diag", None)
    text = (getattr(diag, "message_primary", None) if diag is not None else None) or str(exc)
    text = " ".join(text.split())
    return f"{text} (SQLSTATE {state})" if state else f"{type(exc).__name__}: {text}"


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
        refusal = describe(exc)
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
