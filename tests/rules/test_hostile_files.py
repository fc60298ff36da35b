"""Rule and policy files with the worst bytes: each is a file:line problem, never an exception,
for the rule loader (pipeline) and for the notifier's policy reader alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from notifier.channels import REGISTRY
from notifier.policy import PolicyStore
from rules.loader import load_rules

GOOD = b"id: ok\nseverity: warning\nmetric: m\ncondition: count > 1\n"
HOSTILE = {
    "not_utf8.yaml": b"id: x\xff\xfe\nseverity: warning\n",
    "nul.yaml": b"id: a\x00b\nseverity: warning\nmetric: m\ncondition: count > 1\n",
    "policy_not_utf8.yaml": b"routing:\n  defaults: {channels: [\xff]}\n",
    "unknown_tag.yaml": b"id: !foo x\n",
    "python_tag.yaml": b"routing: !!python/object/apply:os.system [true]\n",
    "deep.yaml": b"[" * 5000 + b"]" * 5000 + b"\n",
    "huge.yaml": b"id: big\nannotations: {summary: '" + b"x" * 2_000_000 + b"'}\n",
}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "good.yaml").write_bytes(GOOD)
    for name, data in HOSTILE.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path


def test_the_rule_loader_reports_every_hostile_file_and_keeps_the_good_one(folder: Path) -> None:
    rules, errors = load_rules([folder])
    assert [r.id for r in rules] == ["ok"]
    named = {Path(str(e).split(":")[0]).name for e in errors}
    assert {"not_utf8.yaml", "nul.yaml", "unknown_tag.yaml", "deep.yaml"} <= named


def test_the_policy_reader_survives_hostile_files_and_reports_a_broken_policy(
    folder: Path,
) -> None:
    store = PolicyStore(folder, frozenset(REGISTRY))
    assert store.maybe_reload() is False  # refused with a logged error, never an exception
    assert store.errors == 1
    (folder / "policy_not_utf8.yaml").unlink()
    (folder / "python_tag.yaml").unlink()
    assert store.maybe_reload() is True
    assert store.errors == 1
