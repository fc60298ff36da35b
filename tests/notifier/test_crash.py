"""Crashes: kill -9 of a notifier process mid-delivery, and a consumer that died mid-read."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, BinaryIO

import redis.asyncio
from psycopg_pool import AsyncConnectionPool

from qesmon.settings import Settings
from tests.notifier.conftest import (
    Answer,
    Receiver,
    configure,
    push,
    rows,
    running,
    transition,
    wait_for,
    write_policy,
)

ROOT = Path(__file__).resolve().parents[2]
PER_ALERT = """
routing:
  defaults: {channels: [webhook], group_wait: 0s, group_by: [fingerprint], repeat_interval: 0s}
"""


def start_notifier(
    settings: Settings, receiver: Receiver, log: BinaryIO
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QESMON_", "NOTIFIER_"))}
    env.update(
        REDIS_URL=settings.redis_url,
        DATABASE_URL=settings.database_url,
        QESMON_KEY_PREFIX=settings.key_prefix,
        RULES_DIR=str(settings.rules_dir),
        WEBHOOK_URL=receiver.url,
        OUTBOUND_ALLOW=str(settings.channels.outbound_allow),
        NOTIFIER_CLAIM_IDLE_SECONDS="1",
        NOTIFIER_RETRY_BASE_SECONDS="0.05",
        NOTIFIER_RETRY_MAX_SECONDS="0.2",
        LOG_LEVEL="INFO",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "notifier"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


async def test_kill_9_mid_delivery_loses_nothing_and_duplicates_at_most_the_in_flight(
    nsettings: Settings,
    pool: AsyncConnectionPool[Any],
    receiver: Receiver,
    aredis: redis.asyncio.Redis,
    tmp_path: Path,
) -> None:
    write_policy(nsettings, PER_ALERT)
    receiver.default = Answer(200, delay=0.05)
    n = 60
    for i in range(n):
        await push(aredis, nsettings, transition(f"fp{i:02d}"))
    log_path = tmp_path / "notifier.log"
    log = log_path.open("ab")
    first = start_notifier(nsettings, receiver, log)
    try:
        await wait_for(lambda: len(receiver.requests) >= 10, timeout=30, what="deliveries")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        at_kill = len(receiver.requests)
        assert at_kill < n, "the first process finished before it was killed"
        killed = f"{socket.gethostname()}-{first.pid}"  # its consumer name and lease holder
        second = start_notifier(nsettings, receiver, log)
        try:
            await wait_for(
                lambda: len({_fp(r) for r in receiver.accepted()}) == n,
                timeout=40,
                what=f"all {n} alerts after the restart",
            )

            async def only_dead_leases_left() -> bool:
                left = await rows(
                    pool, "SELECT locked_by FROM notifier_outbox WHERE status = 'pending'"
                )
                return all(by == killed for (by,) in left)

            # the second process has sent all it will send until the killed one's leases run
            # out; each row those leases still hold will then go out again: a duplicate too
            await wait_for(only_dead_leases_left, timeout=30, what="the second process idle")
            leased = len(await rows(pool, "SELECT 1 FROM notifier_outbox WHERE status = 'pending'"))
            second.send_signal(signal.SIGTERM)
            assert second.wait(15) == 0, log_path.read_text()[-2000:]
        finally:
            if second.poll() is None:
                second.kill()
                second.wait()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        log.close()
    counts = Counter(_fp(r) for r in receiver.accepted())
    assert set(counts) == {f"fp{i:02d}" for i in range(n)}
    duplicates = sum(c - 1 for c in counts.values()) + leased
    assert duplicates <= 16, (counts, leased)  # at most the sends in flight (concurrency 16)
    keys: dict[str, set[str]] = {}
    for r in receiver.accepted():
        keys.setdefault(_fp(r), set()).add(r.headers["Idempotency-Key"])
    assert all(len(k) == 1 for k in keys.values())  # a duplicate carries the same key


def _fp(request: Any) -> str:
    return str(request.json()["alerts"][0]["fingerprint"])


async def test_entries_read_by_a_dead_consumer_are_claimed_and_delivered(
    nsettings: Settings,
    pool: AsyncConnectionPool[Any],
    receiver: Receiver,
    aredis: redis.asyncio.Redis,
) -> None:
    write_policy(nsettings, PER_ALERT)
    await configure(pool, "webhook", {"url": receiver.url})
    stream = nsettings.streams.alerts
    await aredis.xgroup_create(stream, "notifier", id="0", mkstream=True)
    for i in range(3):
        await push(aredis, nsettings, transition(f"orphan{i}"))
    # a consumer reads them and dies before acknowledging
    await aredis.xreadgroup("notifier", "ghost", {stream: ">"}, count=10)
    async with running(nsettings):
        await wait_for(
            lambda: len(receiver.requests) == 3, timeout=20, what="claimed entries delivered"
        )

        async def drained() -> bool:
            info = await aredis.xpending(stream, "notifier")
            return int(info["pending"]) == 0

        await wait_for(drained, what="claimed entries acknowledged")
    assert sorted(_fp(r) for r in receiver.requests) == ["orphan0", "orphan1", "orphan2"]
