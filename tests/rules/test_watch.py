"""Hot reload: edits take effect without a restart; a broken file keeps its last good rules."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from rules.model import RuleSet
from rules.watch import RuleWatcher
from tests.rules.helpers import REPO

RULE = """
id: {id}
severity: warning
metric: cpu_usage
condition: cpu_usage > {threshold}
"""


def _write(path: Path, text: str) -> None:
    """Write and move the mtime forward, so even a same-size edit in the same clock tick is
    a visible change (editors and `cp` get a new mtime anyway)."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    st = path.stat()
    if st.st_mtime_ns <= before:
        os.utime(path, ns=(st.st_atime_ns, before + 1_000_000))


def _threshold(rules: RuleSet, rule_id: str) -> str:
    rule = rules.get(rule_id)
    assert rule is not None
    return rule.condition.text


def test_first_poll_returns_the_initial_set_then_none_until_a_change(tmp_path: Path) -> None:
    _write(tmp_path / "cpu.yaml", RULE.format(id="cpu", threshold=85))
    watcher = RuleWatcher(tmp_path, poll_interval=0)
    first = watcher.poll()
    assert first is not None and first.ids == {"cpu"} and watcher.rules is first
    assert watcher.poll() is None
    assert watcher.poll() is None


def test_an_edit_is_picked_up(tmp_path: Path) -> None:
    path = tmp_path / "cpu.yaml"
    _write(path, RULE.format(id="cpu", threshold=85))
    watcher = RuleWatcher(tmp_path, poll_interval=0)
    watcher.poll()
    _write(path, RULE.format(id="cpu", threshold=75))
    new = watcher.poll()
    assert new is not None and _threshold(new, "cpu") == "cpu_usage > 75"
    _write(tmp_path / "mem.yml", RULE.format(id="mem", threshold=90))
    new = watcher.poll()
    assert new is not None and new.ids == {"cpu", "mem"}
    (tmp_path / "mem.yml").unlink()
    new = watcher.poll()
    assert new is not None and new.ids == {"cpu"}
    assert watcher.errors == []


def test_a_broken_file_keeps_its_last_good_version_and_lists_the_error(tmp_path: Path) -> None:
    path = tmp_path / "cpu.yaml"
    other = tmp_path / "other.yaml"
    _write(
        path, RULE.format(id="cpu", threshold=85) + "---\n" + RULE.format(id="cpu2", threshold=95)
    )
    _write(other, RULE.format(id="other", threshold=50))
    watcher = RuleWatcher(tmp_path, poll_interval=0)
    watcher.poll()
    # break one rule of the file, and edit the other file at the same time
    _write(
        path,
        RULE.format(id="cpu", threshold=70)
        + "---\n"
        + RULE.format(id="cpu2", threshold=95).replace("severity: warning", "severity: urgent"),
    )
    _write(other, RULE.format(id="other", threshold=60))
    new = watcher.poll()
    assert new is not None
    assert new.ids == {"cpu", "cpu2", "other"}
    assert _threshold(new, "cpu") == "cpu_usage > 85"  # the whole file's last good version
    assert _threshold(new, "other") == "cpu_usage > 60"  # other files still reload
    assert [str(e) for e in watcher.errors] == [
        f"{path}:9: severity 'urgent' is not one of info, warning, critical"
    ]
    # a YAML error is the same story
    _write(path, "id: [unclosed\n")
    new = watcher.poll()
    assert new is not None and _threshold(new, "cpu") == "cpu_usage > 85"
    assert len(watcher.errors) == 1 and watcher.errors[0].location == f"{path}:2"
    # fixed: the new version is active and the error is gone
    _write(path, RULE.format(id="cpu", threshold=65))
    new = watcher.poll()
    assert new is not None and new.ids == {"cpu", "other"}
    assert _threshold(new, "cpu") == "cpu_usage > 65"
    assert watcher.errors == []


def test_a_file_broken_from_the_start_contributes_its_valid_rules(tmp_path: Path) -> None:
    _write(
        tmp_path / "mixed.yaml",
        "- "
        + RULE.format(id="ok", threshold=1).strip().replace("\n", "\n  ")
        + "\n- id: bad\n  severity: warning\n",
    )
    watcher = RuleWatcher(tmp_path, poll_interval=0)
    rules = watcher.poll()
    assert rules is not None and rules.ids == {"ok"}
    assert [e.problem for e in watcher.errors] == [
        "rule has no 'condition'",
        "rule has no 'metric' (name the metric it reads, or define ratios)",
    ]


def test_a_duplicate_id_in_a_new_file_is_reported_and_the_first_kept(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", RULE.format(id="cpu", threshold=85))
    watcher = RuleWatcher(tmp_path, poll_interval=0)
    watcher.poll()
    _write(tmp_path / "b.yaml", RULE.format(id="cpu", threshold=10))
    new = watcher.poll()
    assert new is not None and _threshold(new, "cpu") == "cpu_usage > 85"
    assert [e.location for e in watcher.errors] == [f"{tmp_path / 'b.yaml'}:2"]


def test_poll_interval_rate_limits_the_scan(tmp_path: Path) -> None:
    path = tmp_path / "cpu.yaml"
    _write(path, RULE.format(id="cpu", threshold=85))
    watcher = RuleWatcher(tmp_path, poll_interval=3600)
    assert watcher.poll() is not None
    _write(path, RULE.format(id="cpu", threshold=75))
    assert watcher.poll() is None  # not yet time to look
    watcher.poll_interval = 0
    watcher._next_poll = 0.0
    assert watcher.poll() is not None


def test_the_default_rules_directory_loads_and_ignores_python_files(tmp_path: Path) -> None:
    shutil.copytree(REPO / "rules", tmp_path / "rules")
    watcher = RuleWatcher(tmp_path / "rules", poll_interval=0)
    rules = watcher.poll()
    assert rules is not None and len(rules) == 6 and watcher.errors == []
