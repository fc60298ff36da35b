"""``qesmon up`` supervises its children: a pipeline killed with SIGKILL is restarted, the API
answers throughout, and the rollups stay exact (real Redis, TimescaleDB and processes).
The backoff and the health section are pure and tested without servers."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import redis

from api.health import supervisor_section
from cli.supervisor import Backoff, Spec, Supervisor, describe_exit
from qesmon.settings import Settings
from tests.pipeline import workload as wl
from tests.support.faults import free_port
from tests.support.processes import settings_env, wait_for
from tests.support.settings import replace_settings

REPO = Path(__file__).parents[2]
WAIT = 2.0
LATENESS = 30.0


def test_backoff_doubles_from_one_second_to_thirty_and_resets_after_a_minute_up() -> None:
    b = Backoff()
    delays = [b.next(None, 0.5)]
    for _ in range(7):
        delays.append(b.next(delays[-1], 0.5))
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]
    assert b.next(30, 59.9) == 30 and b.next(30, 60.0) == 1


def test_exit_statuses_read_as_a_person_would_say_them() -> None:
    assert describe_exit(-9) == "killed by SIGKILL" and describe_exit(3) == "status 3"


def test_the_health_section_names_restarted_children_and_is_empty_without_up() -> None:
    assert supervisor_section({}, 100.0) == {"running": False}
    raw = {
        b"heartbeat": b"99.0",
        b"pid": b"10",
        b"pipeline:state": b"running",
        b"pipeline:restarts": b"2",
        b"pipeline:last_exit": b"-9",
        b"pipeline:started_at": b"98.5",
        b"api:state": b"running",
        b"api:restarts": b"0",
        b"api:last_exit": b"",
    }
    section = supervisor_section(raw, 100.0)
    assert section["running"] is True and section["restarts"] == 2
    assert section["children"]["pipeline"] == {
        "state": "running",
        "restarts": 2,
        "last_exit": -9,
        "started_at": 98.5,
    }
    assert section["children"]["api"]["last_exit"] is None
    assert section["warning"] == "restarted: pipeline 2 time(s) (last exit status -9)"


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _run_in_thread(sup: Supervisor) -> threading.Thread:
    thread = threading.Thread(target=sup.run, daemon=True)
    thread.start()
    return thread


def test_a_child_that_exits_is_restarted_with_backoff_and_the_others_keep_running(
    settings: Settings, redis_client: redis.Redis
) -> None:
    key = settings.streams.key("health", "supervisor")
    sup = Supervisor(
        [
            Spec("crashy", _python("import sys; sys.exit(3)"), dict(os.environ)),
            Spec("steady", _python("import time; time.sleep(60)"), dict(os.environ)),
            Spec("once", _python("pass"), dict(os.environ), restart=False),
        ],
        redis_url=settings.redis_url,
        key=key,
        backoff=Backoff(first=0.1, max=0.4, reset_after=60),
        poll=0.02,
        grace=5,
    )
    thread = _run_in_thread(sup)
    try:
        wait_for(lambda: sup.children["crashy"].restarts >= 4, 20, "four restarts")
        steady = sup.children["steady"]
        assert steady.restarts == 0 and steady.proc is not None and steady.proc.poll() is None
        assert sup.children["once"].state == "ended" and sup.children["once"].restarts == 0
        assert sup.children["crashy"].delay == 0.4  # 0.1, 0.2, 0.4, then capped
        assert sup.children["crashy"].last_exit == 3
        wait_for(
            lambda: int(redis_client.hget(key, "crashy:restarts") or 0) >= 4,  # type: ignore[arg-type]
            5,
            "the restarts in the health hash",
        )
        assert redis_client.hget(key, "steady:restarts") == "0"
    finally:
        sup.stop()
        thread.join(10)
    assert not thread.is_alive()
    assert steady.proc is not None and steady.proc.returncode == -signal.SIGTERM
    assert redis_client.hget(key, "steady:state") == "ended"


def test_a_second_stop_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    stubborn = "import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN)"
    stubborn += "; pathlib.Path(sys.argv[1]).touch(); time.sleep(60)"
    sup = Supervisor(
        [Spec("stubborn", [*_python(stubborn), str(ready)], dict(os.environ))],
        redis_url="redis://127.0.0.1:1/0",  # nobody there: health is best effort
        key="nowhere",
        poll=0.02,
        grace=60,
    )
    thread = _run_in_thread(sup)
    wait_for(ready.exists, 10, "the child to ignore SIGTERM")
    started = time.monotonic()
    sup.stop()
    thread.join(0.5)
    assert thread.is_alive()  # waiting for the child, which ignores SIGTERM
    sup.stop()  # the second Ctrl-C
    thread.join(10)
    assert not thread.is_alive() and time.monotonic() - started < 5
    proc = sup.children["stubborn"].proc
    assert proc is not None and proc.returncode == -signal.SIGKILL


class HealthPoller(threading.Thread):
    """Asks ``/health`` every 150 ms and keeps every answer (or the error instead)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.answers: list[tuple[float, int | str]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.answers.append((time.time(), self.ask()))
            self.halt.wait(0.15)

    def ask(self) -> int | str:
        try:
            with urllib.request.urlopen(self.url, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError as exc:
            return f"{type(exc).__name__}: {exc}"


def _health(url: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body: dict[str, object] = json.load(response)
            return body
    except urllib.error.HTTPError:
        return None
    except OSError:
        return None


def _pipeline_pid(up: subprocess.Popen[bytes]) -> int | None:
    for child in psutil.Process(up.pid).children():
        try:
            if "pipeline" in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                return int(child.pid)
        except psutil.NoSuchProcess:
            continue
    return None


def test_up_restarts_a_killed_pipeline_keeps_the_api_up_and_the_rollups_stay_exact(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    usettings = replace_settings(
        settings,
        rules_dir=rules,
        pipeline=dict(watermark_wait=WAIT, allowed_lateness=LATENESS, snapshot_interval=1),
    )
    api_port = free_port()
    env = settings_env(
        usettings,
        API_PORT=str(api_port),
        PROMETHEUS_METRICS_PORT=str(free_port()),
        RECOVERY_DIR=str(tmp_path / "recovery"),
        QESMON_DEMO="0",
        RESOURCE_MONITOR="false",  # its events (stamped now) would make the workload late
    )
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    work = wl.generate(3000, seed=13, span_s=600)
    half = len(work.entries) // 2
    stream = usettings.streams.metrics[0]
    supervisor_key = usettings.streams.key("health", "supervisor")
    health_url = f"http://127.0.0.1:{api_port}/api/v1/metrics/health"
    log = tmp_path / "up.log"
    with log.open("wb") as sink:
        up = subprocess.Popen(
            [sys.executable, "-m", "cli", "up", "--no-demo"],
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    poller = HealthPoller(health_url)
    try:

        def healthy() -> bool:
            assert up.poll() is None, log.read_text()
            body = _health(health_url)
            return body is not None and body["status"] == "healthy"

        wait_for(healthy, 60, "every part healthy", interval=0.2)
        poller.start()
        wl.push(redis_client, stream, work.entries[:half])
        # some windows of the first half are written: the pipeline is in the middle of work
        wait_for(lambda: wl.fetch_rollups(usettings.database_url), 60, "the first rollups", 0.2)
        first = _pipeline_pid(up)
        assert first is not None
        killed_at = time.time()
        os.kill(first, signal.SIGKILL)

        def restarted() -> int | None:
            assert up.poll() is None, log.read_text()
            pid = _pipeline_pid(up)
            restarts = redis_client.hget(supervisor_key, "pipeline:restarts")
            return pid if pid not in (None, first) and restarts == "1" else None

        second = wait_for(restarted, 30, "the pipeline restarted", interval=0.1)
        back_at = time.time()
        assert redis_client.hget(supervisor_key, "pipeline:last_exit") == "-9"
        wl.push(redis_client, stream, work.entries[half:])
        wl.push_clock(redis_client, stream)
        expected, _ = wl.ground_truth(work, wait=WAIT, lateness=LATENESS)

        def settled() -> bool:
            assert up.poll() is None, log.read_text()
            return len(wl.fetch_rollups(usettings.database_url)) >= len(expected)

        wait_for(settled, 90, f"{len(expected)} rollup rows", interval=0.3)
        assert wl.compare(expected, wl.fetch_rollups(usettings.database_url)) == []
        body = _health(health_url)
        assert body is not None, "health is not 200 after the restart"
        section = body["supervisor"]
        assert isinstance(section, dict) and section["restarts"] == 1
        assert "pipeline 1 time(s)" in section["warning"]
        assert _pipeline_pid(up) == second  # restarted once, not again
        poller.halt.set()
        poller.join(10)
        failures = [(at, answer) for at, answer in poller.answers if answer != 200]
        assert failures == [], failures
        times = [at for at, _ in poller.answers]
        # asked before the kill, all through the restart and after it, without a gap
        assert times[0] < killed_at and times[-1] > back_at, (times, killed_at, back_at)
        assert max(b - a for a, b in itertools.pairwise(times)) < 2.0
        text = log.read_text()
        assert "pipeline exited unexpectedly (killed by SIGKILL)" in text
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=30) == 0, log.read_text()
        assert redis_client.hget(supervisor_key, "pipeline:state") == "ended"
    finally:
        poller.halt.set()
        if up.poll() is None:
            kids = psutil.Process(up.pid).children(recursive=True)
            up.kill()
            up.wait()
            for kid in kids:  # they get SIGTERM when ``up`` dies; a failed test must not wait
                with contextlib.suppress(psutil.NoSuchProcess):
                    kid.kill()
