"""Rule files: the corpus of broken files reports each problem on its line; good files load."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qesmon.alerts import Severity
from rules.loader import load_rules, parse_text
from rules.model import parse_duration

CORPUS = Path(__file__).parent / "corpus"
REPO = Path(__file__).parents[2]
_EXPECT = re.compile(r"#\s*error:\s*(.+?)\s*$")


def _expected(path: Path) -> list[tuple[int, str]]:
    """The `# error: <text>` markers of a corpus file: (line, text the problem contains)."""
    out = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = _EXPECT.search(line)
        if match:
            out.append((number, match.group(1)))
    return out


BROKEN = sorted((CORPUS / "broken").glob("*.yaml"))


@pytest.mark.parametrize("path", BROKEN, ids=[p.name for p in BROKEN])
def test_each_problem_of_a_broken_file_is_reported_on_its_line(path: Path) -> None:
    _, errors = load_rules([CORPUS / "broken"])
    mine = [e for e in errors if e.location and e.location.startswith(f"{path}:")]
    got = [(int(e.location.rsplit(":", 1)[1]), e.problem) for e in mine if e.location]
    expected = _expected(path)
    assert expected, f"{path.name} has no '# error:' markers"
    for line, text in expected:
        assert any(g_line == line and text in problem for g_line, problem in got), (
            f"expected at line {line}: {text!r}; got {got}"
        )
    assert len(got) == len(expected), f"unexpected extra problems: {got} vs {expected}"


def test_the_default_rules_load_without_problems() -> None:
    rules, errors = load_rules([REPO / "rules"])
    assert errors == []
    assert {r.id: r.severity for r in rules} == {
        "high_error_rate": Severity.CRITICAL,
        "slow_response_time": Severity.WARNING,
        "low_disk_space": Severity.WARNING,
        "quota_exceeded": Severity.INFO,
        "high_cpu": Severity.WARNING,
        "high_memory": Severity.CRITICAL,
    }
    for rule in rules:
        assert "runbook" in rule.annotations and "summary" in rule.annotations


def test_the_seed_custom_example_loads_as_written() -> None:
    rules, errors = load_rules([CORPUS / "good" / "seed_custom.yaml"])
    assert errors == []
    rule = rules.get("custom_signature_failures")
    assert rule is not None
    assert rule.threshold == 10.0 and rule.severity is Severity.WARNING
    assert rule.metric is not None and rule.metric.name == "signature_failures"
    assert rule.condition({"value": 11.0, "threshold": 10.0})
    assert not rule.condition({"value": 9.0, "threshold": 10.0})
    assert rule.window == 10 and rule.value_field == "value"


def test_escalation_policy_files_and_empty_files_are_skipped() -> None:
    rules, errors = load_rules([CORPUS / "good"])
    assert errors == []
    assert sorted(rules.ids) == ["custom_signature_failures", "low_conversion"]


def test_rules_are_indexed_by_metric_name_and_window() -> None:
    rules, _ = load_rules([REPO / "rules", CORPUS / "good"])
    assert [r.id for r in rules.matching("http_request", 10)] == [
        "high_error_rate",
        "slow_response_time",
    ]
    assert [r.id for r in rules.matching("cpu_usage", 60)] == ["high_cpu"]
    assert rules.matching("cpu_usage", 10) == ()
    assert [r.id for r in rules.matching("landing_visit", 3600)] == ["low_conversion"]
    assert [r.id for r in rules.matching("user_signup", 3600)] == ["low_conversion"]


def test_one_file_may_hold_several_documents_and_forms(tmp_path: Path) -> None:
    text = (
        "id: a\nseverity: INFO\nmetric: m\ncondition: count > 1\n"
        "---\n- id: b\n  severity: warning\n  metric: m\n  condition: count > 2\n"
        "---\nrules:\n  - id: c\n    severity: critical\n    metric: m\n    condition: count > 3\n"
    )
    result = parse_text(text, tmp_path / "x.yaml")
    assert result.errors == []
    assert [(r.id, r.severity, r.source) for r in result.rules] == [
        ("a", Severity.INFO, f"{tmp_path / 'x.yaml'}:1"),
        ("b", Severity.WARNING, f"{tmp_path / 'x.yaml'}:6"),
        ("c", Severity.CRITICAL, f"{tmp_path / 'x.yaml'}:12"),
    ]


def test_defaults_of_a_minimal_rule(tmp_path: Path) -> None:
    text = "id: a\nseverity: info\nmetric: m\ncondition: p95 > 1 and count > 3\n"
    (rule,) = parse_text(text, tmp_path / "x.yaml").rules
    assert rule.name == "a" and rule.for_s == 0 and rule.window == 10
    assert rule.keep_firing_for == 20 and rule.no_data_after == 300
    assert rule.value_field == "p95"  # the first field the condition names
    assert rule.group_by == () and rule.channels == ()


def test_route_is_an_alias_of_channels_but_not_both(tmp_path: Path) -> None:
    base = "id: a\nseverity: info\nmetric: m\ncondition: count > 1\n"
    (rule,) = parse_text(base + "route: [slack, email]\n", tmp_path / "x.yaml").rules
    assert rule.channels == ("slack", "email")
    both = parse_text(base + "route: slack\nchannels: email\n", tmp_path / "x.yaml")
    assert [e.problem for e in both.errors] == ["give either 'channels' or 'route', not both"]


def test_label_matchers_select_series(tmp_path: Path) -> None:
    from qesmon.series import Series

    text = (
        "id: a\nseverity: info\ncondition: count > 1\nmetric:\n  name: http_request\n"
        "  tenant: t1\n  labels:\n    method: [GET, POST]\n    endpoint: {regex: '/api/.*'}\n"
        "    service: {not_regex: 'internal-.*'}\n"
    )
    (rule,) = parse_text(text, tmp_path / "x.yaml").rules
    assert rule.metric is not None

    def series(tenant: str = "t1", **labels: str) -> Series:
        return Series("http_request", "performance", tenant, tuple(sorted(labels.items())))

    assert rule.metric.matches(series(method="GET", endpoint="/api/sign", service="web"))
    assert rule.metric.matches(series(method="POST", endpoint="/api/x"))  # missing label = ""
    assert not rule.metric.matches(series(method="PUT", endpoint="/api/x"))
    assert not rule.metric.matches(series(method="GET", endpoint="/health"))
    assert not rule.metric.matches(series(method="GET", endpoint="/api/x", service="internal-a"))
    assert not rule.metric.matches(series("t2", method="GET", endpoint="/api/x"))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("1h30m", 5400),
        ("2d", 172800),
        ("500ms", 0.5),
        (15, 15),
        ("1.5h", 5400),
    ],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "5 m", "m5", "-1s", "1y", True, None, [1]])
def test_bad_durations_are_rejected(text: object) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)
