"""Pure logic: durations, routing, escalation files, backoff, templates, secrets."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from notifier.channels import CHANNEL_NAMES
from notifier.delivery import RetryPolicy
from notifier.policy import PolicyStore, load_policy
from notifier.routing import parse_duration, parse_routing
from notifier.templating import Renderer, build_context
from qesmon.alerts import Severity
from qesmon.errors import RuleError
from tests.notifier.conftest import transition


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(90, 90.0), ("90s", 90.0), ("5m", 300.0), ("1h30m", 5400.0), ("250ms", 0.25), ("0s", 0.0)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text, "x") == seconds


@pytest.mark.parametrize("bad", ["5 minutes", "-1s", -3, True, "m5"])
def test_bad_durations_are_refused(bad: object) -> None:
    with pytest.raises(RuleError):
        parse_duration(bad, "f.yaml: routing.defaults.group_wait")


ROUTING = {
    "defaults": {"channels": ["slack"], "group_wait": "2s", "repeat_interval": "4h"},
    "routes": [
        {
            "match": {"tenant": "acme", "labels": {"service": ["api", "web"]}},
            "channels": ["webhook"],
            "continue": True,
            "group_by": ["tenant"],
        },
        {
            "match": {"severity": "critical"},
            "channels": ["pagerduty"],
            "repeat_interval": "1h",
            "escalation": "crit",
        },
    ],
}


def test_routing_by_severity_labels_and_tenant_with_continue() -> None:
    routing = parse_routing(ROUTING, "n.yaml", CHANNEL_NAMES)
    r = routing.route(transition(tenant="acme", labels={"service": "api"}))
    assert r.channels == ("webhook", "pagerduty")
    assert r.group_key == "tenant=acme" and r.repeat_interval == 4 * 3600
    r = routing.route(transition(tenant="globex"))
    assert r.channels == ("pagerduty",) and r.repeat_interval == 3600 and r.escalation == "crit"
    r = routing.route(transition(tenant="globex", severity=Severity.INFO))
    assert r.channels == ("slack",) and r.group_wait == 2.0 and r.escalation is None


def test_the_rule_s_own_channels_escalation_and_repeat_win() -> None:
    routing = parse_routing(ROUTING, "n.yaml", CHANNEL_NAMES)
    r = routing.route(transition(channels=("email",), escalation="quiet", repeat_interval=60.0))
    assert r.channels == ("email",) and r.escalation == "quiet" and r.repeat_interval == 60


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        ({"routes": [{"channels": ["telegram"]}]}, "routing.routes[0].channels"),
        ({"routes": [{"match": {"colour": "red"}}]}, "routing.routes[0].match"),
        ({"defaults": {"group_by": ["hostname"]}}, "routing.defaults.group_by"),
        ({"routes": [{"match": {"severity": "fatal"}}]}, "routing.routes[0].match.severity"),
    ],
)
def test_routing_errors_name_the_key(raw: dict[str, object], where: str) -> None:
    with pytest.raises(RuleError) as err:
        parse_routing(raw, "n.yaml", CHANNEL_NAMES)
    assert where in str(err.value)


def test_policy_files_are_found_among_rule_files_and_checked(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text("rules:\n  - id: x\n")
    (tmp_path / "notifications.yaml").write_text(
        "routing:\n  routes:\n    - match: {severity: critical}\n      escalation: crit\n"
        "escalation_policies:\n  crit:\n    levels:\n      - {after: 0, channels: [slack]}\n"
        "      - {after: 5m, channels: [sms]}\n      - {after: 15m, channels: [pagerduty]}\n"
    )
    policy = load_policy(tmp_path, CHANNEL_NAMES)
    crit = policy.escalation["crit"]
    assert crit.immediate_channels() == ("slack",)
    assert crit.delayed_levels(0.01) == [(1, 3.0, ("sms",)), (2, 9.0, ("pagerduty",))]
    (tmp_path / "notifications.yaml").write_text(
        "escalation_policies:\n  crit:\n    levels:\n      - {after: 15m, channels: [sms]}\n"
        "      - {after: 5m, channels: [pagerduty]}\n"
    )
    with pytest.raises(RuleError, match=r"escalation_policies\.crit\.levels\[1\]\.after"):
        load_policy(tmp_path, CHANNEL_NAMES)


def test_a_broken_edit_keeps_the_last_good_policy(tmp_path: Path) -> None:
    path = tmp_path / "notifications.yaml"
    path.write_text("routing:\n  defaults: {channels: [slack]}\n")
    store = PolicyStore(tmp_path, CHANNEL_NAMES)
    assert store.maybe_reload() and store.current.routing.channels == ("slack",)
    path.write_text("routing:\n  defaults: {channels: [nope]}\n")
    os.utime(path, (1, 1))
    assert not store.maybe_reload() and store.errors == 1
    assert store.current.routing.channels == ("slack",)


def test_backoff_grows_exponentially_with_jitter_and_honours_retry_after() -> None:
    policy = RetryPolicy(base=1.0, max=60.0, deadline=3600.0)
    rng = random.Random(1)
    delays = [policy.delay(n, None, rng) for n in range(1, 9)]
    for n, d in enumerate(delays, 1):
        assert 0.5 * min(60, 2 ** (n - 1)) <= d <= min(60, 2 ** (n - 1))
    assert policy.delay(1, 30.0, rng) >= 30.0


def test_html_templates_are_autoescaped_and_the_sandbox_blocks_internals(tmp_path: Path) -> None:
    context = build_context(
        "firing",
        [
            {
                "rule_name": "<b>x</b>",
                "severity": "critical",
                "state": "firing",
                "value": 1.0,
                "tenant": "",
                "labels": {},
                "annotations": {},
                "fingerprint": "f",
                "at": "t",
                "fired_at": None,
                "level": 0,
                "by": "",
            }
        ],
    )
    renderer = Renderer()
    assert "&lt;b&gt;x&lt;/b&gt;" in renderer.render("email", "firing", "html", context)
    assert "<b>x</b>" in renderer.render("email", "firing", "txt", context)
    evil = tmp_path / "evil" / "slack"
    evil.mkdir(parents=True)
    (evil / "firing.md.j2").write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    sandboxed = Renderer([tmp_path])
    text = sandboxed.render("slack", "firing", "md", context, "evil")
    assert text.startswith("[FIRING] &lt;b&gt;x&lt;/b&gt; (critical)") and sandboxed.errors == 1
    assert sandboxed.render("email", "firing", "html", context, "evil").startswith("<pre>")
