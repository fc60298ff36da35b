"""Run qes-monitoring processes (``qesmon pipeline`` ...) from tests as real subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from qesmon.settings import Settings

T = TypeVar("T")


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy, or fail saying what did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for a child process that sees the same servers and keys as the test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QESMON_")}
    env.update(
        REDIS_URL=settings.redis_url,
        DATABASE_URL=settings.database_url,
        QESMON_KEY_PREFIX=settings.key_prefix,
        RULES_DIR=str(settings.rules_dir),
        WINDOW_SECONDS=str(settings.pipeline.window_seconds),
        WATERMARK_WAIT_SECONDS=str(settings.pipeline.watermark_wait),
        ALLOWED_LATENESS_SECONDS=str(settings.pipeline.allowed_lateness),
        SNAPSHOT_INTERVAL_SECONDS=str(settings.pipeline.snapshot_interval),
        STREAM_SHARDS=str(settings.stream_shards),
        OUTBOUND_ALLOW=str(settings.channels.outbound_allow or ""),
        LOG_LEVEL="WARNING",
    )
    env.update(extra)
    return env


class QesmonProcess:
    """``qesmon <args>`` as a child process; output goes to a log file for post-mortems."""

    def __init__(self, args: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.args = args
        self.env = dict(env)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> QesmonProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as in a crash."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
