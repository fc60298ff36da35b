"""Problems in the notifier's policy files name the file and line to fix, like rule files do."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from notifier.channels import CHANNEL_NAMES
from notifier.policy import PolicyStore, load_policy
from qesmon.errors import RuleError

GOOD_POLICY = "escalation_policies:\n  crit:\n    levels:\n      - {after: 0, channels: [slack]}\n"


def error_of(directory: Path) -> str:
    """The message of the RuleError the folder's files give, without the folder's path."""
    with pytest.raises(RuleError) as err:
        load_policy(directory, CHANNEL_NAMES)
    assert err.value.location is not None
    return str(err.value).replace(f"{directory}{os.sep}", "")


def test_an_unknown_channel_in_a_list_names_its_own_line(tmp_path: Path) -> None:
    (tmp_path / "notifications.yaml").write_text(
        "routing:\n"  # 1
        "  defaults:\n"  # 2
        "    channels: [slack]\n"  # 3
        "  routes:\n"  # 4
        "    - match: {severity: critical}\n"  # 5
        "      channels:\n"  # 6
        "        - email\n"  # 7
        "        - telegram\n"  # 8
    )
    assert error_of(tmp_path).startswith(
        "notifications.yaml:8: routing.routes[0].channels: unknown channel 'telegram'"
    )


def test_a_misspelt_key_names_its_line(tmp_path: Path) -> None:
    (tmp_path / "notifications.yaml").write_text(
        "# who hears about what\n"  # 1
        "routing:\n"  # 2
        "  defaults: {channels: [slack]}\n"  # 3
        "  route:\n"  # 4
        "    - match: {severity: critical}\n"  # 5
    )
    assert error_of(tmp_path) == "notifications.yaml:4: unknown key routing.route"
    (tmp_path / "notifications.yaml").write_text(
        "routing:\n"  # 1
        "  routes:\n"  # 2
        "    - match:\n"  # 3
        "        severity: critical\n"  # 4
        "        colour: red\n"  # 5
    )
    assert error_of(tmp_path) == (
        "notifications.yaml:5: routing.routes[0].match: unknown match key 'colour'"
    )


def test_a_bad_value_names_the_line_of_its_key(tmp_path: Path) -> None:
    (tmp_path / "notifications.yaml").write_text(
        "routing:\n"  # 1
        "  defaults:\n"  # 2
        "    channels: [slack]\n"  # 3
        "    group_wait: soon\n"  # 4
    )
    assert error_of(tmp_path) == (
        "notifications.yaml:4: routing.defaults.group_wait: "
        "expected a duration like 30s, 5m or 1h, got 'soon'"
    )


def test_an_escalation_level_out_of_order_names_the_level(tmp_path: Path) -> None:
    (tmp_path / "notifications.yaml").write_text(
        "escalation_policies:\n"  # 1
        "  crit:\n"  # 2
        "    levels:\n"  # 3
        "      - {after: 15m, channels: [sms]}\n"  # 4
        "      - {after: 5m, channels: [pagerduty]}\n"  # 5
    )
    assert error_of(tmp_path).startswith(
        "notifications.yaml:5: escalation_policies.crit.levels[1].after: levels must be in order"
    )


def test_an_undefined_escalation_policy_names_the_route_that_uses_it(tmp_path: Path) -> None:
    (tmp_path / "notifications.yaml").write_text(
        "routing:\n"  # 1
        "  defaults: {channels: [slack]}\n"  # 2
        "  routes:\n"  # 3
        "    - match: {severity: warning}\n"  # 4
        "    - match: {severity: critical}\n"  # 5
        "      escalation: crit\n"  # 6
    )
    assert error_of(tmp_path) == (
        "notifications.yaml:6: routing names escalation policy 'crit', which is not defined"
    )


def test_a_policy_or_routing_defined_twice_names_both_places(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("routing:\n  defaults: {channels: [slack]}\n" + GOOD_POLICY)
    (tmp_path / "b.yaml").write_text("# more\n" + GOOD_POLICY)
    assert error_of(tmp_path) == (
        "b.yaml:3: escalation policy 'crit' is defined twice (first in a.yaml:4)"
    )
    (tmp_path / "b.yaml").write_text("# more\n\nrouting:\n  defaults: {channels: [email]}\n")
    assert error_of(tmp_path) == "b.yaml:3: routing is already defined in a.yaml:1"


def test_yaml_errors_name_the_line_and_a_second_document_is_one(tmp_path: Path) -> None:
    path = tmp_path / "notifications.yaml"
    path.write_text("routing:\n  defaults: {channels: [slack]\n  routes: []\n")
    assert error_of(tmp_path).startswith("notifications.yaml:3: YAML error: ")
    path.write_text("routing:\n\tdefaults: {}\n")
    assert error_of(tmp_path).startswith("notifications.yaml:2: YAML error: ")
    assert "tabs are not allowed" in error_of(tmp_path)
    path.write_text("routing:\n  defaults: {}\n---\n" + GOOD_POLICY)
    assert error_of(tmp_path) == (
        "notifications.yaml:3: YAML error: a second document (---), but this file holds only one"
    )


def test_a_rule_file_with_a_yaml_error_is_left_to_the_rule_loader(tmp_path: Path) -> None:
    (tmp_path / "broken_rule.yaml").write_text("id: x\n  severity: [\n")
    (tmp_path / "notifications.yaml").write_text(GOOD_POLICY)
    assert set(load_policy(tmp_path, CHANNEL_NAMES).escalation) == {"crit"}


def test_the_store_logs_the_file_and_line_of_a_broken_edit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "notifications.yaml"
    path.write_text("routing:\n  defaults: {channels: [slack]}\n")
    store = PolicyStore(tmp_path, CHANNEL_NAMES)
    assert store.maybe_reload()
    path.write_text("routing:\n  defaults:\n    channels: [nope]\n")
    os.utime(path, (1, 1))
    with caplog.at_level(logging.ERROR, logger="notifier.policy"):
        assert not store.maybe_reload()
    assert f"{path}:3: routing.defaults.channels: unknown channel 'nope'" in caplog.text
    assert store.current.routing.channels == ("slack",)
