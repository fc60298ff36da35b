"""Time for the notifier: an injectable clock, so tests run escalation in milliseconds.

Every timestamp the notifier writes (outbox due times, leases, timers) comes from a
:class:`Clock`, never from the database's ``now()``::

    clock = FakeClock(1_700_000_000.0)
    notifier = Notifier(settings, clock=clock)
    clock.advance(300)          # five minutes later, instantly
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """Something that tells the current Unix time in seconds."""

    def now(self) -> float: ...


class SystemClock:
    """The wall clock."""

    def now(self) -> float:
        return time.time()


class FakeClock:
    """A clock that moves only when told to (tests)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds


def to_datetime(unix: float) -> datetime:
    """Unix seconds as an aware UTC datetime (what psycopg writes to timestamptz)."""
    return datetime.fromtimestamp(unix, UTC)


def iso(unix: float) -> str:
    """RFC 3339 with milliseconds and a ``Z`` (the format Alertmanager and PagerDuty accept)."""
    return to_datetime(unix).isoformat(timespec="milliseconds").replace("+00:00", "Z")
