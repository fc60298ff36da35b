"""Fault injection: ``qesmon api`` while its TimescaleDB is stopped for real, then restarted.

The database server is a private cluster of this test (the shared one serves everybody else).
Pins down what the README states: health answers 503 with JSON within 2 s, the process idles
(no busy retry) during the outage, it recovers by itself when the server is back, and SIGTERM
ends it within 4 s even with the database gone.
"""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from qesmon.settings import Settings
from tests.support.faults import free_port
from tests.support.postgres import PrivatePostgres
from tests.support.processes import QesmonProcess, settings_env, wait_for

HEALTH = "/api/v1/metrics/health"
MAX_CPU_SHARE = 0.15
HEALTH_WITHIN = 2.0  # README: "answers /health with 503 and JSON within 2 s"
EXIT_WITHIN = 4.0  # README: "exits within 4 s of SIGTERM"


@pytest.fixture
def server() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres().init()
    try:
        yield pg
    finally:
        pg.destroy()


def get(port: int, path: str) -> tuple[int, dict[str, Any], float]:
    """(status, JSON body, seconds) of one GET; an HTTP error status is an answer too."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    return status, json.loads(raw), time.monotonic() - started


def beat(settings: Settings) -> None:
    """Fresh heartbeats of the pipeline and the notifier (they do not run in this test)."""
    client = redis.Redis.from_url(settings.redis_url)
    try:
        for part in ("pipeline", "notifier"):
            client.hset(settings.streams.key("health", part), "heartbeat", time.time())
    finally:
        client.close()


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def test_api_idles_answers_503_recovers_and_stops_on_sigterm_while_the_database_is_down(
    server: PrivatePostgres, settings: Settings, tmp_path: Path
) -> None:
    local = dataclasses.replace(settings, database_url=server.url, rules_dir=tmp_path)
    port = free_port()
    env = settings_env(
        local,
        API_PORT=str(port),
        PROMETHEUS_METRICS_PORT=str(free_port()),
        RESOURCE_MONITOR="false",
    )
    api = QesmonProcess(["api"], env, tmp_path / "api.log").start()
    assert api.proc is not None
    try:

        def healthy() -> bool:
            beat(local)
            try:
                return get(port, HEALTH)[0] == 200
            except OSError:
                return False

        wait_for(healthy, 30, "health 200 with the database up", interval=0.2)

        server.stop()
        status, body, seconds = get(port, HEALTH)
        assert status == 503, body
        assert body["status"] == "unhealthy" and not body["checks"]["database"]["ok"]
        assert seconds < HEALTH_WITHIN, f"health took {seconds:.2f} s with the database down"
        status, body, _ = get(port, "/api/v1/openapi.json")
        assert status == 200  # the process still serves what needs no database

        proc = psutil.Process(api.proc.pid)
        before, t0 = cpu_seconds(proc), time.monotonic()
        time.sleep(3.0)  # measuring an interval: the CPU the process burns while it waits
        share = (cpu_seconds(proc) - before) / (time.monotonic() - t0)
        assert share < MAX_CPU_SHARE, f"{share:.0%} CPU during the outage (busy retry?)"

        server.start()
        wait_for(healthy, 45, "health 200 again after the database came back", interval=0.3)

        server.stop()
        wait_for(lambda: get(port, HEALTH)[0] == 503, 10, "health 503 on the second outage")
        started = time.monotonic()
        api.proc.terminate()
        api.proc.wait(timeout=EXIT_WITHIN + 5)
        took = time.monotonic() - started
        assert took < EXIT_WITHIN, f"exit took {took:.2f} s after SIGTERM"
        print(f"health with the database down: {seconds:.2f} s; exit after SIGTERM: {took:.2f} s")
    finally:
        if api.alive():
            api.kill()
    assert "Traceback" not in api.log(), api.log()[-3000:]
