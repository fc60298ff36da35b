"""Running the demo: options, the backfill, the live loop."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import re
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TextIO

import redis
import redis.asyncio as aioredis

from cli.demo.incidents import CYCLE, INCIDENTS, Effects, Incident, Schedule, quota_tenant
from cli.demo.notify import WebhookReceiver, claim_webhook, reaches, release_webhook
from cli.demo.platform import Tenant, make_tenants
from cli.demo.traffic import EVENTS_PER_REQUEST, Ev, Intervals, Traffic, diurnal, poisson
from qesmon.errors import ConfigError
from qesmon.sdk.collector import MetricsCollector
from qesmon.settings import Settings, mask_url

_PERIOD = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_BACKFILL = 90 * 86400
#: the SDK drops the oldest events beyond its buffer; the backfill waits above this many
BACKFILL_BUFFERED = 50_000


def parse_period(text: str, option: str = "--backfill") -> float:
    """Seconds from ``7d``, ``12h``, ``90m``, ``1w`` or ``1d12h``; ConfigError otherwise."""
    raw = text.strip().lower()
    parts = _PERIOD.findall(raw)
    if not parts or "".join(n + u for n, u in parts) != raw:
        raise ConfigError(f"{option}: expected a period like 7d, 12h or 90m, got {text!r}")
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not 0 < seconds <= MAX_BACKFILL:
        raise ConfigError(f"{option}: must be more than 0 and at most 90d, got {text!r}")
    return seconds


def backfill_range(now: float, period: float) -> tuple[float, float]:
    """``[start, end)`` of a backfill: it ends where the current hour starts, so backfilled
    and live events never share an hourly window."""
    end = math.floor(now / 3600) * 3600
    return end - period, end


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """The demo's knobs (the ``qesmon demo`` options), validated."""

    rate: float = 200.0
    tenants: int = 4
    duration: float = 0.0
    backfill: float | None = None
    backfill_rate: float = 0.05
    speed: float = 1.0
    seed: int = 1
    receiver: bool = True
    #: the receiver's loopback port (0: any free one)
    receiver_port: int = 0
    progress_every: float = 30.0

    def __post_init__(self) -> None:
        checks = [
            ("--rate", 0 < self.rate <= 100_000, "must be > 0 and at most 100000 events/s"),
            ("--tenants", 1 <= self.tenants <= 100, "must be between 1 and 100"),
            ("--duration", self.duration >= 0, "must be >= 0 seconds (0 = until stopped)"),
            ("--backfill-rate", 0 < self.backfill_rate <= 100, "must be > 0 and at most 100"),
            ("--speed", 0 < self.speed <= 1000, "must be > 0 and at most 1000"),
            ("--receiver-port", 0 <= self.receiver_port < 65536, "must be a TCP port (0: any)"),
        ]
        for option, ok, message in checks:
            if not ok:
                raise ConfigError(f"{option}: {message}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DemoOptions:
        backfill = getattr(args, "backfill", None)
        return cls(
            rate=float(args.rate),
            tenants=int(args.tenants),
            duration=float(args.duration),
            backfill=parse_period(backfill) if backfill else None,
            backfill_rate=float(getattr(args, "backfill_rate", 0.05)),
            speed=float(getattr(args, "speed", 1.0)),
            seed=int(getattr(args, "seed", 1)),
            receiver=not getattr(args, "no_receiver", False),
            receiver_port=int(getattr(args, "receiver_port", 0)),
        )


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%H:%M:%S")


def _elapsed(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


async def _record(collector: MetricsCollector, events: Iterable[Ev]) -> None:
    for e in events:
        await collector.record_metric(
            e.type, e.name, e.value, e.labels, e.tenant, e.user, e.ts, e.success
        )


@dataclass
class _Run:
    settings: Settings
    options: DemoOptions
    out: TextIO
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: int = 0  # events the SDK could not deliver

    def say(self, text: str) -> None:
        print(f"[demo] {text}", file=self.out, flush=True)

    async def wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless asked to stop; True when asked to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), max(0.0, seconds))
        return self.stop.is_set()

    async def backfill(self, tenants: Sequence[Tenant], period: float) -> None:
        settings, opts = self.settings, self.options
        stream = settings.streams.backfill
        client = aioredis.Redis.from_url(settings.redis_url)
        try:
            existing = int(await client.xlen(stream))
        finally:
            await client.aclose()
        if existing:
            self.say(
                f"backfill skipped: {stream} already holds {existing:,} entries (backfilled "
                "windows are final; start from empty servers to write them again)"
            )
            return
        start, end = backfill_range(time.time(), period)
        self.say(f"backfill: {_utc(start)} -> {_utc(end)} into {stream}")
        traffic = Traffic(tenants, opts.seed, Intervals().scaled(60.0), start=start)
        rng = random.Random(opts.seed + 2)
        step = 60.0
        sent = 0
        began = last_report = time.monotonic()
        collector = MetricsCollector(settings.redis_url, streams=stream, close_timeout=60.0)
        await collector.start()
        try:
            t = start
            day = -1
            while t < end and not self.stop.is_set():
                if int((t - start) // 86400) != day:  # one bad deploy a day, 10-25 minutes
                    day = int((t - start) // 86400)
                    bad = t + rng.uniform(2 * 3600, 20 * 3600)
                    traffic.history_errors = (bad, bad + rng.uniform(600, 1500))
                t1 = min(end, t + step)
                lam = opts.backfill_rate * (t1 - t) * diurnal(t) / EVENTS_PER_REQUEST
                n = poisson(traffic.rng, lam)
                events = traffic.generate(t, t1, n, Effects(), t1 - t)
                await _record(collector, events)
                sent += len(events)
                t = t1
                while collector.stats.buffered > BACKFILL_BUFFERED and not self.stop.is_set():
                    await asyncio.sleep(0.05)
                if time.monotonic() - last_report >= 2.0:
                    last_report = time.monotonic()
                    done = 100 * (t - start) / (end - start)
                    self.say(f"backfill {_utc(t)}  {done:5.1f} %  {sent:,} events")
                await asyncio.sleep(0)
        finally:
            await collector.close()
        stats = collector.stats
        self.dropped += stats.dropped
        took = time.monotonic() - began
        lost = f", {stats.dropped:,} NOT delivered ({stats.last_error})" if stats.dropped else ""
        self.say(
            f"backfill done: {stats.sent:,} events in {took:.1f} s{lost}; "
            "the pipeline aggregates them in the background"
        )

    async def live(self, tenants: Sequence[Tenant], receiver: WebhookReceiver | None) -> None:
        settings, opts = self.settings, self.options
        width = settings.pipeline.window_seconds
        began = time.time()
        schedule = Schedule(math.floor(began / width) * width, opts.speed, quota_tenant(tenants))
        traffic = Traffic(tenants, opts.seed + 10, start=began)
        self.say(
            f"live traffic: {opts.rate:g} events/s for {len(tenants)} tenants "
            f"({', '.join(f'{t.id} ({t.plan.name}, {t.currency})' for t in tenants)}); "
            f"incidents every {CYCLE / opts.speed:g} s"
        )
        for incident in INCIDENTS:
            at = max(began, schedule.origin + incident.start / opts.speed)
            self.say(
                f"  {_clock(at)} for {incident.duration / opts.speed:g} s: "
                f"{schedule.describe(incident)} -> rule {incident.rule}"
            )
        tick = 0.1
        last = began
        active: set[Incident] = set()
        next_report = began + opts.progress_every
        async with MetricsCollector(settings.redis_url, streams=settings.streams) as collector:
            while True:
                if await self.wait(last + tick - time.time()):
                    break
                now = time.time()
                effects = schedule.effects(now)
                current = set(schedule.active(now))
                for incident in sorted(current - active, key=lambda i: i.start):
                    self.say(f"{_clock(now)} incident starts: {schedule.describe(incident)}")
                for incident in sorted(active - current, key=lambda i: i.start):
                    self.say(f"{_clock(now)} incident over: {schedule.describe(incident)}")
                active = current
                n = poisson(traffic.rng, opts.rate * (now - last) / EVENTS_PER_REQUEST)
                await _record(
                    collector,
                    traffic.generate(last, now, n, effects, (now - last) * opts.speed),
                )
                last = now
                if now >= next_report:
                    next_report = now + opts.progress_every
                    stats = collector.stats
                    heard = (
                        f"  notifications {len(receiver.received)}" if receiver is not None else ""
                    )
                    self.say(
                        f"{_elapsed(now - began)}  {stats.sent:,} events sent "
                        f"({stats.sent / max(now - began, 1e-9):,.0f}/s), "
                        f"{stats.buffered:,} buffered, {stats.dropped:,} dropped{heard}"
                        + (
                            "  incident: " + "; ".join(i.kind for i in sorted(active, key=str))
                            if active
                            else ""
                        )
                    )
                if opts.duration and now - began >= opts.duration:
                    break
        stats = collector.stats
        self.dropped += stats.dropped
        self.say(
            f"stopped after {_elapsed(time.time() - began)}: {stats.sent:,} events sent, "
            f"{stats.dropped:,} dropped"
        )


async def run(settings: Settings, options: DemoOptions, out: TextIO = sys.stdout) -> int:
    """Run the demo until ``options.duration`` has passed or SIGINT/SIGTERM; exit status."""
    state = _Run(settings, options, out)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, state.stop.set)
    tenants = make_tenants(options.tenants, random.Random(options.seed))
    receiver: WebhookReceiver | None = None
    url = ""
    claimed = False
    try:
        if options.receiver:
            receiver = WebhookReceiver(out, options.receiver_port)
            url = await receiver.start()
            why = await asyncio.to_thread(claim_webhook, settings, url)
            claimed = why is None
            state.say(
                f"webhook receiver on {url}: "
                + ("the notifier's webhook channel now points here" if claimed else str(why))
            )
            if claimed and not reaches(settings, receiver.port):
                state.say(
                    "the notifier reaches it only when allowed to (the outbound guard refuses "
                    f"loopback): run it with OUTBOUND_ALLOW=127.0.0.1:{receiver.port}"
                )
        if options.backfill:
            await state.backfill(tenants, options.backfill)
        if not state.stop.is_set():
            await state.live(tenants, receiver)
    except (redis.RedisError, OSError) as exc:
        state.say(f"cannot reach Redis at {mask_url(settings.redis_url)}: {exc}")
        return 1
    finally:
        if claimed:
            await asyncio.to_thread(release_webhook, settings, url)
        if receiver is not None:
            await receiver.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)
    return 1 if state.dropped else 0


def main(settings: Settings, args: argparse.Namespace) -> int:
    """``qesmon demo``: see the module docstring."""
    options = DemoOptions.from_args(args)
    return asyncio.run(run(settings, options))
