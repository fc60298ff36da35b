"""The pipeline's own health: counters kept in-process, published to Redis every second.

The API's exporter (:8001) and health endpoint read the hash ``<prefix>:health:pipeline``, so
any number of pipeline and API processes agree. ``heartbeat`` is the last time the dataflow
itself made progress (the window step runs at least every poll interval, idle or not), so a
pipeline stuck behind a blocked sink shows a stale heartbeat even though this thread runs.
Counters are published as increments (``HINCRBYFLOAT``), so several pipeline processes add up;
gauges are overwritten.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict

import redis

log = logging.getLogger(__name__)


class PipelineStats:
    """Thread-safe counters and gauges of one pipeline process.

    Usage::

        stats = PipelineStats()
        stats.incr("events_total", 1000)
        stats.start_publishing(redis_url, "qes:health:pipeline")
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, float] = defaultdict(float)
        self.totals: dict[str, float] = defaultdict(float)
        self.gauges: dict[str, float] = {}
        self.lags: dict[str, int] = {}
        self.series: dict[str, int] = {}
        self.notes: dict[str, str] = {}
        self.close_delays: list[float] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def incr(self, name: str, amount: float = 1.0) -> None:
        with self._lock:
            self._pending[name] += amount
            self.totals[name] += amount

    def set_gauge(self, name: str, value: float) -> None:
        with self._lock:
            self.gauges[name] = value

    def set_note(self, name: str, text: str) -> None:
        """A short text for operators (e.g. the last limit hit), published with the gauges."""
        with self._lock:
            self.notes[name] = text[:500]

    def set_active_series(self, stream: str, count: int) -> None:
        """Active series of one shard; ``active_series`` is their sum in this process."""
        with self._lock:
            self.series[stream] = count
            self.gauges["active_series"] = sum(self.series.values())

    def set_lag(self, stream: str, entries: int) -> None:
        with self._lock:
            self.lags[stream] = entries

    def record_close_delay(self, seconds: float) -> None:
        with self._lock:
            self.gauges["window_close_delay_seconds"] = seconds
            if len(self.close_delays) < 100_000:
                self.close_delays.append(seconds)

    def start_publishing(self, redis_url: str, key: str, interval: float = 1.0) -> None:
        """Publish to the Redis hash ``key`` every ``interval`` s from a daemon thread."""
        client = redis.Redis.from_url(redis_url, socket_timeout=5)

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.publish(client, key)
                except redis.RedisError as exc:
                    log.debug("publishing health failed: %s", exc)

        self._thread = threading.Thread(target=loop, name="health", daemon=True)
        self._thread.start()

    def publish(self, client: redis.Redis, key: str) -> None:
        with self._lock:
            pending = dict(self._pending)
            self._pending.clear()
            gauges = dict(self.gauges)
            lags = dict(self.lags)
            notes = dict(self.notes)
        pipe = client.pipeline(transaction=False)
        for name, amount in pending.items():
            pipe.hincrbyfloat(key, name, amount)
        if lags:
            pipe.hset(f"{key}:lag", mapping={k: v for k, v in lags.items()})
        if "heartbeat" not in gauges:  # nothing processed yet: the process itself is alive
            gauges["heartbeat"] = time.time()
        fields: dict[str, str] = {k: repr(v) for k, v in gauges.items()}
        fields.update(notes)
        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
        pipe.execute()
        if lags:
            total = sum(int(v) for v in client.hvals(f"{key}:lag"))
            client.hset(key, "lag_entries", total)

    def stop(self) -> None:
        self._stop.set()
