"""The notifier's decisions, pure: who is told what and when, and what is remembered of it.

Pure functions over typed records, as Alertmanager's notification stages are: no I/O, no
clock, no logging. :mod:`notifier.store` loads the records in its transaction (the
:class:`~qesmon.alerts.AlertTransition` or a :class:`DueTimer`, the :class:`Alert` row, its
:class:`Episode`, the ids of its pending timers), hands them over with the policy, the
channels that can be sent to and ``now``, and applies the :class:`Plan` that comes back in
the same transaction::

    plan = firing(t, alert, episode, policy, available, now=now, time_scale=1.0)
    plan.outbox      # Notice rows for notifier_outbox (one per channel that takes the kind)
    plan.timers      # NewTimer rows: escalation levels, the first repeat
    plan.episode     # the episode as it is to be written (None: unchanged)

The decisions:

- :func:`firing`: the first firing of an episode is routed (:mod:`notifier.routing`) to its
  channels plus the escalation policy's immediate ones, after the route's ``group_wait``;
  the timed escalation levels (counted from when the alert fired) and the first repeat get
  timers. A second firing of a told episode is ``deduped``.
- :func:`resolved` and :func:`manual_resolve`: the episode's pending timers are cancelled and
  every channel that was told gets a resolved notice, once.
- :func:`acknowledge`: the first acknowledgement wins; pending timers are cancelled (so
  escalation stops) and the told channels get an acknowledged notice, once, unless the
  alert is resolved.
- :func:`timer_due`: an escalation level tells its channels (who join the told ones), a
  repeat re-tells the told channels and schedules the next repeat; a timer of an alert that
  is gone, resolved or acknowledged is cancelled.

"Channels" here are receivers (:mod:`notifier.receivers`): the platform's, one per channel
type, which the routing names, and the tenants' own. The first firing of a tenant's alert
also tells every receiver that tenant owns (they then hear of its repeats, acknowledgement
and resolution like any told receiver); an outbox row for a tenant's receiver about another
tenant's alert is never made (:func:`notices` refuses it, whatever the caller asks).
Receivers not in ``available`` (not configured, or switched off) are left out and listed in
:attr:`Plan.skipped`; a receiver whose channel does not take a kind of notice (SMS is not
told of acknowledgements) gets no row. Transitions seen twice (the stream is at-least-once) never
reach here: the store drops them on the transition key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from notifier.channels import REGISTRY
from notifier.clock import iso, to_datetime
from notifier.escalation import EscalationPolicy
from notifier.policy import NotifierPolicy
from notifier.receivers import Available, owner
from qesmon.alerts import AlertTransition


class Outcome(StrEnum):
    """What a decision came to (the service counts some of them)."""

    NOTIFIED = "notified"  # notices queued (possibly to no channel)
    DUPLICATE = "duplicate"  # a transition key seen before
    DEDUPED = "deduped"  # this episode was told this already
    IGNORED = "ignored"  # nothing to tell (no alert, never told, a pending transition)
    ESCALATED = "escalated"  # an escalation level was told
    REPEAT = "repeat"  # a repeat notice was queued
    CANCELLED = "cancelled"  # a due timer of an alert no longer live
    ACKNOWLEDGED = "acknowledged"


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert episode's row in ``alerts``; times are Unix seconds."""

    id: int
    fingerprint: str
    rule_id: str
    rule_name: str
    severity: str
    state: str
    tenant: str
    labels: Mapping[str, Any]
    annotations: Mapping[str, Any]
    value: float | None
    started_at: float | None
    fired_at: float | None = None
    resolved_at: float | None = None
    acknowledged_at: float | None = None
    acknowledged_by: str | None = None


@dataclass(frozen=True, slots=True)
class Episode:
    """What the notifier has told about one alert episode (a ``notifier_episodes`` row)."""

    alert_id: int
    fingerprint: str
    told_channels: tuple[str, ...]
    policy: str | None
    repeat_interval: float | None
    template_set: str | None
    group_key: str
    firing_notified_at: float | None = None
    acknowledged_notified_at: float | None = None
    resolved_notified_at: float | None = None


@dataclass(frozen=True, slots=True)
class DueTimer:
    """A pending ``notifier_timers`` row whose time has come."""

    id: int
    alert_id: int
    kind: str  # escalate | repeat
    level: int
    channels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Notice:
    """One ``notifier_outbox`` row to add; a row with the same (key, channel) is kept."""

    key: str
    channel: str
    kind: str
    alert_id: int | None
    group_key: str
    context: Mapping[str, Any]
    template_set: str | None
    created_at: float
    due_at: float


@dataclass(frozen=True, slots=True)
class NewTimer:
    """One ``notifier_timers`` row to add; one with the same (alert, kind, level) is kept."""

    alert_id: int
    kind: str  # escalate | repeat
    level: int
    due_at: float
    channels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AlertChange:
    """A write to the ``alerts`` row, applied with the guards the store's SQL carries.

    ``acknowledge``: the first acknowledgement (``at``, ``by``). ``resolve``: a resolved
    transition (``resolved_at`` kept when set, nothing done when already resolved).
    ``resolve_by_hand``: a manual resolve, recorded in ``alert_events`` with ``by`` and the
    ``from_state`` it left. ``who`` says who did an acknowledge or a manual resolve (the API
    key's id and name), recorded with it in ``alert_events``."""

    action: str  # acknowledge | resolve | resolve_by_hand
    at: float
    by: str = ""
    from_state: str = ""
    who: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """What one decision changes; :mod:`notifier.store` applies it in one transaction.

    ``alert`` is the alert as the plan leaves it (for answers such as the API's summary);
    ``alert_change`` is the write that makes it so. ``cancel`` lists pending timers to
    cancel, ``fired`` the timer to mark fired. After the store applied a plan, ``outbox``
    holds only the rows that were new."""

    outcome: Outcome
    alert_id: int | None = None
    outbox: tuple[Notice, ...] = ()
    skipped: tuple[str, ...] = ()
    timers: tuple[NewTimer, ...] = ()
    cancel: tuple[int, ...] = ()
    fired: int | None = None
    episode: Episode | None = None
    alert: Alert | None = None
    alert_change: AlertChange | None = None
    warnings: tuple[str, ...] = ()

    @property
    def channels(self) -> list[str]:
        """The channels the outbox rows go to, in order."""
        return [n.channel for n in self.outbox]


def alert_context(
    alert: Alert, *, state: str, at: float, level: int = 0, by: str = ""
) -> dict[str, Any]:
    """The snapshot of an alert the templates and wire formats read (stored in the outbox)."""
    return {
        "alert_id": alert.id,
        "fingerprint": alert.fingerprint,
        "rule_id": alert.rule_id,
        "rule_name": alert.rule_name,
        "severity": alert.severity,
        "state": state,
        "value": alert.value,
        "tenant": alert.tenant,
        "labels": dict(alert.labels),
        "annotations": dict(alert.annotations),
        "started_at": _stamp(alert.started_at),
        "fired_at": _stamp(alert.fired_at),
        "resolved_at": _stamp(alert.resolved_at),
        "at": iso(at),
        "level": level,
        "by": by,
    }


def _stamp(value: float | None) -> str | None:
    return None if value is None else iso(value)


def notices(
    *,
    key: str,
    channels: Iterable[str],
    kind: str,
    alert_id: int | None,
    group_key: str,
    context: Mapping[str, Any],
    template_set: str | None,
    now: float,
    available: Available,
    delay: float = 0.0,
) -> tuple[Notice, ...]:
    """One outbox row per receiver whose channel takes ``kind``, grouped as it sends.

    Rows of one receiver go out as one message when their group key matches: the kind and
    template set, then the route's group (a channel that cannot group, PagerDuty, gets one
    group per alert). A tenant's receiver gets rows about that tenant's alerts only."""
    out = []
    for name in channels:
        cls = REGISTRY[available.channel(name)]
        if kind not in cls.kinds or owner(name) not in ("", context.get("tenant")):
            continue
        grouped = group_key if cls.groupable else f"alert={alert_id}"
        out.append(
            Notice(
                key=key,
                channel=name,
                kind=kind,
                alert_id=alert_id,
                group_key=f"{kind}|{template_set or ''}|{grouped}",
                context=context,
                template_set=template_set,
                created_at=now,
                due_at=now + delay,
            )
        )
    return tuple(out)


def _split(wanted: Sequence[str], available: Available) -> tuple[list[str], tuple[str, ...]]:
    """``wanted`` as (the channels that can be sent to, the ones that cannot)."""
    return [c for c in wanted if c in available], tuple(c for c in wanted if c not in available)


def is_episode_of(alert: Alert, t: AlertTransition) -> bool:
    """Whether the newest ``alerts`` row of ``t``'s fingerprint is the episode ``t`` fires in:
    an open one, or one resolved at or after ``t`` (a replayed transition)."""
    if alert.state != "resolved" or alert.resolved_at is None:
        return True
    # compared as the database stores them (whole microseconds)
    return to_datetime(alert.resolved_at) >= to_datetime(t.at)


def firing(
    t: AlertTransition,
    alert: Alert,
    episode: Episode | None,
    policy: NotifierPolicy,
    available: Available,
    *,
    now: float,
    time_scale: float,
) -> Plan:
    """The first firing of an episode: notices, escalation and repeat timers, the episode."""
    if episode is not None and episode.firing_notified_at is not None:
        return Plan(Outcome.DEDUPED, alert.id)
    route = policy.routing.route(t)
    escalation: EscalationPolicy | None = None
    warnings: tuple[str, ...] = ()
    if route.escalation:
        escalation = policy.escalation.get(route.escalation)
        if escalation is None:
            warnings = (
                f"alert {t.fingerprint} names escalation policy {route.escalation!r},"
                " which is not defined",
            )
    wanted = list(route.channels)
    if escalation is not None:
        wanted += [c for c in escalation.immediate_channels() if c not in wanted]
    wanted += available.of_tenant(alert.tenant)
    channels, skipped = _split(wanted, available)
    outbox = notices(
        key=t.key,
        channels=channels,
        kind="firing",
        alert_id=alert.id,
        group_key=route.group_key,
        context=alert_context(alert, state="firing", at=t.at),
        template_set=t.template,
        now=now,
        available=available,
        delay=route.group_wait,
    )
    told = Episode(
        alert_id=alert.id,
        fingerprint=t.fingerprint,
        told_channels=tuple(channels),
        policy=escalation.name if escalation else None,
        repeat_interval=route.repeat_interval,
        template_set=t.template,
        group_key=route.group_key,
        firing_notified_at=now,
        acknowledged_notified_at=episode.acknowledged_notified_at if episode else None,
        resolved_notified_at=episode.resolved_notified_at if episode else None,
    )
    # levels count from when the alert fired, but never lie in the past
    base = min(now, t.at) if t.at > 0 else now
    timers = []
    if escalation is not None:
        for level, delay, level_channels in escalation.delayed_levels(time_scale):
            timers.append(
                NewTimer(alert.id, "escalate", level, max(now, base + delay), level_channels)
            )
    if route.repeat_interval > 0 and channels:
        timers.append(NewTimer(alert.id, "repeat", 1, now + route.repeat_interval * time_scale))
    return Plan(
        Outcome.NOTIFIED,
        alert.id,
        outbox=outbox,
        skipped=skipped,
        timers=tuple(timers),
        episode=told,
        alert=alert,
        warnings=warnings,
    )


def resolved(
    t: AlertTransition,
    alert: Alert,
    pending: Sequence[int],
    episode: Episode | None,
    policy: NotifierPolicy,
    available: Available,
    *,
    now: float,
) -> Plan:
    """A resolved transition: the alert resolved, its timers stopped, resolved notices
    after the route's ``group_wait`` (so they group as the firing ones did)."""
    resolved_at = alert.resolved_at if alert.resolved_at is not None else t.at
    alert = replace(alert, state="resolved", resolved_at=resolved_at)
    plan = _resolve_episode(
        alert,
        pending,
        episode,
        key=t.key,
        now=now,
        at=t.at,
        available=available,
        delay=policy.routing.route(t).group_wait,
    )
    return replace(plan, alert_change=AlertChange("resolve", t.at))


def manual_resolve(
    alert: Alert,
    pending: Sequence[int],
    episode: Episode | None,
    by: str,
    available: Available,
    *,
    now: float,
) -> Plan:
    """A resolve by hand: the alert resolved now (recorded as ``by``'s, once), timers
    stopped, resolved notices at once."""
    change = None
    if alert.state != "resolved":
        change = AlertChange("resolve_by_hand", now, by=by, from_state=alert.state)
        alert = replace(alert, state="resolved", resolved_at=now)
    plan = _resolve_episode(
        alert,
        pending,
        episode,
        key=f"{alert.id}:resolve",
        now=now,
        at=now,
        available=available,
        by=by,
    )
    return replace(plan, alert_change=change)


def _resolve_episode(
    alert: Alert,
    pending: Sequence[int],
    episode: Episode | None,
    *,
    key: str,
    now: float,
    at: float,
    available: Available,
    by: str = "",
    delay: float = 0.0,
) -> Plan:
    """Cancel the episode's timers and queue resolved notices to every channel told."""
    cancel = tuple(pending)
    if episode is None or episode.firing_notified_at is None:
        return Plan(Outcome.IGNORED, alert.id, cancel=cancel, alert=alert)
    if episode.resolved_notified_at is not None:
        return Plan(Outcome.DEDUPED, alert.id, cancel=cancel, alert=alert)
    channels, skipped = _split(episode.told_channels, available)
    outbox = notices(
        key=key,
        channels=channels,
        kind="resolved",
        alert_id=alert.id,
        group_key=episode.group_key,
        context=alert_context(alert, state="resolved", at=at, by=by),
        template_set=episode.template_set,
        now=now,
        available=available,
        delay=delay,
    )
    return Plan(
        Outcome.NOTIFIED,
        alert.id,
        outbox=outbox,
        skipped=skipped,
        cancel=cancel,
        episode=replace(episode, resolved_notified_at=now),
        alert=alert,
    )


def acknowledge(
    alert: Alert,
    pending: Sequence[int],
    episode: Episode | None,
    by: str,
    available: Available,
    *,
    now: float,
) -> Plan:
    """An acknowledgement: the first one is recorded, timers stop (no further escalation
    levels or repeats), the told channels hear of it once while the alert is open."""
    change = None
    if alert.acknowledged_at is None:
        change = AlertChange("acknowledge", now, by=by)
        alert = replace(alert, acknowledged_at=now, acknowledged_by=by)
    plan = Plan(
        Outcome.ACKNOWLEDGED, alert.id, cancel=tuple(pending), alert=alert, alert_change=change
    )
    if (
        episode is None
        or alert.state == "resolved"
        or episode.acknowledged_notified_at is not None
        or episode.resolved_notified_at is not None
    ):
        return plan
    channels, skipped = _split(episode.told_channels, available)
    outbox = notices(
        key=f"{alert.id}:acknowledged",
        channels=channels,
        kind="acknowledged",
        alert_id=alert.id,
        group_key=episode.group_key,
        context=alert_context(alert, state=alert.state, at=now, by=by),
        template_set=episode.template_set,
        now=now,
        available=available,
    )
    return replace(
        plan,
        outbox=outbox,
        skipped=skipped,
        episode=replace(episode, acknowledged_notified_at=now),
    )


def timer_due(
    timer: DueTimer,
    alert: Alert | None,
    episode: Episode | None,
    available: Available,
    *,
    now: float,
    time_scale: float,
) -> Plan:
    """A due escalation or repeat timer: its notices, or its cancellation when the alert is
    gone, resolved or acknowledged."""
    if (
        alert is None
        or episode is None
        or alert.state == "resolved"
        or alert.acknowledged_at is not None
        or episode.resolved_notified_at is not None
    ):
        return Plan(Outcome.CANCELLED, timer.alert_id, cancel=(timer.id,))
    if timer.kind == "escalate":
        wanted = timer.channels
        kind, outcome = "escalated", Outcome.ESCALATED
        key = f"{alert.id}:escalate:{timer.level}"
    else:
        wanted = episode.told_channels
        kind, outcome = "repeat", Outcome.REPEAT
        key = f"{alert.id}:repeat:{timer.level}"
    channels, skipped = _split(wanted, available)
    outbox = notices(
        key=key,
        channels=channels,
        kind=kind,
        alert_id=alert.id,
        group_key=f"level={timer.level}," + episode.group_key,
        context=alert_context(alert, state="firing", at=now, level=timer.level),
        template_set=episode.template_set,
        now=now,
        available=available,
    )
    told: Episode | None = None
    timers: tuple[NewTimer, ...] = ()
    if outcome is Outcome.ESCALATED:
        joined = tuple(c for c in channels if c not in episode.told_channels)
        told = replace(episode, told_channels=episode.told_channels + joined)
    elif episode.repeat_interval:
        due = now + episode.repeat_interval * time_scale
        timers = (NewTimer(alert.id, "repeat", timer.level + 1, due),)
    return Plan(
        outcome,
        alert.id,
        outbox=outbox,
        skipped=skipped,
        timers=timers,
        fired=timer.id,
        episode=told,
        alert=alert,
    )
