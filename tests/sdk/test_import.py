"""The SDK is importable with its own dependencies only: no other package of ours comes with it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: the packages above the core (tests/test_layers.py) and engines the SDK does not need
NOT_WITH_THE_SDK = ("pipeline", "rules", "notifier", "api", "cli")
ENGINES = ("bytewax", "rule_engine", "jinja2", "psycopg")


def test_importing_the_sdk_loads_no_pipeline_rules_notifier_api_or_entry_module() -> None:
    # a clean interpreter: this test process has imported everything already
    probe = "import json, sys\nimport qesmon.sdk\nprint(json.dumps(sorted(sys.modules)))\n"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    tops = {name.partition(".")[0] for name in loaded}
    assert "qesmon.sdk" in loaded
    assert sorted(tops.intersection(NOT_WITH_THE_SDK)) == []
    assert sorted(tops.intersection(ENGINES)) == []
