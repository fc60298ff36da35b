"""`qesmon rules check` as a rule author runs it: a subprocess, its output and exit status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.rules.helpers import REPO

CORPUS = Path(__file__).parent / "corpus"
QESMON = str(Path(sys.executable).parent / "qesmon")  # the installed console script


def _check(
    *args: str | Path, cwd: Path = REPO, rules_dir: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``qesmon rules check *args``; RULES_DIR is ``rules_dir`` or not set at all."""
    env = {k: v for k, v in os.environ.items() if k != "RULES_DIR"}
    if rules_dir is not None:
        env["RULES_DIR"] = str(rules_dir)
    return subprocess.run(
        [QESMON, "rules", "check", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
        check=False,
    )


def test_the_default_rules_dir_passes_with_a_one_line_summary() -> None:
    done = _check()
    assert done.returncode == 0, done.stdout + done.stderr
    # six rule files and the notifier's routing file (skipped by the rule loader)
    assert done.stdout == "ok: 6 rule(s) in 7 file(s)\n"


def test_broken_files_print_file_line_problem_and_exit_1() -> None:
    done = _check(CORPUS / "broken")
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    expected = 0
    for path in sorted((CORPUS / "broken").glob("*.yaml")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if "# error:" in line:
                expected += 1
                text = line.split("# error:", 1)[1].strip()
                assert any(out.startswith(f"{path}:{number}: ") and text in out for out in lines), (
                    path.name,
                    number,
                    text,
                )
    assert len(lines) == expected
    assert done.stderr.strip() == f"{expected} problem(s) in rule files"


def test_one_file_among_good_ones_and_a_missing_path(tmp_path: Path) -> None:
    bad = tmp_path / "cpu.yaml"
    bad.write_text("id: cpu\nseverity: warning\nmetric: cpu_usage\ncondition: cpu_usag > 1\n")
    done = _check(CORPUS / "good", bad, tmp_path / "missing.yaml")
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        f"{bad}:4: condition 'cpu_usag > 1' names unknown field 'cpu_usag' "
        "(did you mean 'cpu_usage'?)",
        f"{tmp_path / 'missing.yaml'}:0: no such file or directory",
    ]


def test_an_empty_directory_is_a_problem(tmp_path: Path) -> None:
    done = _check(tmp_path)
    assert done.returncode == 1
    assert done.stdout == f"{tmp_path}:0: no *.yaml or *.yml rule files here\n"


def test_rules_dir_from_the_environment_is_the_default(tmp_path: Path) -> None:
    (tmp_path / "r.yml").write_text("id: r\nseverity: info\nmetric: m\ncondition: count > 1\n")
    done = _check(rules_dir=tmp_path)
    assert (done.returncode, done.stdout) == (0, "ok: 1 rule(s) in 1 file(s)\n")
