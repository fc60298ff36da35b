"""The resource monitor: this host's CPU, memory, disk and network as ``system`` events.

Every ``RESOURCE_MONITORING_INTERVAL`` seconds it samples psutil and records, through the
SDK's :class:`~qesmon.sdk.collector.MetricsCollector` (so through the metrics stream and the
pipeline, like any other event), with label ``host``:

- ``cpu_usage`` — percent of all CPUs busy since the previous sample;
- ``memory_usage`` — percent of memory in use;
- ``disk_usage`` — percent used, one event per mounted file system (label ``mount``);
- ``network_bytes_sent`` / ``network_bytes_recv`` — bytes since the previous sample.

The API runs one as a background task (``RESOURCE_MONITOR=false`` turns it off; one per host
is enough)::

    monitor = ResourceMonitor(settings, redis_client)
    stop = asyncio.Event()
    task = asyncio.create_task(monitor.run(stop))
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass

import psutil
import redis.asyncio as aioredis

from qesmon import vocabulary as v
from qesmon.contract import MetricType
from qesmon.sdk.collector import MetricsCollector
from qesmon.settings import Settings

log = logging.getLogger(__name__)

MAX_MOUNTS = 32
_SKIP_FSTYPES = frozenset(("squashfs", "tmpfs", "devtmpfs", "overlay", "proc", "sysfs"))


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    value: float
    labels: dict[str, str]


class ResourceSampler:
    """Reads psutil; keeps the previous network counters to report the bytes in between."""

    def __init__(self, host: str | None = None) -> None:
        self.host = host or socket.gethostname()
        self._net: tuple[int, int] | None = None
        psutil.cpu_percent(interval=None)  # the first reading is meaningless: prime it

    def sample(self) -> list[Sample]:
        host = {"host": self.host}
        out = [
            Sample(v.CPU_USAGE, float(psutil.cpu_percent(interval=None)), host),
            Sample(v.MEMORY_USAGE, float(psutil.virtual_memory().percent), host),
        ]
        seen: set[str] = set()
        for part in psutil.disk_partitions(all=False):
            if part.fstype in _SKIP_FSTYPES or part.mountpoint in seen:
                continue
            if len(seen) >= MAX_MOUNTS:
                break
            try:
                usage = psutil.disk_usage(part.mountpoint)
            except OSError:
                continue
            seen.add(part.mountpoint)
            out.append(
                Sample(v.DISK_USAGE, float(usage.percent), {**host, "mount": part.mountpoint})
            )
        net = psutil.net_io_counters()
        if net is not None:
            current = (int(net.bytes_sent), int(net.bytes_recv))
            if self._net is not None:
                sent = max(0, current[0] - self._net[0])
                recv = max(0, current[1] - self._net[1])
                out.append(Sample(v.NETWORK_BYTES_SENT, float(sent), host))
                out.append(Sample(v.NETWORK_BYTES_RECV, float(recv), host))
            self._net = current
        return out


class ResourceMonitor:
    """Samples every ``settings.api.resource_monitoring_interval`` seconds until cancelled."""

    def __init__(
        self, settings: Settings, client: aioredis.Redis, sampler: ResourceSampler | None = None
    ) -> None:
        self.interval = settings.api.resource_monitoring_interval
        self.sampler = sampler or ResourceSampler()
        self.collector = MetricsCollector(client, streams=settings.streams)
        self.samples = 0

    async def record_once(self) -> list[Sample]:
        samples = await asyncio.to_thread(self.sampler.sample)
        for s in samples:
            await self.collector.record_metric(MetricType.SYSTEM, s.name, s.value, s.labels)
        self.samples += 1
        return samples

    async def run(self, stop: asyncio.Event) -> None:
        """Sample until ``stop`` is set."""
        while not stop.is_set():
            try:
                await self.record_once()
            except Exception as exc:  # psutil hiccups must not stop the monitor
                log.warning("resource sample failed: %s: %s", type(exc).__name__, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)

    async def close(self) -> None:
        await self.collector.close()
