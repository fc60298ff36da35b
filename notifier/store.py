"""The notifier's database side: loads the records decisions need, applies their plans.

Every function takes an open async connection inside the caller's transaction and a ``now``
from the notifier's clock. What is decided — who is told, when, what timers run, what an
episode remembers — is decided in :mod:`notifier.decide` (pure); here the records are loaded,
in the order that takes row locks as every path does (alert, then its timers, then its episode,
so two paths never wait on each other), handed over, and the resulting
:class:`~notifier.decide.Plan` is written by :func:`apply`. Tables: ``alerts`` (read, and
written for resolve / acknowledge) and ``notifier_*`` (migration 0200); the outbox rows queued
here are leased and sent through :mod:`notifier.outbox`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from notifier import decide
from notifier.clock import iso, to_datetime
from notifier.decide import Alert, DueTimer, Episode, Notice, Outcome, Plan
from notifier.policy import NotifierPolicy
from notifier.receivers import Available
from qesmon.alerts import AlertState, AlertTransition
from qesmon.errors import NotFound

log = logging.getLogger(__name__)

Conn = psycopg.AsyncConnection[Any]


class UnknownAlert(NotFound):
    """There is no alert with this id (a :class:`~qesmon.errors.NotFound`: the API answers
    404 ``not_found``)."""

    def __init__(self, alert_id: int) -> None:
        super().__init__(f"alert {alert_id} does not exist")
        self.alert_id = alert_id


# -- loading records ---------------------------------------------------------------------------


def _unix(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


_ALERT_COLS = (
    "id, fingerprint, rule_id, rule_name, severity, state, tenant_id, labels, "
    "annotations, value, started_at, fired_at, resolved_at, acknowledged_at, "
    "acknowledged_by"
)


def _alert(row: Mapping[str, Any]) -> Alert:
    return Alert(
        id=int(row["id"]),
        fingerprint=row["fingerprint"],
        rule_id=row["rule_id"],
        rule_name=row["rule_name"],
        severity=row["severity"],
        state=row["state"],
        tenant=row["tenant_id"],
        labels=dict(row["labels"] or {}),
        annotations=dict(row["annotations"] or {}),
        value=row["value"],
        started_at=_unix(row["started_at"]),
        fired_at=_unix(row["fired_at"]),
        resolved_at=_unix(row["resolved_at"]),
        acknowledged_at=_unix(row["acknowledged_at"]),
        acknowledged_by=row["acknowledged_by"],
    )


async def _alert_for_firing(conn: Conn, t: AlertTransition) -> Alert:
    """The episode a firing transition belongs to; created when the rule engine did not."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"SELECT {_ALERT_COLS} FROM alerts WHERE fingerprint = %s"
        " ORDER BY (state <> 'resolved') DESC, id DESC LIMIT 1",
        (t.fingerprint,),
    )
    row = await cur.fetchone()
    if row is not None and decide.is_episode_of(alert := _alert(row), t):
        return alert
    at = to_datetime(t.at)
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
    return _alert(row)


async def _alert_by_id(conn: Conn, alert_id: int, lock: bool = False) -> Alert | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"SELECT {_ALERT_COLS} FROM alerts WHERE id = %s" + (" FOR UPDATE" if lock else ""),
        (alert_id,),
    )
    row = await cur.fetchone()
    return None if row is None else _alert(row)


async def _alert_resolved_by(conn: Conn, t: AlertTransition) -> Alert | None:
    """The episode a resolved transition ends (the newest that started by then), locked."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"SELECT {_ALERT_COLS} FROM alerts WHERE fingerprint = %s"
        " ORDER BY (started_at <= %s) DESC, id DESC LIMIT 1 FOR UPDATE",
        (t.fingerprint, to_datetime(t.at)),
    )
    row = await cur.fetchone()
    return None if row is None else _alert(row)


async def _pending_timers(conn: Conn, alert_id: int) -> list[int]:
    """Ids of the alert's pending timers, locked (before its episode, as the timer loop)."""
    cur = await conn.execute(
        "SELECT id FROM notifier_timers WHERE alert_id = %s AND status = 'pending'"
        " ORDER BY id FOR UPDATE",
        (alert_id,),
    )
    return [int(r[0]) for r in await cur.fetchall()]


async def _episode(conn: Conn, alert_id: int) -> Episode | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute("SELECT * FROM notifier_episodes WHERE alert_id = %s FOR UPDATE", (alert_id,))
    row = await cur.fetchone()
    if row is None:
        return None
    return Episode(
        alert_id=int(row["alert_id"]),
        fingerprint=row["fingerprint"],
        told_channels=tuple(row["told_channels"]),
        policy=row["policy"],
        repeat_interval=row["repeat_interval"],
        template_set=row["template_set"],
        group_key=row["group_key"],
        firing_notified_at=_unix(row["firing_notified_at"]),
        acknowledged_notified_at=_unix(row["acknowledged_notified_at"]),
        resolved_notified_at=_unix(row["resolved_notified_at"]),
    )


# -- applying plans ----------------------------------------------------------------------------


async def apply(conn: Conn, plan: Plan, *, now: float) -> Plan:
    """Write ``plan`` (``now`` stamps the writes themselves: ``updated_at``, ``fired_at``).

    Returns the plan as applied: its outbox holds only the rows that were new (a row with
    the same notification key and channel is never queued twice)."""
    for warning in plan.warnings:
        log.warning("%s", warning)
    if plan.alert_change is not None and plan.alert is not None:
        await _change_alert(conn, plan.alert, plan.alert_change, now)
    if plan.cancel:
        await conn.execute(
            "UPDATE notifier_timers SET status = 'cancelled'"
            " WHERE id = ANY(%s) AND status = 'pending'",
            (list(plan.cancel),),
        )
    added = [notice for notice in plan.outbox if await _add_notice(conn, notice)]
    if plan.episode is not None:
        await _write_episode(conn, plan.episode)
    for timer in plan.timers:
        await conn.execute(
            "INSERT INTO notifier_timers (alert_id, kind, level, due_at, channels)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (
                timer.alert_id,
                timer.kind,
                timer.level,
                to_datetime(timer.due_at),
                list(timer.channels),
            ),
        )
    if plan.fired is not None:
        await conn.execute(
            "UPDATE notifier_timers SET status = 'fired', fired_at = %s WHERE id = %s",
            (to_datetime(now), plan.fired),
        )
    return plan if len(added) == len(plan.outbox) else replace(plan, outbox=tuple(added))


async def _change_alert(conn: Conn, alert: Alert, change: decide.AlertChange, now: float) -> None:
    at = to_datetime(change.at)
    if change.action == "acknowledge":
        await conn.execute(
            "UPDATE alerts SET acknowledged_at = %s, acknowledged_by = %s,"
            " updated_at = %s WHERE id = %s",
            (at, change.by, at, alert.id),
        )
        # the alert's history says who acknowledged it, next to its state changes
        await conn.execute(
            "INSERT INTO alert_events (alert_id, fingerprint, from_state, to_state, at, value,"
            " details) VALUES (%s, %s, %s, 'acknowledged', %s, %s, %s)"
            " ON CONFLICT DO NOTHING",
            (
                alert.id,
                alert.fingerprint,
                alert.state,
                at,
                alert.value,
                Jsonb({"by": change.by, **(change.who or {})}),
            ),
        )
    elif change.action == "resolve":
        await conn.execute(
            "UPDATE alerts SET state = 'resolved', resolved_at = coalesce(resolved_at, %s),"
            " updated_at = %s WHERE id = %s AND state <> 'resolved'",
            (at, to_datetime(now), alert.id),
        )
    elif change.action == "resolve_by_hand":
        await conn.execute(
            "UPDATE alerts SET state = 'resolved', resolved_at = %s, updated_at = %s WHERE id = %s",
            (at, at, alert.id),
        )
        await conn.execute(
            "INSERT INTO alert_events (alert_id, fingerprint, from_state, to_state, at, value,"
            " details) VALUES (%s, %s, %s, 'resolved', %s, %s, %s)"
            " ON CONFLICT DO NOTHING",
            (
                alert.id,
                alert.fingerprint,
                change.from_state,
                at,
                alert.value,
                Jsonb({"manual": True, "by": change.by, **(change.who or {})}),
            ),
        )
    else:
        raise ValueError(f"unknown alert change {change.action!r}")


async def _add_notice(conn: Conn, n: Notice) -> bool:
    """Add one outbox row (idempotent on (key, channel)); True when it is new."""
    cur = await conn.execute(
        "INSERT INTO notifier_outbox (notification_key, channel, kind, alert_id, group_key,"
        " context, template_set, created_at, next_attempt_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (notification_key, channel) DO NOTHING RETURNING id",
        (
            n.key,
            n.channel,
            n.kind,
            n.alert_id,
            n.group_key,
            Jsonb(dict(n.context)),
            n.template_set,
            to_datetime(n.created_at),
            to_datetime(n.due_at),
        ),
    )
    return await cur.fetchone() is not None


async def _write_episode(conn: Conn, e: Episode) -> None:
    # the episode row is locked when it exists; when it did not, a concurrent insert keeps
    # the notices it recorded (coalesce)
    await conn.execute(
        "INSERT INTO notifier_episodes (alert_id, fingerprint, told_channels, policy,"
        " repeat_interval, template_set, group_key, firing_notified_at,"
        " acknowledged_notified_at, resolved_notified_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (alert_id) DO UPDATE SET told_channels = EXCLUDED.told_channels,"
        " policy = EXCLUDED.policy, repeat_interval = EXCLUDED.repeat_interval,"
        " template_set = EXCLUDED.template_set, group_key = EXCLUDED.group_key,"
        " firing_notified_at = coalesce(EXCLUDED.firing_notified_at,"
        "  notifier_episodes.firing_notified_at),"
        " acknowledged_notified_at = coalesce(EXCLUDED.acknowledged_notified_at,"
        "  notifier_episodes.acknowledged_notified_at),"
        " resolved_notified_at = coalesce(EXCLUDED.resolved_notified_at,"
        "  notifier_episodes.resolved_notified_at)",
        (
            e.alert_id,
            e.fingerprint,
            list(e.told_channels),
            e.policy,
            e.repeat_interval,
            e.template_set,
            e.group_key,
            _stamp_or_none(e.firing_notified_at),
            _stamp_or_none(e.acknowledged_notified_at),
            _stamp_or_none(e.resolved_notified_at),
        ),
    )


def _stamp_or_none(value: float | None) -> datetime | None:
    return None if value is None else to_datetime(value)


# -- the entry points --------------------------------------------------------------------------


async def record_transition(
    conn: Conn,
    t: AlertTransition,
    stream_id: str,
    *,
    policy: NotifierPolicy,
    available: Available,
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
        return Plan(Outcome.DUPLICATE)
    if t.to_state is AlertState.FIRING:
        alert = await _alert_for_firing(conn, t)
        episode = await _episode(conn, alert.id)
        plan = decide.firing(t, alert, episode, policy, available, now=now, time_scale=time_scale)
    elif t.to_state is AlertState.RESOLVED:
        found = await _alert_resolved_by(conn, t)
        if found is None:
            return Plan(Outcome.IGNORED)
        pending = await _pending_timers(conn, found.id)
        episode = await _episode(conn, found.id)
        plan = decide.resolved(t, found, pending, episode, policy, available, now=now)
    else:
        return Plan(Outcome.IGNORED)
    return await apply(conn, plan, now=now)


async def fire_due_timers(
    conn: Conn, *, now: float, available: Available, time_scale: float, limit: int = 100
) -> list[Plan]:
    """Fire escalation and repeat timers that are due (cancelling acknowledged/resolved ones)."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT t.id, t.alert_id, t.kind, t.level, t.channels FROM notifier_timers t"
        " WHERE t.status = 'pending' AND t.due_at <= %s ORDER BY t.due_at LIMIT %s"
        " FOR UPDATE OF t SKIP LOCKED",
        (to_datetime(now), limit),
    )
    rows = await cur.fetchall()
    plans = []
    for row in rows:
        timer = DueTimer(
            int(row["id"]), int(row["alert_id"]), row["kind"], row["level"], tuple(row["channels"])
        )
        # one by one: a timer sees what an earlier one of the same alert changed
        alert = await _alert_by_id(conn, timer.alert_id)
        episode = await _episode(conn, timer.alert_id)
        plan = decide.timer_due(timer, alert, episode, available, now=now, time_scale=time_scale)
        plans.append(await apply(conn, plan, now=now))
    return plans


async def acknowledge(
    conn: Conn,
    alert_id: int,
    by: str,
    *,
    now: float,
    available: Available,
    who: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], Plan]:
    """Mark an alert acknowledged, stop its timers, queue acknowledged notices; the first
    acknowledgement is recorded in ``alert_events`` with ``by`` and ``who``.

    Raises :class:`UnknownAlert` when there is no such alert."""
    alert = await _alert_by_id(conn, alert_id, lock=True)
    if alert is None:
        raise UnknownAlert(alert_id)
    pending = await _pending_timers(conn, alert_id)
    episode = await _episode(conn, alert_id)
    plan = _with_who(decide.acknowledge(alert, pending, episode, by, available, now=now), who)
    plan = await apply(conn, plan, now=now)
    return _summary(plan), plan


async def manual_resolve(
    conn: Conn,
    alert_id: int,
    by: str,
    *,
    now: float,
    available: Available,
    who: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], Plan]:
    """Resolve an alert by hand: state, an alert event (with ``by`` and ``who``), and
    resolved notices.

    Raises :class:`UnknownAlert` when there is no such alert."""
    alert = await _alert_by_id(conn, alert_id, lock=True)
    if alert is None:
        raise UnknownAlert(alert_id)
    pending = await _pending_timers(conn, alert_id)
    episode = await _episode(conn, alert_id)
    plan = _with_who(decide.manual_resolve(alert, pending, episode, by, available, now=now), who)
    plan = await apply(conn, plan, now=now)
    return _summary(plan), plan


def _with_who(plan: Plan, who: Mapping[str, Any] | None) -> Plan:
    """The plan with ``who`` attached to its alert change, to be recorded with it."""
    if not who or plan.alert_change is None:
        return plan
    return replace(plan, alert_change=replace(plan.alert_change, who=dict(who)))


def _summary(plan: Plan) -> dict[str, Any]:
    """What the API answers to an acknowledge or resolve."""
    alert = plan.alert
    assert alert is not None
    return {
        "id": alert.id,
        "fingerprint": alert.fingerprint,
        "rule_id": alert.rule_id,
        "state": alert.state,
        "acknowledged_at": _iso_or_none(alert.acknowledged_at),
        "acknowledged_by": alert.acknowledged_by,
        "resolved_at": _iso_or_none(alert.resolved_at),
        "escalation_stopped": len(plan.cancel),
        "notified": plan.channels,
    }


def _iso_or_none(value: float | None) -> str | None:
    return None if value is None else iso(value)
