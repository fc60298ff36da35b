"""The real-time cache: running aggregates of the windows still open, for sub-second views.

Rollups reach TimescaleDB when a window closes (every 10 s at best); the live page and the
exporter want fresher numbers. Every ``interval`` (250 ms; every second while the shard is
catching up on a backlog) the window step hands the base windows that changed to
:class:`LivePublisher`, which

* ``PUBLISH``es them on ``<prefix>:live`` as JSON messages
  ``{"at": <unix time>, "windows": [{"name", "type", "tenant", "labels", "width_s", "start",
  "count", "errors", "sum", "min", "max", "p50", "p95", "p99", "distinct_users"}, ...]}``
  for subscribers (the API's server-sent events), each at most ``MAX_MESSAGE_BYTES`` (a read
  touching 10,000 series becomes several messages: one message of megabytes would overflow
  Redis's pub/sub client output buffer, 8 MB soft / 32 MB hard by default, and Redis would
  disconnect every subscriber), and
* keeps the latest value of each in the hash ``<prefix>:live:windows:<start>`` (one hash per
  window start, field = the series as JSON ``[name, type, tenant, labels]``, expiring a minute
  after its last update) for readers that join late.

It is best effort: a Redis hiccup skips an update, never stalls the pipeline for long.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import orjson
import redis

from qesmon.series import WindowResult

log = logging.getLogger(__name__)

#: the largest pub/sub message the publisher sends
MAX_MESSAGE_BYTES = 256 * 1024


def window_json(result: WindowResult) -> dict[str, Any]:
    agg = result.agg
    p50, p95, p99 = agg.quantiles()
    s = result.series
    return {
        "name": s.name,
        "type": s.type,
        "tenant": s.tenant,
        "labels": dict(s.labels),
        "width_s": result.width_s,
        "start": result.start,
        "count": agg.count,
        "errors": agg.errors,
        "sum": agg.sum,
        "min": agg.min,
        "max": agg.max,
        "p50": p50,
        "p95": p95,
        "p99": p99,
        "distinct_users": agg.distinct_users(),
    }


def messages(at: float, encoded: list[bytes], limit: int = MAX_MESSAGE_BYTES) -> list[bytes]:
    """Pub/sub messages ``{"at", "windows"}`` holding the encoded windows, each at most
    ``limit`` bytes (a single window larger than that still goes alone)."""
    head = b'{"at":' + orjson.dumps(at) + b',"windows":['
    out: list[bytes] = []
    chunk: list[bytes] = []
    size = len(head) + 2
    for data in encoded:
        if chunk and size + len(data) + 1 > limit:
            out.append(head + b",".join(chunk) + b"]}")
            chunk, size = [], len(head) + 2
        chunk.append(data)
        size += len(data) + 1
    if chunk:
        out.append(head + b",".join(chunk) + b"]}")
    return out


class LivePublisher:
    """Publishes running window aggregates at most every ``interval`` seconds.

    While the shard is working through a backlog its open windows are history, not "live":
    they are published only every ``behind_interval`` seconds, which keeps the cost of
    catching up (percentiles and JSON for every touched window) low.
    """

    def __init__(
        self, redis_url: str, prefix: str, interval: float = 0.25, behind_interval: float = 1.0
    ) -> None:
        self.client = redis.Redis.from_url(redis_url, socket_timeout=1)
        self.channel = f"{prefix}:live"
        self.hash_prefix = f"{prefix}:live:windows"
        self.interval = interval
        self.behind_interval = behind_interval
        self._last = -math.inf

    def due(self, caught_up: bool = True) -> bool:
        wait = self.interval if caught_up else self.behind_interval
        return time.monotonic() - self._last >= wait

    def publish(self, results: list[WindowResult]) -> None:
        self._last = time.monotonic()
        if not results:
            return
        windows = [window_json(r) for r in results]
        encoded = [orjson.dumps(w) for w in windows]
        by_start: dict[str, dict[bytes, bytes]] = {}
        for w, data in zip(windows, encoded, strict=True):
            key = f"{self.hash_prefix}:{int(w['start'])}"
            field = orjson.dumps([w["name"], w["type"], w["tenant"], w["labels"]])
            by_start.setdefault(key, {})[field] = data
        try:
            pipe = self.client.pipeline(transaction=False)
            for message in messages(time.time(), encoded):
                pipe.publish(self.channel, message)
            for key, fields in by_start.items():
                pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
                pipe.expire(key, 60)
            pipe.execute()
        except redis.RedisError as exc:
            log.debug("live update skipped: %s", exc)
