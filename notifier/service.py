"""``qesmon notifier``: the long-running process that turns alert transitions into messages.

Several notifier processes share the work through the consumer group ``notifier`` on
``qes:alerts``; entries a dead process had read but not acknowledged are taken over with
XAUTOCLAIM after ``NOTIFIER_CLAIM_IDLE_SECONDS``. One entry is handled in one database
transaction (dedupe on the transition key, outbox rows, timers) and acknowledged after the
commit, so a crash anywhere repeats work but never loses it. Redis or the database being
down makes each loop wait and retry with backoff (0.2 s doubling to 30 s); SIGTERM stops
reading, lets in-flight sends finish (10 s at most) and exits 0.

No entry can stop the notifier or hold back the others. Entries are parked, with the reason
and their original bytes (:mod:`qesmon.deadletter`), in ``<prefix>:alerts:dead`` (trimmed
to about ``ALERTS_DEAD_LETTER_MAXLEN`` (10,000) letters of at most 8 KiB each, so about 80 MB
at worst) and then acknowledged: ``kind=invalid`` for one that does not parse
(:meth:`~qesmon.alerts.AlertTransition.from_fields`); ``kind=refused`` for one the database
refuses (a data error, SQLSTATE class 22, 23 or 54: the read is redone one entry per
transaction and the rest goes through); ``kind=failed`` for one that failed for any other
reason ``NOTIFIER_MAX_DELIVERIES`` (5) times (the consumer group's delivery count), instead
of being re-read forever.

Health: the Redis hash ``qes:health:notifier`` holds ``heartbeat`` (Unix time of the newest
beat of any notifier process), ``heartbeat:<consumer>``, ``outbox_pending`` and counters
(``transitions``, ``duplicates``, ``deduped``, ``enqueued``, ``sent``, ``retried``,
``failed``, ``given_up``, ``template_errors``, ``escalations``, ``repeats``,
``unconfigured_channel``, ``errors``; parked entries: ``malformed``, ``refused``,
``unprocessable``; ``record_refused``: delivery attempts whose record the database
refused), added up over all processes.

    notifier = Notifier(settings, clock=FakeClock())
    task = asyncio.create_task(notifier.run())
    ...
    notifier.stop()
    await task
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool
import redis.asyncio
import redis.exceptions
from psycopg_pool import AsyncConnectionPool

from notifier import outbound, outbox, store
from notifier.channels import REGISTRY, Channel, SendEnv
from notifier.clock import Clock, SystemClock
from notifier.configs import ChannelConfig, enabled, env_configs, load_configs
from notifier.decide import Outcome, Plan
from notifier.delivery import RetryPolicy, send_rows
from notifier.outbox import Attempt, OutboxRow
from notifier.policy import PolicyStore
from notifier.receivers import Available
from notifier.templating import TEMPLATES_DIR, Renderer
from qesmon import deadletter
from qesmon.alerts import AlertTransition
from qesmon.db import describe, is_refusal
from qesmon.errors import ConfigError, ContractError
from qesmon.settings import Settings

log = logging.getLogger(__name__)

GROUP = "notifier"
OUTAGES = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    psycopg.OperationalError,
    psycopg_pool.PoolTimeout,
    OSError,
)


def template_dirs(settings: Settings) -> list[Path]:
    """Where templates are looked up: ``RULES_DIR/templates`` (overrides), then ours."""
    return [settings.rules_dir / "templates", TEMPLATES_DIR]


class Notifier:
    """One notifier process: stream consumer, timer loop, a delivery worker per channel."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        environ: Mapping[str, str] | None = None,
        consumer: str | None = None,
        poll_interval: float = 0.25,
        health_interval: float = 2.0,
        db_timeout: float = 10.0,
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.environ = environ
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.poll_interval = poll_interval
        self.health_interval = health_interval
        self.db_timeout = db_timeout
        self.retry = RetryPolicy(
            settings.notifier.retry_base,
            settings.notifier.retry_max,
            settings.notifier.delivery_deadline,
        )
        self.renderer = Renderer(template_dirs(settings))
        self.policy = PolicyStore(settings.rules_dir, frozenset(REGISTRY))
        self.counters: Counter[str] = Counter()
        self.configs: dict[str, ChannelConfig] = env_configs(settings)
        self.channels: dict[str, Channel] = {}
        self._build_channels()
        #: a delivery worker per receiver (the platform's channel types from the start, the
        #: tenants' as they are configured), woken when rows are queued for it
        self.wake: dict[str, asyncio.Event] = {}
        self.senders: dict[str, asyncio.Task[None]] = {}
        self._stopping = asyncio.Event()
        self._rng = random.Random()
        self._own_pending = True
        self._last_claim = -1e9
        self.ready = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to finish (what SIGTERM does)."""
        self._stopping.set()

    async def run(self) -> None:
        """Run until :meth:`stop`; never raises for an outage of Redis or the database."""
        self.policy.maybe_reload()
        self.redis = redis.asyncio.Redis.from_url(
            self.settings.redis_url, socket_timeout=10, socket_connect_timeout=5
        )
        self.pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self.settings.database_url,
            min_size=1,
            max_size=6,
            open=False,
            timeout=self.db_timeout,
            kwargs={
                "options": "-c timezone=UTC",
                "application_name": "qesmon-notifier",
                "autocommit": True,
            },
            check=AsyncConnectionPool.check_connection,
        )
        await self.pool.open(wait=False)
        self.session = outbound.session(self.settings.channels.outbound_allow)
        self.env = SendEnv(self.session, self.renderer, self.clock, self.environ)
        self.limit = asyncio.Semaphore(16)
        log.info(
            "notifier %s starting; channels from environment: %s",
            self.consumer,
            [c.masked() for c in self.configs.values()],
        )
        readers = [
            asyncio.create_task(self._loop("stream", self._consume_once)),
            asyncio.create_task(self._loop("timers", self._timers_once)),
            asyncio.create_task(
                self._loop("housekeeping", self._housekeeping_once, idle=self.health_interval)
            ),
        ]
        self._start_senders()
        try:
            await self._stopping.wait()
        finally:
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            senders = list(self.senders.values())
            if senders:
                _, pending = await asyncio.wait(senders, timeout=10)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*senders, return_exceptions=True)
            await self._flush_health()
            await self.session.close()
            await self.pool.close()
            await self.redis.aclose()
            log.info("notifier %s stopped", self.consumer)

    async def _loop(
        self,
        name: str,
        step: Callable[[], Awaitable[bool]],
        *,
        idle: float | None = None,
        wake: asyncio.Event | None = None,
    ) -> None:
        """Call ``step`` until stopped: again at once when it did work, after ``idle`` (or a
        wake-up) when it did not, with backoff when Redis or the database is down."""
        backoff = 0.2
        idle = self.poll_interval if idle is None else idle
        while not self._stopping.is_set():
            try:
                busy = await step()
                backoff = 0.2
            except OUTAGES as exc:
                self.counters["errors"] += 1
                log.warning(
                    "%s: %s: %s; retrying in %.1f s",
                    name,
                    type(exc).__name__,
                    str(exc).strip()[:200],
                    backoff,
                )
                self._own_pending = True
                await self._sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            except asyncio.CancelledError:
                raise
            except Exception:
                self.counters["errors"] += 1
                log.exception("%s: unexpected error; retrying in %.1f s", name, backoff)
                await self._sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            if busy:
                continue
            if wake is None:
                await self._sleep(idle)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), idle)
                wake.clear()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _build_channels(self) -> None:
        self.channels = {rid: c.build() for rid, c in self.configs.items() if c.enabled}

    async def _load_receivers(self) -> None:
        self.configs = await load_configs(self.pool, self.settings)
        self._build_channels()
        self._start_senders()

    def _start_senders(self) -> None:
        """A delivery worker for every receiver that has none yet (a removed receiver's
        worker idles; its pending rows wait for it to come back)."""
        for rid in (*REGISTRY, *self.channels):
            if rid not in self.senders:
                self.senders[rid] = asyncio.create_task(
                    self._loop(f"deliver:{rid}", self._deliver_fn(rid), wake=self._wake(rid))
                )

    def _wake(self, rid: str) -> asyncio.Event:
        return self.wake.setdefault(rid, asyncio.Event())

    @property
    def available(self) -> Available:
        return enabled(self.configs)

    # -- the stream --------------------------------------------------------------------------

    async def _ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(
                self.settings.streams.alerts, GROUP, id="0", mkstream=True
            )
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _consume_once(self) -> bool:
        stream = self.settings.streams.alerts
        if not self.ready.is_set():
            # the receivers stored in the database before the first decision, so that no
            # alert is decided without them
            await self._load_receivers()
            await self._ensure_group()
            self.ready.set()
        entries: list[Any] = []
        now = time.monotonic()  # Redis idle times are wall time, whatever our clock says
        if self._own_pending:
            # our own unacknowledged entries first (after an error, or a restart under the
            # same consumer name)
            reply = await self.redis.xreadgroup(GROUP, self.consumer, {stream: "0"}, count=100)
            entries = _entries(reply)
            if not entries:
                self._own_pending = False
        elif now - self._last_claim >= min(self.settings.notifier.claim_idle, 5.0):
            self._last_claim = now
            idle_ms = int(self.settings.notifier.claim_idle * 1000)
            claimed: Any = await self.redis.xautoclaim(
                stream, GROUP, self.consumer, idle_ms, start_id="0-0", count=100
            )
            entries = [e for e in claimed[1] if e[1]]
            if entries:
                log.info("took over %d alert entries from a silent notifier", len(entries))
        if not entries and not self._own_pending:
            reply = await self.redis.xreadgroup(
                GROUP, self.consumer, {stream: ">"}, count=100, block=500
            )
            entries = _entries(reply)
        if entries:
            await self._handle_entries(entries)
        return bool(entries) or not self._own_pending  # a blocking read paced this call

    async def _handle_entries(self, entries: list[Any]) -> None:
        """Handle one read's entries in one transaction, then acknowledge them together.

        An entry that does not parse is parked at once. When the transaction fails for
        anything but an outage, the entries are handled again one per transaction, so the
        one at fault cannot hold back the others (see :meth:`_one_by_one`)."""
        stream = self.settings.streams.alerts
        good: list[tuple[str, AlertTransition]] = []
        raw: dict[str, Mapping[Any, Any]] = {}
        for raw_id, fields in entries:
            entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            if not fields:  # deleted or trimmed after it was read: nothing left to handle
                await self.redis.xack(stream, GROUP, entry_id)
                continue
            try:
                good.append((entry_id, AlertTransition.from_fields(fields)))
            except ContractError as exc:
                self.counters["malformed"] += 1
                reason = f"malformed alert entry: {exc}"
                await self._dead_letter(entry_id, fields, reason, kind="invalid")
                continue
            raw[entry_id] = fields
        if not good:
            return
        try:
            plans = await self._record(good)
        except Exception as exc:
            # some refusals of the data come as OperationalError (class 54): not an outage
            if isinstance(exc, OUTAGES) and not is_refusal(exc):
                raise
            log.warning(
                "a batch of %d alert entries failed (%s: %s); handling them one by one",
                len(good),
                type(exc).__name__,
                str(exc).strip()[:200],
            )
            await self._one_by_one(good, raw)
            return
        await self.redis.xack(stream, GROUP, *[entry_id for entry_id, _ in good])
        self.counters["transitions"] += len(good)
        for plan in plans:
            self._account(plan)

    async def _record(self, good: list[tuple[str, AlertTransition]]) -> list[Plan]:
        """Outbox rows and timers of ``good``, in one transaction."""
        plans = []
        async with self.pool.connection() as conn, conn.transaction():
            for entry_id, transition in good:
                plans.append(
                    await store.record_transition(
                        conn,
                        transition,
                        entry_id,
                        policy=self.policy.current,
                        available=self.available,
                        now=self.clock.now(),
                        time_scale=self.settings.notifier.time_scale,
                    )
                )
        return plans

    async def _one_by_one(
        self, good: list[tuple[str, AlertTransition]], raw: Mapping[str, Mapping[Any, Any]]
    ) -> None:
        """Each entry in a transaction of its own, acknowledged after its commit.

        One the database refuses (a data error) is parked as ``refused`` with the database's
        message. One that fails otherwise stays pending and is tried again after a backoff
        (re-raising its error to :meth:`_loop`); once the consumer group has delivered it
        ``NOTIFIER_MAX_DELIVERIES`` times it is parked as ``failed``. An outage stops the pass:
        what is committed is acknowledged, the rest stays pending."""
        stream = self.settings.streams.alerts
        failure: Exception | None = None
        for entry_id, transition in good:
            try:
                [plan] = await self._record([(entry_id, transition)])
            except Exception as exc:
                if isinstance(exc, OUTAGES) and not is_refusal(exc):
                    raise
                if is_refusal(exc):
                    self.counters["refused"] += 1
                    reason = f"the database refused it: {describe(exc)}"
                    await self._dead_letter(entry_id, raw[entry_id], reason, kind="refused")
                    continue
                deliveries = await self._deliveries(entry_id)
                if deliveries >= self.settings.notifier.max_deliveries:
                    self.counters["unprocessable"] += 1
                    reason = f"failed {deliveries} times, last: {type(exc).__name__}: {exc}"
                    await self._dead_letter(entry_id, raw[entry_id], reason, kind="failed")
                    continue
                log.warning(
                    "alert entry %s failed (delivery %d of at most %d): %s: %s",
                    entry_id,
                    deliveries,
                    self.settings.notifier.max_deliveries,
                    type(exc).__name__,
                    str(exc).strip()[:200],
                )
                failure = failure or exc
                continue
            await self.redis.xack(stream, GROUP, entry_id)
            self.counters["transitions"] += 1
            self._account(plan)
        if failure is not None:
            self._own_pending = True  # read the failed ones again after the backoff
            raise failure

    async def _deliveries(self, entry_id: str) -> int:
        """How many times the consumer group has delivered ``entry_id`` (XPENDING)."""
        info: Any = await self.redis.xpending_range(
            self.settings.streams.alerts, GROUP, min=entry_id, max=entry_id, count=1
        )
        return int(info[0]["times_delivered"]) if info else 0

    async def _dead_letter(
        self, entry_id: str, fields: Mapping[Any, Any], error: str, *, kind: str
    ) -> None:
        """Park an entry in ``<prefix>:alerts:dead`` (original bytes kept, bounded; see
        :mod:`qesmon.deadletter`), then acknowledge it."""
        dead_key = self.settings.streams.key("alerts", "dead")
        log.error("alert entry %s moved to %s (%s): %s", entry_id, dead_key, kind, error[:500])
        dead = deadletter.letter(fields, error=error, source_id=entry_id, kind=kind)
        await self.redis.xadd(
            dead_key,
            dead,  # type: ignore[arg-type]
            maxlen=self.settings.notifier.dead_letter_maxlen,
            approximate=True,
        )
        await self.redis.xack(self.settings.streams.alerts, GROUP, entry_id)

    def _account(self, plan: Plan) -> None:
        if plan.outcome is Outcome.DUPLICATE:
            self.counters["duplicates"] += 1
        elif plan.outcome is Outcome.DEDUPED:
            self.counters["deduped"] += 1
        elif plan.outcome is Outcome.ESCALATED:
            self.counters["escalations"] += 1
        elif plan.outcome is Outcome.REPEAT:
            self.counters["repeats"] += 1
        if plan.skipped:
            self.counters["unconfigured_channel"] += len(plan.skipped)
            log.warning(
                "alert %s: channels %s are not configured or disabled; not sent there",
                plan.alert_id,
                list(plan.skipped),
            )
        self.counters["enqueued"] += len(plan.channels)
        for name in plan.channels:
            self._wake(name).set()

    # -- timers ------------------------------------------------------------------------------

    async def _timers_once(self) -> bool:
        if not self.ready.is_set():
            return False
        async with self.pool.connection() as conn, conn.transaction():
            plans = await store.fire_due_timers(
                conn,
                now=self.clock.now(),
                available=self.available,
                time_scale=self.settings.notifier.time_scale,
            )
        for plan in plans:
            self._account(plan)
        return bool(plans)

    # -- delivery ----------------------------------------------------------------------------

    def _deliver_fn(self, name: str) -> Callable[[], Awaitable[bool]]:
        async def step() -> bool:
            channel = self.channels.get(name)
            if channel is None:
                return False
            rows = await outbox.claim(
                self.pool, name, worker=self.consumer, now=self.clock.now(), lease=self._lease()
            )
            if not rows:
                return False
            await send_rows(
                channel, rows, self.env, self.retry, self._rng, self.limit, self._recorder(name)
            )
            return True

        return step

    def _lease(self) -> float:
        return max(self.settings.notifier.claim_idle, 15.0)

    def _recorder(self, name: str) -> Callable[[list[OutboxRow], Attempt], Awaitable[None]]:
        async def record(rows: list[OutboxRow], attempt: Attempt) -> None:
            refused = await outbox.complete(self.pool, name, rows, attempt, now=self.clock.now())
            if refused is not None:
                self.counters["record_refused"] += len(rows)
            counter = {
                "sent": "sent",
                "retrying": "retried",
                "failed": "failed",
                "given_up": "given_up",
            }[attempt.status]
            self.counters[counter] += len(rows)
            if attempt.status != "sent":
                level = logging.WARNING if attempt.status == "retrying" else logging.ERROR
                log.log(
                    level,
                    "%s: %d notification(s) %s (status %s): %s",
                    name,
                    len(rows),
                    attempt.status,
                    attempt.http_status,
                    attempt.error,
                )

        return record

    # -- housekeeping ------------------------------------------------------------------------

    async def _housekeeping_once(self) -> bool:
        if self.policy.maybe_reload():
            self.counters["policy_reloads"] += 1
        await self._load_receivers()
        await self._flush_health()
        return False

    async def _flush_health(self) -> None:
        key = self.settings.streams.key("health", "notifier")
        self.counters["template_errors"] += self.renderer.errors
        self.renderer.errors = 0
        deltas = {k: v for k, v in self.counters.items() if v}
        now = self.clock.now()
        try:
            pending = 0
            async with self.pool.connection(timeout=2) as conn:
                cur = await conn.execute(
                    "SELECT count(*) FROM notifier_outbox WHERE status = 'pending'"
                )
                row = await cur.fetchone()
                pending = int(row[0]) if row else 0
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hset(
                    key,
                    mapping={
                        "heartbeat": f"{now:.3f}",
                        f"heartbeat:{self.consumer}": f"{now:.3f}",
                        "outbox_pending": pending,
                    },
                )
                for name, value in deltas.items():
                    pipe.hincrby(key, name, value)
                await pipe.execute()
        except OUTAGES as exc:
            log.debug("health not written: %s", exc)
            return
        for name, value in deltas.items():
            self.counters[name] -= value


def _entries(reply: Any) -> list[Any]:
    """Entries of a one-stream XREADGROUP reply (RESP2, the client's protocol)."""
    return list(reply[0][1]) if reply else []


def main(settings: Settings) -> int:
    """Entry point of ``qesmon notifier``: run until SIGTERM/SIGINT, return the exit code."""
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        notifier = Notifier(settings, environ=os.environ)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, notifier.stop)
        await notifier.run()

    asyncio.run(run())
    return 0
