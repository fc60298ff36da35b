"""The collector for code without an event loop (WSGI apps, scripts, worker threads).

``SyncMetricsCollector`` has the methods of :class:`~qesmon.sdk.MetricsCollector`, as plain
functions, and runs the same flusher on an event loop in a background thread::

    with SyncMetricsCollector("redis://localhost:6379/0") as metrics:
        metrics.record_business_event("user_signup", tenant_id, user_id=user)
        with timed(metrics, "db_query", operation="select"):
            ...

Calls are safe from any thread and, like the async ones, never wait for Redis.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from qesmon.sdk.collector import CollectorStats, MetricsCollector
from qesmon.sdk.events import business_event, metric_event, performance_event, records

__all__ = ["SyncMetricsCollector"]


class SyncMetricsCollector:
    """A :class:`MetricsCollector` driven by its own thread; takes the same options."""

    def __init__(self, redis_url: str, **options: Any) -> None:
        self._collector = MetricsCollector(redis_url, **options)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._close_timeout: float | None = None
        self._closed = False

    @records(metric_event)
    def record_metric(self, event: dict[str, Any]) -> None:
        """See :meth:`MetricsCollector.record_metric`."""
        self.submit(event)

    @records(business_event)
    def record_business_event(self, event: dict[str, Any]) -> None:
        """See :meth:`MetricsCollector.record_business_event`."""
        self.submit(event)

    @records(performance_event)
    def record_performance_metric(self, event: dict[str, Any]) -> None:
        """See :meth:`MetricsCollector.record_performance_metric`."""
        self.submit(event)

    def submit(self, event: dict[str, Any]) -> None:
        """Buffer one validated event object (starts the flusher thread if needed)."""
        if self._thread is None and not self._closed:
            self.start()
        self._collector.submit(event)

    @property
    def stats(self) -> CollectorStats:
        return self._collector.stats

    def start(self) -> None:
        """Start the flusher thread (idempotent)."""
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(
                target=asyncio.run, args=(self._main(),), name="qesmon-sdk-flush", daemon=True
            )
            self._thread.start()
        self._started.wait()

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is buffered within ``timeout`` seconds, then stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread, loop, stop = self._thread, self._loop, self._stop
            self._close_timeout = timeout
        if thread is None or loop is None or stop is None:
            return
        loop.call_soon_threadsafe(stop.set)
        thread.join()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await self._collector.start()
        self._started.set()
        await self._stop.wait()
        await self._collector.close(self._close_timeout)

    def __enter__(self) -> SyncMetricsCollector:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
