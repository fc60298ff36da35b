"""Finished report documents, kept a few seconds and computed once however many ask at once.

A report (dashboard, business intelligence, performance) reads weeks of rollups and merges
sketches: tens to hundreds of milliseconds of work whose answer changes only as windows close.
:class:`ReportCache` keeps each finished document per key (endpoint, tenant, period):

- younger than ``fresh`` seconds (since it was finished): served as is;
- older, but younger than ``stale``: served at once while one background task recomputes it
  (stale-while-revalidate), so a reader never waits for a recomputation it did not need;
- older than ``stale``, or absent: computed now; concurrent requests for the same key share
  that one computation (single flight) and its result or its error.

Numbers are never mixed across computations: a document is always one computation's output.

    cache = ReportCache(fresh=2.0, stale=30.0)
    body = await cache.get(("dashboard", tenant, days), lambda: build_dashboard(...))
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

Compute = Callable[[], Awaitable[bytes]]


@dataclass
class ReportCache:
    """Per-key finished documents (bytes) with single-flight refresh; bounded."""

    fresh: float = 2.0
    stale: float = 30.0
    max_entries: int = 1000
    entries: dict[tuple[Any, ...], tuple[float, bytes]] = field(default_factory=dict)
    flights: dict[tuple[Any, ...], asyncio.Task[bytes]] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0

    async def get(self, key: tuple[Any, ...], compute: Compute) -> bytes:
        found = self.entries.get(key)
        now = time.monotonic()
        if found is not None:
            age = now - found[0]
            if age < self.fresh:
                self.hits += 1
                return found[1]
            if age < self.stale:
                self.hits += 1
                if key not in self.flights:
                    task = self._start(key, compute)
                    task.add_done_callback(_log_failure)
                return found[1]
        self.misses += 1
        task = self.flights.get(key) or self._start(key, compute)
        # shield: one caller giving up (client gone) must not cancel the others' computation
        return await asyncio.shield(task)

    def _start(self, key: tuple[Any, ...], compute: Compute) -> asyncio.Task[bytes]:
        async def run() -> bytes:
            try:
                body = await compute()
            finally:
                self.flights.pop(key, None)
            if len(self.entries) >= self.max_entries:
                for old in list(self.entries)[: self.max_entries // 10]:
                    del self.entries[old]
            self.entries[key] = (time.monotonic(), body)
            return body

        task = asyncio.create_task(run(), name=f"report-{key[0]}")
        self.flights[key] = task
        return task

    async def close(self) -> None:
        """Cancel the computations still running (at shutdown)."""
        for task in list(self.flights.values()):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def _log_failure(task: asyncio.Task[bytes]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("background report refresh failed: %s", task.exception())
