"""``qesmon rules check [PATH...]``: validate rule files the way the pipeline will load them.

Prints one ``file:line: problem`` per problem (YAML errors, unknown fields, bad severities,
durations or matchers, conditions that do not parse or name unknown fields, duplicate ids)
and exits 1; otherwise prints a one-line summary and exits 0.
"""

from __future__ import annotations

import sys
from pathlib import Path

from qesmon.errors import RuleError
from rules.loader import discover, load_rules


def main(paths: list[Path]) -> int:
    """Check ``paths`` (files or directories); return the exit status."""
    files, _ = discover(paths)
    rules, errors = load_rules(paths)
    for path in paths:
        if path.is_dir() and not any(f.parent == path for f in files):
            errors.append(RuleError("no *.yaml or *.yml rule files here", f"{path}:0"))
    for error in sorted(errors, key=_order):
        print(error)
    if errors:
        print(f"{len(errors)} problem(s) in rule files", file=sys.stderr)
        return 1
    print(f"ok: {len(rules)} rule(s) in {len(files)} file(s)")
    return 0


def _order(error: RuleError) -> tuple[str, int, str]:
    location = error.location or ""
    file, _, line = location.rpartition(":")
    return (file, int(line) if line.isdigit() else 0, str(error))
