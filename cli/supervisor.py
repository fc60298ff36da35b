"""``qesmon up``'s supervisor: keeps its children running, restarts what exits, shows it.

A child that exits while ``up`` is not stopping is restarted after a backoff (1 s, doubling
to 30 s; back to 1 s once a run lasted 60 s); the others keep running. A child started with
``restart=False`` (the demo traffic) is not restarted. Every exit and restart is logged and
counted in the Redis hash ``<prefix>:health:supervisor`` (best effort: Redis being down
never stops the supervisor), which ``/api/v1/metrics/health`` shows::

    heartbeat, pid, started_at                  the supervisor (Unix times)
    <child>:state                               running | waiting (to restart) | ended
    <child>:restarts, <child>:last_exit         exit status; a negative one is -signal
    <child>:started_at, <child>:pid             the current (or last) run

Stopping (:meth:`Supervisor.stop`, from the first SIGINT/SIGTERM): every child gets SIGTERM
and ``grace`` seconds to finish, then SIGKILL. Calling it again (a second Ctrl-C) kills them
at once; either way :meth:`Supervisor.run` returns only when every child has exited::

    sup = Supervisor([Spec("api", [sys.executable, "-m", "cli", "api"], env)],
                     redis_url=settings.redis_url, key=settings.streams.key("health", "supervisor"))
    signal.signal(signal.SIGINT, lambda *_: sup.stop())
    sup.run()
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import redis

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before restarting a child (pure): ``first`` doubling to ``max``, and ``first``
    again after a run of at least ``reset_after`` seconds."""

    first: float = 1.0
    max: float = 30.0
    reset_after: float = 60.0

    def next(self, previous: float | None, ran_for: float) -> float:
        if previous is None or ran_for >= self.reset_after:
            return self.first
        return min(previous * 2, self.max)


@dataclass(frozen=True, slots=True)
class Spec:
    """How to start one child."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    restart: bool = True


@dataclass(slots=True)
class Child:
    """One child's current process and history."""

    spec: Spec
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    started_mono: float = 0.0
    restarts: int = 0
    last_exit: int | None = None
    delay: float | None = None
    restart_at: float | None = None
    state: str = "waiting"
    extra: dict[str, str] = field(default_factory=dict)


def describe_exit(code: int) -> str:
    """``status 3`` or ``killed by SIGKILL``."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"status {code}"


class Supervisor:
    """Runs children, restarts those that exit, publishes their state; see the module."""

    def __init__(
        self,
        specs: Sequence[Spec],
        *,
        redis_url: str,
        key: str,
        backoff: Backoff | None = None,
        poll: float = 0.2,
        grace: float = 15.0,
        publish_every: float = 5.0,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.children = {s.name: Child(s) for s in specs}
        self.key = key
        self.backoff = backoff or Backoff()
        self.poll = poll
        self.grace = grace
        self.publish_every = publish_every
        self.preexec_fn = preexec_fn
        self.started_at = time.time()
        self.stopping = False
        self.forced = False
        self._redis = redis.Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1)
        self._published = -1e9
        self._dirty = True

    # -- control -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every child: gracefully the first time, at once the second (signal-safe)."""
        if self.stopping:
            self.forced = True
        self.stopping = True

    def run(self, on_started: Callable[[], None] | None = None) -> None:
        """Start the children (then call ``on_started``) and supervise them until
        :meth:`stop`; then stop them all, whatever happened."""
        self._reset_health()
        try:
            for child in self.children.values():
                self._start(child)
            if on_started is not None:
                on_started()
            while not self.stopping:
                self.step(time.monotonic())
                time.sleep(self.poll)
        finally:
            self._shutdown()

    def step(self, now: float) -> None:
        """One look at every child: note exits, start what is due, publish what changed."""
        for child in self.children.values():
            if child.proc is not None and child.state == "running":
                code = child.proc.poll()
                if code is not None:
                    self._exited(child, code, now)
            due = child.restart_at is not None and now >= child.restart_at
            if child.state == "waiting" and due and not self.stopping:
                child.restarts += 1
                self._start(child)
        if self._dirty or now - self._published >= self.publish_every:
            self._publish(now)

    # -- children ----------------------------------------------------------------------------

    def _start(self, child: Child) -> None:
        spec = child.spec
        child.proc = subprocess.Popen(
            list(spec.argv), env=dict(spec.env), preexec_fn=self.preexec_fn
        )
        child.started_at = time.time()
        child.started_mono = time.monotonic()
        child.restart_at = None
        child.state = "running"
        self._dirty = True
        if child.restarts:
            log.warning(
                "%s restarted (restart %d, pid %d)", spec.name, child.restarts, child.proc.pid
            )

    def _exited(self, child: Child, code: int, now: float) -> None:
        child.last_exit = code
        self._dirty = True
        if self.stopping:
            child.state = "ended"
            return
        if not child.spec.restart:
            child.state = "ended"
            log.warning(
                "%s ended (%s); not restarted, the rest keeps running",
                child.spec.name,
                describe_exit(code),
            )
            return
        ran_for = now - child.started_mono
        child.delay = self.backoff.next(child.delay, ran_for)
        child.restart_at = now + child.delay
        child.state = "waiting"
        log.error(
            "%s exited unexpectedly (%s) after %.1f s; restarting it in %.0f s",
            child.spec.name,
            describe_exit(code),
            ran_for,
            child.delay,
        )

    def _shutdown(self) -> None:
        running = [
            c for c in self.children.values() if c.proc is not None and c.proc.poll() is None
        ]
        for child in running:
            assert child.proc is not None
            child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        killed = False
        while running:
            running = [c for c in running if c.proc is not None and c.proc.poll() is None]
            if running and not killed and (self.forced or time.monotonic() >= deadline):
                if self.forced:
                    log.warning("second interrupt: killing %s", [c.spec.name for c in running])
                else:
                    log.warning(
                        "%s did not stop within %.0f s: killing",
                        [c.spec.name for c in running],
                        self.grace,
                    )
                for child in running:
                    assert child.proc is not None
                    child.proc.kill()
                killed = True
            if running:
                time.sleep(0.05)
        for child in self.children.values():
            if child.proc is not None:
                child.last_exit = child.proc.returncode
            child.state = "ended"
        self._publish(time.monotonic())
        self._redis.close()

    # -- health ------------------------------------------------------------------------------

    def _reset_health(self) -> None:
        """A new ``up`` counts from zero."""
        try:
            self._redis.delete(self.key)
        except (redis.RedisError, OSError) as exc:
            log.debug("supervisor health not reset: %s", exc)

    def fields(self) -> dict[str, str]:
        """The health hash as it is now."""
        out = {
            "heartbeat": f"{time.time():.3f}",
            "pid": str(os.getpid()),
            "started_at": f"{self.started_at:.3f}",
        }
        for name, child in self.children.items():
            out[f"{name}:state"] = child.state
            out[f"{name}:restarts"] = str(child.restarts)
            out[f"{name}:last_exit"] = "" if child.last_exit is None else str(child.last_exit)
            out[f"{name}:started_at"] = f"{child.started_at:.3f}"
            out[f"{name}:pid"] = str(child.proc.pid) if child.proc is not None else ""
        return out

    def _publish(self, now: float) -> None:
        self._published = now
        self._dirty = False
        try:
            self._redis.hset(self.key, mapping=self.fields())  # type: ignore[arg-type]
        except (redis.RedisError, OSError) as exc:
            log.debug("supervisor health not written: %s", exc)
