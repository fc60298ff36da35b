"""A TimescaleDB server of a test's own, which the test may stop and start at will.

The shared server of the suite must stay up for every other test; a database outage is
staged on a private cluster instead: ``initdb`` in a scratch directory (as the ``postgres``
user when the tests run as root, since PostgreSQL refuses to run as root), TimescaleDB
preloaded, migrated by the project's own runner.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from qesmon.migrate import apply_migrations
from tests.support.faults import free_port


def _pg_bin() -> Path:
    found = shutil.which("pg_config")
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=True)
        return Path(out.stdout.strip())
    return sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]


class PrivatePostgres:
    """initdb + pg_ctl on a scratch directory; ``stop()`` and ``start()`` are real."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="qesmon-pg-", dir="/var/tmp"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.bin = _pg_bin()
        self._as: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, timeout=60)

    def init(self) -> PrivatePostgres:
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        )
        self.start()
        apply_migrations(self.url)
        return self

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
            "-c shared_preload_libraries=timescaledb -c timescaledb.telemetry_level=off "
            "-c fsync=off"
        )
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-w",
            "-l",
            str(self.dir / "log"),
            "start",
        )

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
