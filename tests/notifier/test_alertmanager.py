"""The Alertmanager channel against the real Alertmanager binary (Debian package)."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from notifier import outbound
from notifier.channels import REGISTRY, Message, SendEnv
from notifier.clock import SystemClock, iso
from notifier.templating import Renderer
from tests.notifier.conftest import wait_for
from tests.notifier.test_channels import alert
from tests.support.settings import LOOPBACK

BINARY = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    if not Path(BINARY).exists():  # the set-up installs it: missing is a broken set-up
        pytest.fail(
            "prometheus-alertmanager is missing: install the Debian package "
            "(scripts/setup.sh --test installs it)"
        )
    config = tmp_path / "am.yml"
    config.write_text("route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n")
    port, cluster = free_port(), free_port()
    log = (tmp_path / "alertmanager.log").open("wb")
    proc = subprocess.Popen(
        [
            BINARY,
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--cluster.listen-address=127.0.0.1:{cluster}",
            "--cluster.advertise-address=127.0.0.1:0",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        log.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_alertmanager_receives_the_alert_and_lists_it_then_resolves_it(
    alertmanager: str,
) -> None:
    cls = REGISTRY["alertmanager"]
    channel = cls(cls.validate({"url": alertmanager}))
    async with outbound.session(LOOPBACK) as session:

        async def ready() -> bool:
            try:
                async with session.get(alertmanager + "/-/ready") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(ready, timeout=30, what="alertmanager ready")
        env = SendEnv(session, Renderer(), SystemClock(), {})
        a = alert(fired_at=None, at=_iso_now())
        result = await channel.send(Message("firing", [a], ["k"]), env)
        assert result.status == 200

        async def listed() -> list[dict[str, Any]]:
            async with session.get(
                alertmanager + "/api/v2/alerts", params={"active": "true"}
            ) as resp:
                data: list[dict[str, Any]] = await resp.json()
                return data

        await wait_for(lambda: _nonempty(listed()), timeout=15, what="alert listed")
        (got,) = await listed()
        assert got["labels"] == {
            "alertname": "High error rate",
            "severity": "critical",
            "rule_id": "high_error_rate",
            "tenant": "acme",
            "endpoint": "/sign",
        }
        assert got["annotations"] == {"summary": "Error rate above 5%", "value": "0.42"}
        assert got["status"]["state"] == "active"

        done = alert(state="resolved", fired_at=None, at=_iso_now(), resolved_at=_iso_now())
        await channel.send(Message("resolved", [done], ["k2"]), env)
        await wait_for(lambda: _empty(listed()), timeout=15, what="alert resolved")


async def _nonempty(coro: Any) -> bool:
    return bool(await coro)


async def _empty(coro: Any) -> bool:
    return not await coro


def _iso_now() -> str:
    return iso(SystemClock().now() - 1)
