"""The alert state machine on crafted closed windows: fire, hold back, resolve, restart."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from qesmon.alerts import AlertState, Severity
from qesmon.series import WindowResult
from rules.engine import Evaluator, fingerprint
from tests.rules.helpers import default_rules, feed, rules_from, states, window

T0 = 1_800_000_000.0  # a round event time, multiple of 3600


@dataclass
class Workload:
    """Windows that make one default rule true (bad) or false (good)."""

    rule_id: str
    bad: Callable[[float, int], list[WindowResult]]
    good: Callable[[float, int], list[WindowResult]]
    labels: dict[str, str]
    tenant: str = ""


def _http(start: float, width: int, values: list[float], failures: int) -> list[WindowResult]:
    return [
        window(
            "http_request",
            start,
            values,
            width=width,
            failures=failures,
            service="signing",
            endpoint="/api/v1/sign",
            method="POST",
        )
    ]


def _system(name: str, value: float, **labels: str) -> Callable[[float, int], list[WindowResult]]:
    def make(start: float, width: int) -> list[WindowResult]:
        return [window(name, start, [value, value], width=width, type="system", **labels)]

    return make


def _quota(value: float) -> Callable[[float, int], list[WindowResult]]:
    def make(start: float, width: int) -> list[WindowResult]:
        return [
            window(
                "quota_utilization",
                start,
                [value],
                width=width,
                type="usage",
                tenant="tenant-1",
                resource="signatures",
            )
        ]

    return make


WORKLOADS = [
    Workload(
        "high_error_rate",
        lambda s, w: _http(s, w, [0.1] * 20, failures=4),  # 20 % errors
        lambda s, w: _http(s, w, [0.1] * 20, failures=0),
        {"service": "signing", "endpoint": "/api/v1/sign"},
    ),
    Workload(
        "slow_response_time",
        lambda s, w: _http(s, w, [2.5, 3.5], failures=0),  # avg 3 s
        lambda s, w: _http(s, w, [0.2, 0.3], failures=0),
        {"service": "signing", "endpoint": "/api/v1/sign"},
    ),
    Workload(
        "low_disk_space",
        _system("disk_usage", 91, host="db-1", mount="/var"),
        _system("disk_usage", 40, host="db-1", mount="/var"),
        {"host": "db-1", "mount": "/var"},
    ),
    Workload(
        "quota_exceeded", _quota(96), _quota(30), {"resource": "signatures"}, tenant="tenant-1"
    ),
    Workload(
        "high_cpu",
        _system("cpu_usage", 97, host="app-1"),
        _system("cpu_usage", 15, host="app-1"),
        {"host": "app-1"},
    ),
    Workload(
        "high_memory",
        _system("memory_usage", 98, host="app-2"),
        _system("memory_usage", 60, host="app-2"),
        {"host": "app-2"},
    ),
]


@pytest.mark.parametrize("load", WORKLOADS, ids=[w.rule_id for w in WORKLOADS])
def test_each_default_rule_fires_and_resolves(load: Workload) -> None:
    rules = default_rules()
    rule = rules.get(load.rule_id)
    assert rule is not None
    width = rule.window
    n_bad = max(1, math.ceil(rule.for_s / width))
    n_good = math.ceil(rule.keep_firing_for / width)
    windows = []
    for i in range(n_bad + 3):  # a few more bad windows than needed: still one firing
        windows += load.bad(T0 + i * width, width)
    clear_start = T0 + (n_bad + 3) * width
    for i in range(n_good + 2):
        windows += load.good(clear_start + i * width, width)

    out = feed(Evaluator(rules), windows)

    fired_at = T0 + n_bad * width
    expected = [("inactive", "pending", T0 + width)] if rule.for_s > width else []
    expected += [
        ("pending" if expected else "inactive", "firing", fired_at),
        ("firing", "resolved", clear_start + n_good * width),
    ]
    assert states(out) == expected
    fp = fingerprint(rule.id, load.tenant, sorted(load.labels.items()))
    for t in out:
        assert t.rule_id == rule.id and t.severity is rule.severity and t.fingerprint == fp
        assert dict(t.labels) == load.labels and t.tenant == load.tenant
        assert "{{" not in t.annotations["summary"] and t.annotations["runbook"]
        assert t.repeat_interval == rule.repeat_interval
    firing = out[-2]
    assert firing.value is not None
    assert firing.value > rule.threshold  # type: ignore[operator]
    assert f"{firing.value:.2f}".rstrip("0").rstrip(".") in firing.annotations["summary"]


def test_error_rate_value_and_annotations_are_rendered() -> None:
    rules = rules_from("""
id: errors
severity: critical
metric: http_request
group_by: [endpoint]
condition: error_rate > threshold
threshold: 5
labels: {team: signing}
annotations:
  summary: "{{ value }} % of {{ count }} failed on {{ labels.endpoint }} ({{ labels.team }})"
  description: "p95 {{ p95 }} s, rule {{ rule_id }} ({{ severity }}), limit {{ threshold }}"
""")
    out = feed(
        Evaluator(rules),
        [window("http_request", T0, [0.1, 0.2, 0.3, 0.4], failures=1, endpoint="/a")],
    )
    (t,) = out
    assert t.to_state is AlertState.FIRING and t.value == 25.0
    assert t.annotations == {
        "summary": "25 % of 4 failed on /a (signing)",
        "description": "p95 0.4 s, rule errors (critical), limit 5",
    }
    assert dict(t.labels) == {"team": "signing", "endpoint": "/a"}


def test_for_holds_back_a_short_spike() -> None:
    rules = default_rules()
    bad = WORKLOADS[0].bad
    good = WORKLOADS[0].good
    windows = bad(T0, 10) + bad(T0 + 10, 10) + good(T0 + 20, 10) + good(T0 + 30, 10)
    out = feed(Evaluator(rules), windows)
    assert states(out) == [("inactive", "pending", T0 + 10), ("pending", "inactive", T0 + 30)]


def test_repeated_and_re_emitted_windows_do_not_duplicate_transitions() -> None:
    rules = default_rules()
    bad, good = WORKLOADS[0].bad, WORKLOADS[0].good
    ev = Evaluator(rules)
    first = feed(ev, [w for i in range(6) for w in bad(T0 + i * 10, 10)])
    assert states(first) == [("inactive", "pending", T0 + 10), ("pending", "firing", T0 + 30)]
    # the same windows again (a replay), and late re-emissions with good values
    again = feed(ev, [w for i in range(6) for w in bad(T0 + i * 10, 10)])
    late = []
    for i in range(6):
        (w,) = good(T0 + i * 10, 10)
        w.revision = 1
        late.append(w)
    again += feed(ev, late)
    assert again == []
    assert ev.stats.ignored == 12
    # the alert is still firing: good windows resolve it once
    out = feed(ev, good(T0 + 60, 10) + good(T0 + 70, 10) + good(T0 + 80, 10))
    assert states(out) == [("firing", "resolved", T0 + 80)]


def test_a_re_emission_replaces_its_window_while_still_buffered() -> None:
    rules = default_rules()
    ev = Evaluator(rules)
    (bad,) = WORKLOADS[0].bad(T0, 10)
    (good,) = WORKLOADS[0].good(T0, 10)
    good.revision = 1
    ev.add([bad, good])
    assert ev.advance(T0 + 10) == []  # the revision (no errors) won, nothing pending


def test_group_by_merges_matching_series_of_a_group() -> None:
    rules = rules_from("""
id: errors
severity: critical
metric: http_request
group_by: [service]
condition: error_rate > threshold
threshold: 5
""")
    windows = [
        # service a: 4 % and 8 % errors on two endpoints / tenants -> 6 % for the service
        window("http_request", T0, [0.1] * 100, failures=4, service="a", endpoint="/x"),
        window(
            "http_request", T0, [0.1] * 100, failures=8, service="a", endpoint="/y", tenant="t2"
        ),
        # service b: 8 % on one endpoint, 0 % on a busier one -> 2 % for the service
        window("http_request", T0, [0.1] * 100, failures=8, service="b", endpoint="/x"),
        window("http_request", T0, [0.1] * 300, failures=0, service="b", endpoint="/y"),
        window("db_query", T0, [0.1] * 10, failures=10, service="a"),  # another metric
    ]
    out = feed(Evaluator(rules), windows)
    assert [(t.labels, t.value, t.to_state) for t in out] == [
        ({"service": "a"}, 6.0, AlertState.FIRING)
    ]
    assert out[0].fingerprint == fingerprint("errors", "", [("service", "a")])


def test_group_by_tenant_and_percentiles_merge_through_sketches() -> None:
    rules = rules_from("""
id: slow_p95
severity: warning
metric: {name: http_request, labels: {endpoint: {regex: "/api/.*"}}}
group_by: [tenant]
condition: p95 > 1
""")
    # 300 fast + 300 slow events per tenant, split over two series: the merged p95 is slow
    windows = [
        window("http_request", T0, [0.1] * 300, tenant="t1", endpoint="/api/a"),
        window("http_request", T0, [2.0] * 300, tenant="t1", endpoint="/api/b"),
        window("http_request", T0, [0.1] * 600, tenant="t2", endpoint="/api/a"),
        window("http_request", T0, [9.0] * 600, tenant="t2", endpoint="/health"),  # not matched
    ]
    out = feed(Evaluator(rules), windows)
    assert [(t.tenant, t.to_state) for t in out] == [("t1", AlertState.FIRING)]
    assert out[0].value == pytest.approx(2.0, rel=0.05)


def test_a_ratio_of_two_metrics_in_the_same_window_and_group() -> None:
    rules = rules_from("""
id: low_conversion
severity: info
group_by: [tenant]
ratios:
  conversion_rate: {numerator: user_signup, denominator: landing_visit}
condition: conversion_rate < threshold
threshold: 2
""")

    def visits(tenant: str, n: int) -> WindowResult:
        return window("landing_visit", T0, [1.0] * n, tenant=tenant, type="business_event")

    def signups(tenant: str, n: int) -> WindowResult:
        return window("user_signup", T0, [1.0] * n, tenant=tenant, type="business_event")

    windows = [
        visits("t1", 200),
        signups("t1", 2),  # 1 % -> fires
        visits("t2", 100),
        signups("t2", 5),  # 5 % -> fine
        visits("t3", 50),  # no signups at all: 0 % -> fires
        signups("t4", 3),
    ]  # no visits: undefined, no data
    ev = Evaluator(rules)
    out = feed(ev, windows)
    assert sorted((t.tenant, t.value) for t in out) == [("t1", 1.0), ("t3", 0.0)]
    assert ev.drain_errors() == []


def test_a_raising_rule_is_skipped_for_the_window_and_reported() -> None:
    rules = rules_from("""
rules:
  - id: divides_by_zero
    severity: warning
    metric: http_request
    group_by: [endpoint]
    condition: errors / (count - count) > 1
  - id: errors
    severity: critical
    metric: http_request
    condition: errors > 0
""")
    ev = Evaluator(rules)
    out = feed(
        ev,
        [
            window("http_request", T0, [0.1, 0.1], failures=1, endpoint="/a"),
            window("http_request", T0, [0.1], failures=1, endpoint="/b"),
        ],
    )
    assert [(t.rule_id, t.to_state) for t in out] == [("errors", AlertState.FIRING)]
    errors = ev.drain_errors()
    assert len(errors) == 1
    assert errors[0].startswith(f"rule divides_by_zero, window [{T0:.0f}, {T0 + 10:.0f}) width 10s")
    assert "group {endpoint=/a}" in errors[0] and "division by zero" in errors[0]
    assert "(and 1 more groups)" in errors[0]
    assert ev.drain_errors() == []
    assert ev.stats.errors == 2


def test_flapping_is_damped_by_keep_firing_for_and_hysteresis() -> None:
    rules = rules_from("""
rules:
  - id: flappy
    severity: warning
    metric: cpu_usage
    condition: cpu_usage > 80
    keep_firing_for: 30s
  - id: hysteresis
    severity: warning
    metric: cpu_usage
    condition: cpu_usage > 80
    resolve_condition: cpu_usage < 50
    keep_firing_for: 0s
""")
    values = [90, 70, 90, 70, 90, 70, 70, 60, 40]  # flaps around 80, then clears
    windows = [window("cpu_usage", T0 + i * 10, [v], type="system") for i, v in enumerate(values)]
    out = feed(Evaluator(rules), windows)
    by_rule = {rid: states(t for t in out if t.rule_id == rid) for rid in ("flappy", "hysteresis")}
    # flappy: fires once; resolves only after 30 s of clear windows (70, 70, 60)
    assert by_rule["flappy"] == [("inactive", "firing", T0 + 10), ("firing", "resolved", T0 + 80)]
    # hysteresis: fires once, resolves at the first window below 50
    assert by_rule["hysteresis"] == [
        ("inactive", "firing", T0 + 10),
        ("firing", "resolved", T0 + 90),
    ]


def test_no_data_ends_pending_and_resolves_firing_alerts() -> None:
    rules = rules_from("""
rules:
  - id: fires
    severity: warning
    metric: cpu_usage
    group_by: [host]
    condition: cpu_usage > 80
    no_data_after: 1m
  - id: waits
    severity: warning
    metric: cpu_usage
    group_by: [host]
    condition: cpu_usage > 80
    for: 10m
    no_data_after: 1m
""")
    ev = Evaluator(rules)
    out = feed(
        ev,
        [
            window("cpu_usage", T0, [95], type="system", host="gone"),
            window("cpu_usage", T0 + 30, [95], type="system", host="gone"),
        ],
    )
    assert states(out) == [("inactive", "firing", T0 + 10), ("inactive", "pending", T0 + 10)]
    # another host keeps the watermark moving; "gone" sends nothing after T0 + 40
    keep = [
        window("cpu_usage", T0 + i * 10, [10], type="system", host="other") for i in range(4, 12)
    ]
    out = feed(ev, keep)
    assert sorted((t.rule_id, t.from_state.value, t.to_state.value, t.at) for t in out) == [
        ("fires", "firing", "resolved", T0 + 100),
        ("waits", "pending", "inactive", T0 + 100),
    ]
    assert all(t.annotations.get("reason") == "no data" and t.value == 95 for t in out)
    assert ev.open_alerts == 0


def test_a_gap_shorter_than_no_data_after_keeps_the_for_streak() -> None:
    rules = rules_from("""
id: waits
severity: warning
metric: cpu_usage
condition: cpu_usage > 80
for: 40s
""")
    windows = [window("cpu_usage", T0 + i * 10, [95], type="system") for i in (0, 2, 4)]
    assert states(feed(Evaluator(rules), windows)) == [
        ("inactive", "pending", T0 + 10),
        ("pending", "firing", T0 + 50),
    ]


def _run(
    rules_text: str, windows: list[WindowResult], restart_after: float | None
) -> list[tuple[str, str, float]]:
    """Feed windows; when ``restart_after`` is set, snapshot and restore after that end."""
    rules = rules_from(rules_text)
    ev = Evaluator(rules)
    out = []
    for end in sorted({w.end for w in windows}):
        ev.add([w for w in windows if w.end == end])
        out += ev.advance(end)
        if end == restart_after:
            state = ev.snapshot()
            assert state == ev.snapshot()  # deterministic
            ev = Evaluator(rules_from(rules_text), state)
    return states(out)


RESTART_RULE = """
id: high_cpu
severity: warning
metric: cpu_usage
group_by: [host]
condition: cpu_usage > 85
for: 30s
keep_firing_for: 20s
"""


@pytest.mark.parametrize(
    "restart_after",
    [T0 + 20, T0 + 40, T0 + 70, T0 + 80],
    ids=["pending", "firing", "firing-while-clearing", "after-resolve"],
)
def test_restart_neither_duplicates_a_firing_nor_loses_a_resolve(restart_after: float) -> None:
    values = [95, 95, 95, 95, 95, 95, 20, 20, 20, 20]  # pending@10, firing@30, resolved@80
    windows = [
        window("cpu_usage", T0 + i * 10, [v], type="system", host="h") for i, v in enumerate(values)
    ]
    reference = _run(RESTART_RULE, windows, None)
    assert reference == [
        ("inactive", "pending", T0 + 10),
        ("pending", "firing", T0 + 30),
        ("firing", "resolved", T0 + 80),
    ]
    assert _run(RESTART_RULE, windows, restart_after) == reference


def test_snapshot_keeps_buffered_windows_and_queued_transitions() -> None:
    rules = rules_from(RESTART_RULE)
    ev = Evaluator(rules)
    feed(ev, [window("cpu_usage", T0, [95], type="system", host="h")])
    ev.set_rules(rules_from(RESTART_RULE.replace("id: high_cpu", "id: renamed")))
    ev.add([window("cpu_usage", T0 + 10, [95], type="system", host="h")])  # not advanced yet
    restored = Evaluator(
        rules_from(RESTART_RULE.replace("id: high_cpu", "id: renamed")), ev.snapshot()
    )
    out = restored.advance(T0 + 20)
    assert [
        (t.rule_id, t.from_state.value, t.to_state.value, t.annotations.get("reason")) for t in out
    ] == [
        ("high_cpu", "pending", "inactive", "rule removed"),
        ("renamed", "inactive", "pending", None),
    ]


def test_set_rules_keeps_state_of_edited_rules_and_resolves_removed_ones() -> None:
    two = """
rules:
  - id: stays
    severity: warning
    metric: cpu_usage
    condition: cpu_usage > 85
  - id: goes
    severity: critical
    metric: cpu_usage
    condition: cpu_usage > 85
"""
    ev = Evaluator(rules_from(two))
    out = feed(ev, [window("cpu_usage", T0, [95], type="system")])
    assert sorted(t.rule_id for t in out) == ["goes", "stays"]
    edited = """
id: stays
severity: critical
metric: cpu_usage
condition: cpu_usage > 80
annotations: {summary: "edited"}
"""
    ev.set_rules(rules_from(edited))
    out = feed(ev, [window("cpu_usage", T0 + 10, [95], type="system")])
    assert [(t.rule_id, t.to_state, t.severity, t.at, t.annotations) for t in out] == [
        ("goes", AlertState.RESOLVED, Severity.CRITICAL, T0 + 10, {"reason": "rule removed"})
    ]
    out = feed(
        ev,
        [
            window("cpu_usage", T0 + 20, [10], type="system"),
            window("cpu_usage", T0 + 30, [10], type="system"),
        ],
    )
    assert [(t.rule_id, t.to_state, t.severity, t.annotations) for t in out] == [
        ("stays", AlertState.RESOLVED, Severity.CRITICAL, {"summary": "edited"})
    ]


def test_a_corrupt_snapshot_is_a_clear_error() -> None:
    from qesmon.errors import ContractError

    with pytest.raises(ContractError, match="evaluator snapshot is unreadable"):
        Evaluator(default_rules(), b'{"v": 99}')
    with pytest.raises(ContractError, match="evaluator snapshot is unreadable"):
        Evaluator(default_rules(), b"not json")


def test_conditions_can_read_the_group_tenant_and_labels() -> None:
    rules = rules_from("""
id: errors
severity: critical
metric: http_request
group_by: [tenant, endpoint]
condition: error_rate > 5 and labels["endpoint"] != "/health" and tenant == "t1"
""")
    windows = [
        window("http_request", T0, [0.1] * 10, failures=5, tenant=tenant, endpoint=endpoint)
        for tenant in ("t1", "t2")
        for endpoint in ("/sign", "/health")
    ]
    out = feed(Evaluator(rules), windows)
    assert [(t.tenant, dict(t.labels)) for t in out] == [("t1", {"endpoint": "/sign"})]
