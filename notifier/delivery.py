"""Sending leased outbox rows: one worker per channel, groups in one message, retry policy.

A worker leases the due rows of its channel (:func:`notifier.outbox.claim`), turns each group
into one :class:`~notifier.channels.Message` (PagerDuty: one per alert), sends groups
concurrently except that two messages about the same alert go out in order, and records the
attempt. Retry policy: exponential backoff ``base * 2**(attempt-1)`` capped at ``max``, with
jitter (50-100 %); a 429 waits at least its ``Retry-After``; a non-retryable answer (4xx
other than 408/429, SMTP 5xx) fails the rows at once; rows still failing after the delivery
deadline are given up. All three are counted and logged with secrets scrubbed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from notifier.channels import Channel, Message, SendEnv
from notifier.outbox import Attempt, OutboxRow
from notifier.secrets import scrub, secret_values
from qesmon.errors import ChannelError, DeliveryError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff parameters (seconds); ``deadline`` counts from when a row was queued."""

    base: float = 1.0
    max: float = 300.0
    deadline: float = 86400.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Wait before the next try after ``attempt`` failed tries."""
        backoff = min(self.max, self.base * 2 ** max(0, attempt - 1))
        backoff *= rng.uniform(0.5, 1.0)
        if retry_after is not None:
            backoff = max(backoff, min(retry_after, self.deadline))
        return float(backoff)


def groups_of(rows: Sequence[OutboxRow]) -> list[list[OutboxRow]]:
    """Rows grouped by group key, groups ordered by their oldest row."""
    groups: dict[str, list[OutboxRow]] = {}
    for row in rows:
        groups.setdefault(row.group_key, []).append(row)
    return sorted(groups.values(), key=lambda g: g[0].id)


def waves(groups: Sequence[list[OutboxRow]]) -> list[list[list[OutboxRow]]]:
    """Split groups into waves sent one after the other, so that two messages about the same
    alert (say firing, then resolved) never race; groups in one wave go out concurrently."""
    result: list[list[list[OutboxRow]]] = []
    last: dict[str, int] = {}
    for group in groups:
        prints = {str(r.context.get("fingerprint", r.id)) for r in group}
        wave = max((last[f] + 1 for f in prints if f in last), default=0)
        while len(result) <= wave:
            result.append([])
        result[wave].append(group)
        for f in prints:
            last[f] = wave
    return result


def message_of(group: Sequence[OutboxRow]) -> Message:
    first = group[0]
    return Message(
        kind=first.kind,
        alerts=[r.context for r in group],
        keys=[r.key for r in group],
        group_key=first.group_key.split("|", 2)[-1],
        template_set=first.template_set,
    )


async def attempt_group(
    channel: Channel,
    group: Sequence[OutboxRow],
    env: SendEnv,
    policy: RetryPolicy,
    rng: random.Random,
) -> Attempt:
    """Send one group once and classify the outcome (never raises for a send failure)."""
    started = time.perf_counter()
    now = env.clock.now()
    attempts = max(r.attempts for r in group) + 1
    try:
        result = await channel.send(message_of(group), env)
        latency = (time.perf_counter() - started) * 1000
        return Attempt("sent", result.status, latency, None)
    except DeliveryError as exc:
        latency = (time.perf_counter() - started) * 1000
        error, status, retryable, retry_after = str(exc), exc.status, exc.retryable, exc.retry_after
    except ChannelError as exc:  # e.g. a ${ENV} reference that is not set: fixable, so retry
        latency = (time.perf_counter() - started) * 1000
        error, status, retryable, retry_after = str(exc), None, True, None
    except Exception as exc:  # a bug in a channel must not wedge the outbox
        log.exception("channel %s crashed while sending", channel.name)
        latency = (time.perf_counter() - started) * 1000
        error, status, retryable, retry_after = f"internal error: {exc!r}", None, True, None
    try:
        secrets = secret_values(channel.resolved(env.environ), channel.secret_fields)
    except ChannelError:
        secrets = []
    error = scrub(error, secrets)[:1000]
    if not retryable:
        return Attempt("failed", status, latency, error)
    oldest = min(r.created_at for r in group)
    delay = policy.delay(attempts, retry_after, rng)
    if now + delay - oldest > policy.deadline:
        return Attempt("given_up", status, latency, error)
    return Attempt("retrying", status, latency, error, next_attempt=now + delay)


Record = Callable[[list[OutboxRow], Attempt], Awaitable[None]]


async def send_rows(
    channel: Channel,
    rows: Sequence[OutboxRow],
    env: SendEnv,
    policy: RetryPolicy,
    rng: random.Random,
    limit: asyncio.Semaphore,
    record: Record,
) -> int:
    """Send every group of ``rows`` (wave by wave), recording each attempt as it ends;
    return the number of messages sent successfully."""
    sent = 0

    async def one(group: list[OutboxRow]) -> None:
        nonlocal sent
        async with limit:
            attempt = await attempt_group(channel, group, env, policy, rng)
        await record(group, attempt)
        sent += attempt.status == "sent"

    units: list[list[OutboxRow]] = []
    for group in groups_of(rows):
        units.extend([[r] for r in group] if not channel.groupable else [group])
    for wave in waves(units):
        await asyncio.gather(*(one(g) for g in wave))
    return sent
