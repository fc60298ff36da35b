"""The "machine:" line every benchmark prints with its figures (bench/*.py import it)."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

LOADED = "shared, loaded box: other sessions run tests and benchmarks meanwhile"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine(note: str = "") -> str:
    """``machine: 2 CPUs, <CPU model>, Python 3.11.7 (shared, loaded box: ...; <note>)``."""
    about = f"{LOADED}; {note}" if note else LOADED
    return (
        f"machine: {os.cpu_count()} CPUs, {cpu_model()}, Python {platform.python_version()} "
        f"({about})"
    )
