"""The notifier's decisions without a database: transition or timer + records -> a plan."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from notifier import decide
from notifier.decide import Alert, DueTimer, Episode, NewTimer, Outcome
from notifier.escalation import EscalationPolicy, Level
from notifier.policy import NotifierPolicy
from notifier.receivers import Available
from notifier.routing import Matcher, Route, RoutingConfig
from qesmon.alerts import AlertState, Severity
from tests.notifier.conftest import transition

AT = 1_700_000_000.0
NOW = AT + 2.0
ALL = Available.platform({"slack", "webhook", "sms", "pagerduty", "email"})

POLICY = NotifierPolicy(
    routing=RoutingConfig(
        channels=("slack",),
        group_by=("rule_id",),
        group_wait=1.0,
        repeat_interval=3600.0,
        routes=(
            Route(
                Matcher(severity=frozenset({"critical"})),
                channels=("slack", "webhook"),
                escalation="crit",
            ),
        ),
    ),
    escalation={
        "crit": EscalationPolicy(
            "crit",
            (
                Level(0.0, ("pagerduty",)),
                Level(300.0, ("sms",)),
                Level(900.0, ("email",)),
            ),
        )
    },
)


def alert(**changes: Any) -> Alert:
    base = Alert(
        id=7,
        fingerprint="fp1",
        rule_id="high_error_rate",
        rule_name="High error rate",
        severity="critical",
        state="firing",
        tenant="acme",
        labels={"endpoint": "/sign"},
        annotations={"summary": "Error rate above 5%"},
        value=0.42,
        started_at=AT - 60,
        fired_at=AT,
    )
    return replace(base, **changes)


def episode(**changes: Any) -> Episode:
    base = Episode(
        alert_id=7,
        fingerprint="fp1",
        told_channels=("slack", "webhook", "pagerduty"),
        policy="crit",
        repeat_interval=3600.0,
        template_set=None,
        group_key="rule_id=high_error_rate",
        firing_notified_at=NOW,
    )
    return replace(base, **changes)


def fire(available: Available = ALL, **kwargs: Any) -> decide.Plan:
    return decide.firing(
        transition(**kwargs),
        alert(),
        None,
        POLICY,
        available,
        now=NOW,
        time_scale=1.0,
    )


# -- firing ------------------------------------------------------------------------------------


def test_first_firing_tells_the_routed_and_immediate_escalation_channels_after_group_wait() -> None:
    plan = fire()
    assert plan.outcome is Outcome.NOTIFIED and plan.alert_id == 7
    assert plan.channels == ["slack", "webhook", "pagerduty"]
    assert {n.kind for n in plan.outbox} == {"firing"}
    assert {n.key for n in plan.outbox} == {transition().key}
    assert {n.due_at for n in plan.outbox} == {NOW + 1.0}
    assert plan.outbox[0].context["state"] == "firing"
    assert plan.outbox[0].context["at"] == "2023-11-14T22:13:20.000Z"
    assert plan.skipped == ()
    assert plan.episode is not None
    assert plan.episode.told_channels == ("slack", "webhook", "pagerduty")
    assert plan.episode.firing_notified_at == NOW and plan.episode.policy == "crit"


def test_firing_groups_by_route_except_for_channels_that_send_one_alert_each() -> None:
    by_channel = {n.channel: n.group_key for n in fire().outbox}
    assert by_channel["slack"] == "firing||rule_id=high_error_rate"
    assert by_channel["pagerduty"] == "firing||alert=7"


def test_firing_schedules_the_timed_escalation_levels_from_when_the_alert_fired() -> None:
    escalations = [t for t in fire().timers if t.kind == "escalate"]
    assert escalations == [
        NewTimer(7, "escalate", 1, AT + 300.0, ("sms",)),
        NewTimer(7, "escalate", 2, AT + 900.0, ("email",)),
    ]


def test_escalation_levels_already_past_are_due_now_and_scaled_by_time_scale() -> None:
    late = decide.firing(transition(), alert(), None, POLICY, ALL, now=AT + 600.0, time_scale=1.0)
    assert [t.due_at for t in late.timers if t.kind == "escalate"] == [AT + 600.0, AT + 900.0]
    fast = decide.firing(transition(), alert(), None, POLICY, ALL, now=NOW, time_scale=0.01)
    assert [t.due_at for t in fast.timers if t.kind == "escalate"] == [AT + 3.0, AT + 9.0]


def test_firing_schedules_the_first_repeat_after_the_repeat_interval() -> None:
    repeats = [t for t in fire().timers if t.kind == "repeat"]
    assert repeats == [NewTimer(7, "repeat", 1, NOW + 3600.0)]
    rule_says_never = fire(repeat_interval=0.0)
    assert [t for t in rule_says_never.timers if t.kind == "repeat"] == []


def test_a_second_firing_of_a_told_episode_is_deduped() -> None:
    plan = decide.firing(
        transition(), alert(), episode(), POLICY, ALL, now=NOW + 10, time_scale=1.0
    )
    assert plan.outcome is Outcome.DEDUPED
    assert plan.outbox == () and plan.timers == () and plan.episode is None


def test_unconfigured_channels_are_skipped_and_never_counted_as_told() -> None:
    plan = fire(available=Available.platform({"slack"}))
    assert plan.channels == ["slack"]
    assert plan.skipped == ("webhook", "pagerduty")
    assert plan.episode is not None and plan.episode.told_channels == ("slack",)


def test_with_no_channel_to_tell_there_is_no_repeat_timer() -> None:
    plan = fire(available=Available(), severity=Severity.WARNING)
    assert plan.outbox == () and plan.skipped == ("slack",)
    assert plan.timers == ()


def test_an_undefined_escalation_policy_is_a_warning_not_an_error() -> None:
    plan = fire(escalation="nope")
    assert plan.outcome is Outcome.NOTIFIED and plan.channels == ["slack", "webhook"]
    assert plan.warnings and "'nope'" in plan.warnings[0]
    assert plan.episode is not None and plan.episode.policy is None


def test_a_firing_belongs_to_the_open_alert_or_to_one_resolved_after_it() -> None:
    t = transition()
    assert decide.is_episode_of(alert(), t)
    assert decide.is_episode_of(alert(state="resolved", resolved_at=AT + 30), t)
    assert not decide.is_episode_of(alert(state="resolved", resolved_at=AT - 30), t)


# -- resolved ----------------------------------------------------------------------------------


def test_resolved_cancels_timers_and_tells_every_channel_that_was_told() -> None:
    t = transition(to=AlertState.RESOLVED, at=AT + 120)
    plan = decide.resolved(t, alert(), [11, 12], episode(), POLICY, ALL, now=AT + 121)
    assert plan.outcome is Outcome.NOTIFIED
    assert plan.cancel == (11, 12)
    assert plan.channels == ["slack", "webhook", "pagerduty"]
    assert {n.kind for n in plan.outbox} == {"resolved"}
    assert {n.due_at for n in plan.outbox} == {AT + 121 + 1.0}  # grouped as the firing was
    assert plan.outbox[0].context["resolved_at"] == "2023-11-14T22:15:20.000Z"
    assert plan.episode is not None and plan.episode.resolved_notified_at == AT + 121
    assert plan.alert_change == decide.AlertChange("resolve", AT + 120)
    assert plan.alert is not None and plan.alert.state == "resolved"


def test_resolved_twice_is_deduped_and_an_untold_episode_is_ignored() -> None:
    t = transition(to=AlertState.RESOLVED, at=AT + 120)
    told = episode(resolved_notified_at=AT + 121)
    again = decide.resolved(t, alert(), [], told, POLICY, ALL, now=AT + 200)
    assert again.outcome is Outcome.DEDUPED and again.outbox == ()
    never = decide.resolved(t, alert(), [13], None, POLICY, ALL, now=AT + 200)
    assert never.outcome is Outcome.IGNORED and never.outbox == ()
    assert never.cancel == (13,)  # timers stop all the same


def test_resolved_notices_skip_channels_switched_off_since_firing() -> None:
    t = transition(to=AlertState.RESOLVED, at=AT + 120)
    plan = decide.resolved(
        t, alert(), [], episode(), POLICY, Available.platform({"slack"}), now=AT + 121
    )
    assert plan.channels == ["slack"] and plan.skipped == ("webhook", "pagerduty")


def test_manual_resolve_records_who_once() -> None:
    plan = decide.manual_resolve(alert(), [5], episode(), "alice", ALL, now=NOW)
    assert plan.alert_change == decide.AlertChange(
        "resolve_by_hand", NOW, by="alice", from_state="firing"
    )
    assert plan.alert is not None and plan.alert.state == "resolved"
    assert plan.alert.resolved_at == NOW
    assert {n.key for n in plan.outbox} == {"7:resolve"}
    assert plan.outbox[0].context["by"] == "alice" and plan.cancel == (5,)
    done = alert(state="resolved", resolved_at=NOW)
    again = decide.manual_resolve(done, [], episode(resolved_notified_at=NOW), "bob", ALL, now=NOW)
    assert again.alert_change is None and again.outcome is Outcome.DEDUPED


# -- timers: escalation and repeat -------------------------------------------------------------


def test_an_escalation_level_tells_its_channels_who_then_count_as_told() -> None:
    timer = DueTimer(21, 7, "escalate", 1, ("sms",))
    plan = decide.timer_due(timer, alert(), episode(), ALL, now=AT + 300, time_scale=1.0)
    assert plan.outcome is Outcome.ESCALATED and plan.fired == 21
    assert plan.channels == ["sms"]
    assert plan.outbox[0].kind == "escalated" and plan.outbox[0].key == "7:escalate:1"
    assert plan.outbox[0].group_key == "escalated||level=1,rule_id=high_error_rate"
    assert plan.outbox[0].context["level"] == 1
    assert plan.episode is not None
    assert plan.episode.told_channels == ("slack", "webhook", "pagerduty", "sms")
    assert plan.timers == ()


def test_a_repeat_retells_the_told_channels_and_schedules_the_next_one() -> None:
    timer = DueTimer(22, 7, "repeat", 1)
    plan = decide.timer_due(timer, alert(), episode(), ALL, now=AT + 3600, time_scale=1.0)
    assert plan.outcome is Outcome.REPEAT and plan.fired == 22
    assert plan.channels == ["slack", "webhook", "pagerduty"]
    assert {n.key for n in plan.outbox} == {"7:repeat:1"}
    assert plan.timers == (NewTimer(7, "repeat", 2, AT + 7200),)
    assert plan.episode is None
    never_again = decide.timer_due(
        timer, alert(), episode(repeat_interval=0.0), ALL, now=AT + 3600, time_scale=1.0
    )
    assert never_again.timers == ()


def test_timers_of_resolved_acknowledged_or_vanished_alerts_are_cancelled() -> None:
    timer = DueTimer(23, 7, "escalate", 2, ("email",))
    for a, e in (
        (alert(acknowledged_at=NOW, acknowledged_by="alice"), episode()),
        (alert(state="resolved", resolved_at=NOW), episode()),
        (alert(), episode(resolved_notified_at=NOW)),
        (None, episode()),
        (alert(), None),
    ):
        plan = decide.timer_due(timer, a, e, ALL, now=AT + 900, time_scale=1.0)
        assert plan.outcome is Outcome.CANCELLED and plan.cancel == (23,)
        assert plan.outbox == () and plan.fired is None


# -- acknowledge -------------------------------------------------------------------------------


def test_acknowledge_stops_escalation_and_tells_the_told_channels_once() -> None:
    plan = decide.acknowledge(alert(), [31, 32], episode(), "alice", ALL, now=NOW)
    assert plan.outcome is Outcome.ACKNOWLEDGED
    assert plan.cancel == (31, 32)
    assert plan.alert_change == decide.AlertChange("acknowledge", NOW, by="alice")
    assert plan.alert is not None and plan.alert.acknowledged_by == "alice"
    assert {n.key for n in plan.outbox} == {"7:acknowledged"}
    assert plan.channels == ["slack", "webhook", "pagerduty"]
    assert plan.episode is not None and plan.episode.acknowledged_notified_at == NOW
    later = decide.acknowledge(
        plan.alert, [], plan.episode, "bob", ALL, now=NOW + 5
    )  # the first acknowledgement wins
    assert later.alert_change is None and later.outbox == ()
    assert later.alert is not None and later.alert.acknowledged_by == "alice"


def test_acknowledged_notices_go_only_to_channels_that_take_them() -> None:
    told = episode(told_channels=("sms", "email"))
    plan = decide.acknowledge(alert(), [], told, "alice", ALL, now=NOW)
    assert plan.channels == ["email"]


def test_acknowledging_a_resolved_or_untold_alert_sends_nothing() -> None:
    resolved = alert(state="resolved", resolved_at=NOW)
    assert decide.acknowledge(resolved, [], episode(), "a", ALL, now=NOW).outbox == ()
    assert decide.acknowledge(alert(), [], None, "a", ALL, now=NOW).outbox == ()
