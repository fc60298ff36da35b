"""The demo's traffic model and incident schedule, without servers."""

from __future__ import annotations

import random
import statistics
from collections import defaultdict
from collections.abc import Iterable

import pytest

from cli.demo.incidents import CYCLE, INCIDENTS, Effects, Schedule, quota_tenant
from cli.demo.platform import ENDPOINTS, ERROR_ENDPOINT, SLOW_ENDPOINT, make_tenants
from cli.demo.run import backfill_range
from cli.demo.traffic import Ev, Intervals, Traffic, diurnal
from qesmon import vocabulary as v
from qesmon.alerts import AlertState
from qesmon.contract import MetricType
from qesmon.sdk.events import metric_event
from qesmon.series import Series, WindowResult
from qesmon.sketch import Agg
from rules.engine import Evaluator
from tests.rules.helpers import default_rules

T0 = 1_795_000_000.0  # a Wednesday, 08:26 UTC


def traffic(seed: int = 1, tenants: int = 4) -> Traffic:
    return Traffic(make_tenants(tenants, random.Random(seed)), seed, start=T0)


QUIET = Effects()


def run(
    t: Traffic, seconds: float, rate: float, effects: Effects = QUIET, speed: float = 1.0
) -> list[Ev]:
    """``seconds`` of events at ``rate`` per second; business time runs ``speed`` x faster."""
    out: list[Ev] = []
    for i in range(int(seconds)):
        out += t.generate(T0 + i, T0 + i + 1, round(rate / 2.1), effects, speed)
    return out


def http(events: Iterable[Ev], endpoint: object | None = None) -> list[Ev]:
    return [
        e
        for e in events
        if e.name == v.HTTP_REQUEST
        and (endpoint is None or e.labels == _labels_of(endpoint, e.labels))
    ]


def _labels_of(endpoint: object, labels: dict[str, str] | None) -> dict[str, str] | None:
    assert labels is not None
    if labels["endpoint"] == endpoint.path and labels["method"] == endpoint.method:  # type: ignore[attr-defined]
        return labels
    return None


def test_the_same_seed_gives_the_same_events_and_another_seed_others() -> None:
    a = run(traffic(5), 30, 100)
    b = run(traffic(5), 30, 100)
    c = run(traffic(6), 30, 100)
    assert a == b
    assert a != c
    assert len(a) == pytest.approx(30 * 100, rel=0.15)  # --rate is events per second


def test_every_event_passes_the_contract_with_the_vocabulary_labels() -> None:
    effects = Effects(errors=True, latency=True, quota_tenant="nordbank")
    events = run(traffic(), 120, 200, effects, speed=120)  # four hours of payments
    expected_labels = {
        v.HTTP_REQUEST: {"service", "endpoint", "method", "status"},
        v.DB_QUERY: {"operation", "service"},
        v.EXTERNAL_API: {"provider", "operation"},
        v.SUBSCRIPTION_PAYMENT: {"plan", "currency", "kind"},
        v.SIGNATURES_CREATED: {"level"},
        v.QUOTA_UTILIZATION: {"resource"},
        v.AUTH_FAILED: {"reason"},
        v.SECURITY_VIOLATION: {"kind"},
        v.SUBSCRIPTION_ACTIVE: {"plan"},
        v.USER_SIGNUP: {"plan"},
    }
    seen: set[str] = set()
    for e in events:
        metric_event(e.type, e.name, e.value, e.labels, tenant_id=e.tenant, user_id=e.user,
                     timestamp=e.ts, success=e.success)  # fmt: skip
        seen.add(e.name)
        if e.name in expected_labels:
            assert set(e.labels or {}) == expected_labels[e.name], e
    assert seen >= set(expected_labels) | {v.DOCUMENTS_UPLOADED, v.USER_LOGIN}
    assert {e.type for e in events} == set(MetricType) - {MetricType.SYSTEM}
    payments = [e for e in events if e.name == v.SUBSCRIPTION_PAYMENT]
    assert {e.labels["kind"] for e in payments if e.labels} == {"new", "recurring"}
    levels = {e.labels["level"] for e in events if e.name == v.SIGNATURES_CREATED and e.labels}
    assert levels == {"simple", "advanced", "qualified"}
    assert all(0 <= e.value <= 100 for e in events if e.name == v.QUOTA_UTILIZATION)


def test_normal_traffic_is_healthy_and_log_normal() -> None:
    events = run(traffic(), 300, 200)
    requests = http(events)
    failed = sum(not e.success for e in requests) / len(requests)
    client_errors = sum(e.labels["status"].startswith("4") for e in requests if e.labels)
    assert failed < 0.01
    assert 0.01 < client_errors / len(requests) < 0.1
    for endpoint in ENDPOINTS:
        durations = [e.value for e in http(events, endpoint)]
        assert len(durations) > 100, endpoint
        # log-normal: the mean is above the median, and no endpoint is slow on average
        assert statistics.mean(durations) > statistics.median(durations)
        assert statistics.mean(durations) < 1.0, endpoint
    logins = [e for e in events if e.name in (v.USER_LOGIN, v.AUTH_FAILED)]
    assert 0.03 < sum(e.name == v.AUTH_FAILED for e in logins) / len(logins) < 0.15


def test_the_error_burst_fails_a_third_of_signature_requests_and_nothing_else() -> None:
    events = run(traffic(), 120, 200, Effects(errors=True))
    sign = http(events, ERROR_ENDPOINT)
    assert 0.2 < sum(not e.success for e in sign) / len(sign) < 0.4
    assert {e.labels["status"] for e in sign if not e.success and e.labels} <= {
        "500",
        "502",
        "503",
        "504",
    }
    signing = {id(e) for e in sign}
    others = [e for e in http(events) if id(e) not in signing]
    assert sum(not e.success for e in others) / len(others) < 0.01


def test_the_latency_spike_takes_the_document_endpoint_above_two_seconds() -> None:
    events = run(traffic(), 60, 200, Effects(latency=True))
    slow = [e.value for e in http(events, SLOW_ENDPOINT)]
    assert 2.0 < statistics.mean(slow) < 4.0
    others = [e.value for e in http(events) if e.value not in slow]
    assert statistics.mean(others) < 1.0


def test_the_quota_incident_takes_one_tenant_above_ninety_percent() -> None:
    tenants = make_tenants(4, random.Random(1))
    victim = quota_tenant(tenants)
    assert victim == "brightpath-hr"  # the starter plan
    events = run(traffic(), 60, 10, Effects(quota_tenant=victim, quota_progress=0.5))
    quota = defaultdict(list)
    for e in events:
        if e.name == v.QUOTA_UTILIZATION and e.labels:
            quota[(e.tenant, e.labels["resource"])].append(e.value)
    assert len(quota) == 4 * 2
    assert min(quota[(victim, "signatures")]) > 90
    assert all(max(vals) < 80 for key, vals in quota.items() if key != (victim, "signatures"))


def test_periodic_samples_follow_business_time_not_wall_time() -> None:
    fast = Traffic(make_tenants(2, random.Random(1)), 1, Intervals(), start=T0)
    # one wall second at speed 15: a quota sample (every 15 s of business time) is due
    events = fast.generate(T0, T0 + 1, 0, Effects(), 15.0) + fast.generate(
        T0 + 1, T0 + 2, 0, Effects(), 15.0
    )
    quota = [e for e in events if e.name == v.QUOTA_UTILIZATION]
    assert len(quota) == 2 * 2 * 2  # two samples of two tenants x two resources
    assert all(T0 <= e.ts < T0 + 2 for e in events)


def test_the_schedule_repeats_and_speed_compresses_it() -> None:
    by_kind = {i.kind: i for i in INCIDENTS}
    slow = Schedule(origin=1000.0, speed=1.0, quota_tenant="x")
    assert slow.active(1000.0 + 70) == [by_kind["quota"], by_kind["errors"]]
    assert slow.active(1000.0 + 310) == [by_kind["quota"], by_kind["latency"]]
    assert slow.active(1000.0 + 600) == []
    assert slow.active(1000.0 + CYCLE + 70) == slow.active(1000.0 + 70)
    fast = Schedule(origin=1000.0, speed=10.0, quota_tenant="x")
    assert fast.active(1000.0 + 7) == slow.active(1000.0 + 70)
    effects = fast.effects(1000.0 + 18)  # demo time 180: half-way through the quota incident
    assert effects == Effects(errors=True, quota_tenant="x", quota_progress=0.5)


def test_backfill_ends_where_the_current_hour_starts() -> None:
    assert backfill_range(7200 + 1799.5, 86400) == (7200 - 86400, 7200)
    assert backfill_range(7200.0, 3600) == (3600, 7200)


def test_the_diurnal_profile_peaks_at_working_hours_and_averages_one() -> None:
    wednesday = 1_795_046_400.0  # 2026-11-18 00:00 UTC
    assert diurnal(wednesday + 13 * 3600) > 3 * diurnal(wednesday + 3 * 3600)
    assert diurnal(wednesday + 13 * 3600) > 2 * diurnal(wednesday + 3 * 86400 + 13 * 3600)
    week = [diurnal(wednesday + i * 600) for i in range(7 * 144)]
    assert statistics.mean(week) == pytest.approx(1.0, abs=0.01)


def _windows(events: Iterable[Ev], widths: tuple[int, ...]) -> list[WindowResult]:
    aggs: dict[tuple[Series, int, float], Agg] = {}
    for e in events:
        labels = tuple(sorted((e.labels or {}).items()))
        series = Series(e.name, e.type.value, e.tenant or "", labels)
        for width in widths:
            key = (series, width, e.ts // width * width)
            agg = aggs.get(key)
            if agg is None:
                agg = aggs[key] = Agg()
            agg.add(e.value, e.success, e.user)
    return [WindowResult(s, w, start, agg) for (s, w, start), agg in aggs.items()]


def test_with_the_default_rules_each_incident_fires_and_resolves_its_rule_and_only_that() -> None:
    """The incidents of a cycle at speed 1 through the rule evaluator and the unchanged rules;
    at the default 200 events/s the normal traffic trips nothing."""
    tenants = make_tenants(4, random.Random(1))
    t = Traffic(tenants, 1, start=T0)
    origin = T0 // 10 * 10
    schedule = Schedule(origin, 1.0, quota_tenant(tenants))
    events: list[Ev] = []
    for i in range(600):  # the last incident resolves at about 500 s
        now = origin + i
        effects = schedule.effects(now + 0.5)
        events += [
            e
            for e in t.generate(now, now + 1, round(200 / 2.1), effects, 1.0)
            if e.name in (v.HTTP_REQUEST, v.QUOTA_UTILIZATION)
        ]
    windows = _windows(events, (10, 60))
    evaluator = Evaluator(default_rules())
    transitions = []
    for end in sorted({w.end for w in windows}):
        evaluator.add([w for w in windows if w.end == end])
        transitions += evaluator.advance(end + 2)
    by_rule: dict[str, list[tuple[AlertState, float]]] = defaultdict(list)
    for tr in transitions:
        by_rule[tr.rule_id].append((tr.to_state, tr.at - origin))
    assert set(by_rule) == {"quota_exceeded", "high_error_rate", "slow_response_time"}, by_rule
    for incident in INCIDENTS:
        steps = by_rule[incident.rule]
        states = [s for s, _ in steps]
        assert states in (
            [AlertState.PENDING, AlertState.FIRING, AlertState.RESOLVED],
            [AlertState.FIRING, AlertState.RESOLVED],  # no `for`: fires at once
        ), (incident.rule, steps)
        fired = dict((s, at) for s, at in steps)
        assert incident.start < fired[AlertState.FIRING] < incident.end, (incident, steps)
        assert incident.end < fired[AlertState.RESOLVED] < incident.end + 200, (incident, steps)
