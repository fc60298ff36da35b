"""The Prometheus exporter on :8001: what the pipeline computed, as ``qes_*`` metrics.

Every number comes from shared state — TimescaleDB rollups, the ``deliveries`` table,
``pg_stat_activity`` and the Redis health hashes of the pipeline and the notifier — so several
API processes report the same values. A background task rebuilds a snapshot every
``REFRESH_SECONDS`` (user counts and rule files every ``SLOW_REFRESH_SECONDS``); a scrape only
formats the snapshot, so it takes milliseconds whatever the database is doing.

Counters (``qes_revenue_total``, ``qes_requests_total``, ``qes_usage_total`` and the
histograms) cover every rollup still retained: closed days (from the day tier) and hours are
added up once (incrementally, after the allowed lateness has passed), so a start reads one row
per series and day of history, and the newer minutes and 10 s windows on each refresh. Since
the day tier keeps years (``RETENTION_1D``), dropping finer chunks changes nothing; they drop
only when the day tier's oldest chunk goes, which Prometheus treats as a counter reset.
Histogram buckets are the merged sketch's CDF: exact below 256 values per window, within the
sketch's rank error above. Gauges from rollups (CPU, quota,
subscriptions) are the mean of each series' newest window.

Who may scrape is :mod:`api.exporter_auth`'s business; with ``PROMETHEUS_TENANT_SERIES=false``
the snapshot goes through :func:`without_tenants` and no series carries a ``tenant_id``.

Uses its own :class:`prometheus_client.CollectorRegistry`; nothing is global::

    exporter = Exporter(settings, pool, redis_client, hour_cache)
    await exporter.refresh()
    text = exporter.render()
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from psycopg_pool import AsyncConnectionPool

from api import health, store
from api.exporter_auth import ScrapeAuth
from api.resources import HOUR_CACHE, POOL, REDIS, SETTINGS, stop_task
from api.stats import cumulative_counts
from api.store import HOUR, Conn, HourCache, SeriesFilter
from qesmon import vocabulary as v
from qesmon.settings import Settings
from qesmon.sketch import Agg

log = logging.getLogger(__name__)

REFRESH_SECONDS = 5.0
MAX_BACKOFF_SECONDS = 60.0
SLOW_REFRESH_SECONDS = 60.0
ERROR_RATE_WINDOW = 300.0
GAUGE_LOOKBACK = 900.0
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
USER_PERIODS = (("1d", 1), ("7d", 7), ("30d", 30))

COUNTER_SOURCES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (v.SUBSCRIPTION_PAYMENT, ("tenant", "plan", "currency", "kind")),
    (v.HTTP_REQUEST, ("service", "endpoint", "method", "status")),
    (v.SIGNATURES_CREATED, ("tenant",)),
    (v.DOCUMENTS_UPLOADED, ("tenant",)),
)
HISTOGRAM_SOURCES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (v.HTTP_REQUEST, ("service", "endpoint", "method")),
    (v.EXTERNAL_API, ("provider",)),
)
PIPELINE_COUNTERS = {
    "events_total": ("qes_pipeline_events", "Events the pipeline read and parsed"),
    "entries_total": ("qes_pipeline_entries", "Stream entries the pipeline read"),
    "dead_letters_total": (
        "qes_pipeline_dead_letters",
        "Entries or events sent to the dead-letter stream",
    ),
    "late_events_total": ("qes_pipeline_late_events", "Events later than the allowed lateness"),
    "sink_rows_total": ("qes_pipeline_sink_rows", "Rollup rows written"),
    "rule_errors_total": ("qes_pipeline_rule_errors", "Rule evaluation errors"),
    "limited_events_total": (
        "qes_pipeline_limited_events",
        "Events of new series refused by MAX_SERIES_PER_TENANT or MAX_SERIES",
    ),
    "alert_groups_limited_total": (
        "qes_pipeline_alert_groups_limited",
        "Alert groups not alerted because their rule was at MAX_ALERT_GROUPS_PER_RULE",
    ),
    "db_refused_total": (
        "qes_pipeline_db_refused",
        "Rollup rows the database refused (sent to the dead letters)",
    ),
}
PIPELINE_GAUGES = {
    "lag_entries": ("qes_pipeline_lag_entries", "Stream entries not yet read by the pipeline"),
    "window_close_delay_seconds": (
        "qes_pipeline_window_close_delay_seconds",
        "Latest delay from window end + wait to rows committed",
    ),
    "sink_batch_seconds": ("qes_pipeline_sink_batch_seconds", "Latest sink batch duration"),
    "active_series": (
        "qes_pipeline_active_series",
        "Series with a window still open (up to an hour), the unit of MAX_SERIES",
    ),
}


#: the stored running totals' format (``exporter_state.state``); another one is recomputed
STATE_VERSION = 1


@dataclass
class _Closed:
    """Totals and merged sketches of the hours before ``upto`` (added incrementally), stored
    in ``exporter_state`` as they advance, so that a restart reads them instead of history."""

    upto: float | None = None
    totals: dict[tuple[str, tuple[str, ...]], list[float]] = field(default_factory=dict)
    hists: dict[tuple[str, tuple[str, ...]], Agg] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "v": STATE_VERSION,
            "totals": [[name, list(key), *acc] for (name, key), acc in self.totals.items()],
            "hists": [
                [name, list(key), base64.b64encode(agg.to_bytes()).decode()]
                for (name, key), agg in self.hists.items()
            ],
        }

    @classmethod
    def from_json(cls, upto: float, doc: Any) -> _Closed | None:
        """The stored totals, or None when they are of another format or unreadable."""
        try:
            if doc.get("v") != STATE_VERSION:
                return None
            totals = {
                (str(name), tuple(map(str, key))): [float(count), float(total)]
                for name, key, count, total in doc["totals"]
            }
            hists = {
                (str(name), tuple(map(str, key))): Agg.from_bytes(base64.b64decode(blob))
                for name, key, blob in doc["hists"]
            }
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            log.warning("exporter: stored running totals unreadable (%s); recomputing", exc)
            return None
        return cls(upto, totals, hists)


class _Snapshot(Collector):
    """The collector registered with the exporter's registry: yields the last snapshot."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterator[Metric]:
        yield from self.families


class Exporter:
    """Builds ``qes_*`` metric families from shared state and renders them for a scrape."""

    def __init__(
        self,
        settings: Settings,
        pool: AsyncConnectionPool[Any],
        client: aioredis.Redis,
        cache: HourCache,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.redis = client
        self.cache = cache
        self.registry = CollectorRegistry(auto_describe=False)
        self.snapshot = _Snapshot()
        self.registry.register(self.snapshot)
        self.ready = asyncio.Event()
        self.refreshed_at = 0.0
        self.refresh_seconds = 0.0
        self.refresh_errors = 0
        self._closed = _Closed()
        self._state_read = False
        self._slow: list[Metric] = []
        self._slow_at = -math.inf
        self._lock = asyncio.Lock()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh until ``stop`` is set; a failed refresh keeps the previous snapshot.

        psycopg turns a cancellation in the middle of a query into an error, so stopping
        is signalled with ``stop`` rather than by cancelling the task. The first snapshot
        leaves out the slow families (user counts over 30 days, rule files): they follow with
        the next refresh, so that scrapes after a start are answered within about a second.
        """
        failures = 0
        first = True
        while not stop.is_set():
            try:
                await self.refresh(slow=not first)
                first = False
                failures = 0
            except Exception as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from exc
                self.refresh_errors += 1
                failures += 1
                log.warning("exporter refresh failed: %s: %s", type(exc).__name__, exc)
            self.ready.set()
            # an outage backs off (5, 10, 20, 40, 60 s ...) instead of retrying at full pace
            pause = min(MAX_BACKOFF_SECONDS, REFRESH_SECONDS * 2 ** max(0, failures - 1))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)

    async def refresh(self, *, slow: bool = True) -> None:
        """Rebuild the snapshot (one refresh at a time: the closed-hour totals accumulate);
        ``slow`` false leaves the slow families as they are (none yet after a start)."""
        async with self._lock:
            await self._refresh(slow)

    async def _refresh(self, slow: bool) -> None:
        started = time.perf_counter()
        now = time.time()
        families: list[Metric] = []
        async with self.pool.connection() as conn:
            latest = await store.latest_buckets(conn)
            boundary = self._boundary(latest, now)
            await self._advance_closed(conn, boundary)
            since = self._closed.upto or store.floor_to(await store.earliest_bucket(conn), HOUR)
            open_spans = store.plan_spans(since, now, latest)
            families += await self._counters(conn, open_spans)
            families += await self._histograms(conn, open_spans)
            families += await self._gauges(conn, latest, now)
            families += await self._deliveries(conn)
            if slow and now - self._slow_at >= SLOW_REFRESH_SECONDS:
                self._slow = await self._slow_families(conn, latest, now)
                self._slow_at = now
        families += self._slow
        families += await self._health(now)
        self.refresh_seconds = time.perf_counter() - started
        self.refreshed_at = time.time()
        meta = GaugeMetricFamily(
            "qes_exporter_refresh_seconds", "Duration of the last snapshot refresh"
        )
        meta.add_metric([], self.refresh_seconds)
        errors = CounterMetricFamily(
            "qes_exporter_refresh_errors", "Snapshot refreshes that failed"
        )
        errors.add_metric([], self.refresh_errors)
        stamp = GaugeMetricFamily(
            "qes_exporter_snapshot_timestamp_seconds", "Unix time of the snapshot being served"
        )
        stamp.add_metric([], self.refreshed_at)
        if not self.settings.api.tenant_series:
            families = without_tenants(families)
        self.snapshot.families = [*families, meta, errors, stamp]

    def _boundary(self, latest: dict[int, float | None], now: float) -> float | None:
        """Hours before this are final: written, and past the allowed lateness."""
        newest = latest.get(HOUR)
        if newest is None:
            return None
        settled = store.floor_to(now - self.settings.pipeline.allowed_lateness - 120, HOUR)
        return min(newest + HOUR, settled)

    async def _advance_closed(self, conn: Conn, boundary: float | None) -> None:
        if not self._state_read:
            stored = await store.load_exporter_state(conn)
            if stored is not None:
                found = _Closed.from_json(*stored)
                if found is not None:
                    self._closed = found
            self._state_read = True
        closed = self._closed
        if boundary is None or (closed.upto is not None and boundary <= closed.upto):
            return
        lo = (
            closed.upto
            if closed.upto is not None
            else store.floor_to(await store.earliest_bucket(conn), HOUR)
        )
        # merged days from the day tier, the hours after them from the hour tier: a start
        # reads a row per series and day of history, not one per hour
        spans = store.plan_spans(lo, boundary, await store.latest_buckets(conn))
        for name, by in COUNTER_SOURCES:
            for row in await store.totals(conn, SeriesFilter(names=(name,)), spans, by=by):
                acc = closed.totals.setdefault((name, row.key), [0.0, 0.0])
                acc[0] += row.count
                acc[1] += row.sum
        # 24 buckets at a time, so the first pass over months of sketches stays small in memory
        for name, by in HISTOGRAM_SOURCES:
            for span in spans:
                step = span.width_s * 24
                chunk_start = span.start
                while chunk_start < span.end:
                    chunk = [
                        store.Span(span.width_s, chunk_start, min(span.end, chunk_start + step))
                    ]
                    flt = SeriesFilter(names=(name,))
                    for (_, key), agg in (
                        await store.sketches(conn, None, flt, chunk, by=by)
                    ).items():
                        target = closed.hists.get((name, key))
                        if target is None:
                            closed.hists[(name, key)] = agg
                        else:
                            target.merge(agg)
                    chunk_start += step
        closed.upto = boundary
        await store.save_exporter_state(conn, boundary, closed.to_json())

    async def _counters(self, conn: Conn, spans: list[store.Span]) -> list[Metric]:
        current: dict[tuple[str, tuple[str, ...]], list[float]] = {
            k: list(x) for k, x in self._closed.totals.items()
        }
        for name, by in COUNTER_SOURCES:
            for row in await store.totals(conn, SeriesFilter(names=(name,)), spans, by=by):
                acc = current.setdefault((name, row.key), [0.0, 0.0])
                acc[0] += row.count
                acc[1] += row.sum
        revenue = CounterMetricFamily(
            "qes_revenue_total",
            "Revenue recorded (subscription_payment amounts)",
            labels=["tenant_id", "plan", "currency", "kind"],
        )
        requests = CounterMetricFamily(
            "qes_requests_total",
            "HTTP requests of the platform",
            labels=["service", "endpoint", "method", "status"],
        )
        usage = CounterMetricFamily(
            "qes_usage_total",
            "Signatures created and documents uploaded",
            labels=["tenant_id", "kind"],
        )
        kinds = {v.SIGNATURES_CREATED: "signatures", v.DOCUMENTS_UPLOADED: "documents"}
        for (name, key), (count, total) in sorted(current.items()):
            if name == v.SUBSCRIPTION_PAYMENT:
                revenue.add_metric(list(key), total)
            elif name == v.HTTP_REQUEST:
                requests.add_metric(list(key), count)
            else:
                usage.add_metric([key[0], kinds[name]], total)
        return [revenue, requests, usage]

    async def _histograms(self, conn: Conn, spans: list[store.Span]) -> list[Metric]:
        families = {
            v.HTTP_REQUEST: HistogramMetricFamily(
                "qes_request_duration_seconds",
                "HTTP request duration of the platform",
                labels=["service", "endpoint", "method"],
            ),
            v.EXTERNAL_API: HistogramMetricFamily(
                "qes_external_api_response_time_seconds",
                "Response time of external providers",
                labels=["provider"],
            ),
        }
        for name, by in HISTOGRAM_SOURCES:
            merged: dict[tuple[str, ...], Agg] = {
                key: agg.copy() for (n, key), agg in self._closed.hists.items() if n == name
            }
            fresh = await store.sketches(
                conn, self.cache, SeriesFilter(names=(name,)), spans, by=by
            )
            for (_, key), agg in fresh.items():
                target = merged.get(key)
                if target is None:
                    merged[key] = agg
                else:
                    target.merge(agg)
            for key, agg in sorted(merged.items()):
                if agg.count == 0:
                    continue
                counts = cumulative_counts(agg, DURATION_BUCKETS)
                buckets = [(_le(b), c) for b, c in zip(DURATION_BUCKETS, counts, strict=True)]
                buckets.append(("+Inf", float(agg.count)))
                families[name].add_metric(list(key), buckets, agg.sum)
        return list(families.values())

    async def _gauges(
        self, conn: Conn, latest: dict[int, float | None], now: float
    ) -> list[Metric]:
        out: list[Metric] = []
        recent = store.plan_spans(
            store.floor_to(now - ERROR_RATE_WINDOW, 10), now, latest, max_width=60
        )
        error_rate = GaugeMetricFamily(
            "qes_error_rate",
            "Failed HTTP requests in percent over the last 5 minutes",
            labels=["service", "endpoint"],
        )
        for row in await store.totals(
            conn, SeriesFilter(names=(v.HTTP_REQUEST,)), recent, by=("service", "endpoint")
        ):
            if row.count:
                error_rate.add_metric(list(row.key), 100.0 * row.errors / row.count)
        out.append(error_rate)
        since = now - GAUGE_LOOKBACK
        specs = (
            (
                "qes_subscriptions_active",
                "Active subscriptions (latest)",
                v.SUBSCRIPTION_ACTIVE,
                ("tenant", "plan"),
                ["tenant_id", "plan"],
            ),
            (
                "qes_quota_utilization",
                "Quota used in percent (latest)",
                v.QUOTA_UTILIZATION,
                ("tenant", "resource"),
                ["tenant_id", "resource"],
            ),
            (
                "qes_system_cpu_usage_percent",
                "CPU use in percent (latest)",
                v.CPU_USAGE,
                ("host",),
                ["host"],
            ),
            (
                "qes_system_memory_usage_percent",
                "Memory use in percent (latest)",
                v.MEMORY_USAGE,
                ("host",),
                ["host"],
            ),
            (
                "qes_system_disk_usage_percent",
                "Disk use in percent (latest)",
                v.DISK_USAGE,
                ("host", "mount"),
                ["host", "mount"],
            ),
        )
        for metric, doc, name, by, labels in specs:
            family = GaugeMetricFamily(metric, doc, labels=labels)
            newest: dict[tuple[str, ...], tuple[float, float]] = {}
            for key, at, value in await store.latest_values(
                conn, SeriesFilter(names=(name,)), since, by=by
            ):
                if key not in newest or at > newest[key][0]:
                    newest[key] = (at, value)
            for key, (_, value) in sorted(newest.items()):
                family.add_metric(list(key), value)
            out.append(family)
        connections = GaugeMetricFamily(
            "qes_database_connections",
            "Connections to this database by state (pg_stat_activity)",
            labels=["state"],
        )
        cur = await conn.execute(
            "SELECT coalesce(state, 'unknown'), count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() GROUP BY 1 ORDER BY 1"
        )
        for state, count in await cur.fetchall():
            connections.add_metric([str(state)], float(count))
        out.append(connections)
        return out

    async def _deliveries(self, conn: Conn) -> list[Metric]:
        family = CounterMetricFamily(
            "qes_notifier_deliveries",
            "Notification delivery attempts by channel and outcome",
            labels=["channel", "status"],
        )
        cur = await conn.execute(
            "SELECT channel, status, count(*) FROM deliveries GROUP BY 1, 2 ORDER BY 1, 2"
        )
        for channel, status, count in await cur.fetchall():
            family.add_metric([str(channel), str(status)], float(count))
        return [family]

    async def _slow_families(
        self, conn: Conn, latest: dict[int, float | None], now: float
    ) -> list[Metric]:
        users = GaugeMetricFamily(
            "qes_users_active",
            "Distinct active users over the period",
            labels=["tenant_id", "period"],
        )
        minute = store.floor_to(now, 60)
        for label, days in USER_PERIODS:
            spans = store.plan_spans(minute - days * 86400, now, latest)
            merged = await store.sketches(
                conn, self.cache, SeriesFilter(with_users=True), spans, by=("tenant",)
            )
            for (_, (tenant,)), agg in sorted(merged.items(), key=lambda kv: kv[0][1]):
                users.add_metric([tenant, label], float(agg.distinct_users()))
        rule_check = await asyncio.to_thread(health.rule_files_check, self.settings)
        rules = GaugeMetricFamily(
            "qes_rule_file_errors", "Errors found when loading the rule files"
        )
        rules.add_metric([], float(len(rule_check.get("errors", []))))
        return [users, rules]

    async def _health(self, now: float) -> list[Metric]:
        out: list[Metric] = []
        pipeline = await health.read_health_hash(
            self.redis, self.settings.streams.key("health", "pipeline")
        )
        for key, (name, doc) in PIPELINE_COUNTERS.items():
            family = CounterMetricFamily(name, doc)
            if key in pipeline:
                family.add_metric([], pipeline[key])
            out.append(family)
        for key, (name, doc) in PIPELINE_GAUGES.items():
            gauge = GaugeMetricFamily(name, doc)
            if key in pipeline:
                gauge.add_metric([], pipeline[key])
            out.append(gauge)
        notifier = await health.read_health_hash(
            self.redis, self.settings.streams.key("health", "notifier")
        )
        for values, name, doc in (
            (
                pipeline,
                "qes_pipeline_heartbeat_age_seconds",
                "Seconds since the pipeline's last heartbeat (absent: never seen)",
            ),
            (
                notifier,
                "qes_notifier_heartbeat_age_seconds",
                "Seconds since the notifier's last heartbeat (absent: never seen)",
            ),
        ):
            gauge = GaugeMetricFamily(name, doc)
            if "heartbeat" in values:
                gauge.add_metric([], max(0.0, now - values["heartbeat"]))
            out.append(gauge)
        return out


def _le(bound: float) -> str:
    return repr(float(bound))


TENANT_LABEL = "tenant_id"

#: how a per-tenant gauge is folded over tenants when ``PROMETHEUS_TENANT_SERIES`` is false;
#: a per-tenant gauge not named here is left out rather than shown per tenant
TENANT_GAUGE_FOLDS: dict[str, Callable[[list[float]], float]] = {
    "qes_subscriptions_active": math.fsum,
    "qes_users_active": math.fsum,  # a user active in two tenants counts twice
    "qes_quota_utilization": max,  # the fullest tenant's, so QesQuotaExceeded still fires
}


def without_tenants(families: list[Metric]) -> list[Metric]:
    """The families with the ``tenant_id`` label folded away (``PROMETHEUS_TENANT_SERIES=false``).

    Pure. Samples that differ only by tenant become one: counters and histograms are summed
    (still counters, buckets still cumulative), gauges folded as :data:`TENANT_GAUGE_FOLDS`
    says; any other family with a tenant label is dropped, so a new per-tenant series never
    reaches Prometheus by default.
    """
    out: list[Metric] = []
    for family in families:
        if not any(TENANT_LABEL in sample.labels for sample in family.samples):
            out.append(family)
            continue
        if family.type in ("counter", "histogram"):
            fold: Callable[[list[float]], float] = math.fsum
        elif family.type == "gauge" and family.name in TENANT_GAUGE_FOLDS:
            fold = TENANT_GAUGE_FOLDS[family.name]
        else:
            continue
        groups: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = {}
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != TENANT_LABEL))
            groups.setdefault((sample.name, labels), []).append(sample.value)
        folded = Metric(family.name, family.documentation, family.type, family.unit)
        folded.samples = [
            Sample(name, dict(labels), fold(values)) for (name, labels), values in groups.items()
        ]
        out.append(folded)
    return out


EXPORTER = web.AppKey("exporter", Exporter)


async def exporter_ctx(app: web.Application) -> AsyncIterator[None]:
    """Create the exporter with the API's pool and Redis client and keep it refreshed."""
    exporter = Exporter(app[SETTINGS], app[POOL], app[REDIS], app[HOUR_CACHE])
    app[EXPORTER] = exporter
    stop = asyncio.Event()
    task = asyncio.create_task(exporter.run(stop), name="exporter-refresh")
    yield
    stop.set()
    await stop_task(task)


def create_exporter_app(api_app: web.Application) -> web.Application:
    """The :8001 application: ``GET /metrics`` renders the API app's exporter snapshot, to
    scrapes with the configured credentials only (:mod:`api.exporter_auth`)."""

    async def metrics(request: web.Request) -> web.StreamResponse:
        exporter = api_app[EXPORTER]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(exporter.ready.wait(), 10.0)
        return web.Response(body=exporter.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    auth = ScrapeAuth.from_settings(api_app[SETTINGS].api)
    app = web.Application(middlewares=[auth.middleware] if auth is not None else [])
    app.router.add_get("/metrics", metrics)
    return app


__all__ = ["EXPORTER", "Exporter", "create_exporter_app", "exporter_ctx", "without_tenants"]
