"""The :8001 exporter: names, labels and values from the rollups and health hashes; promtool."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections import defaultdict
from typing import Any

import pytest
import redis
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from api.exporter import EXPORTER, create_exporter_app
from qesmon.settings import Settings
from tests.api.conftest import load_events
from tests.api.workload import DAY, workload


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def scrape(aiohttp_client: Any, app: web.Application) -> str:
    await aiohttp_client(app)  # starts the API app: pool, Redis, exporter refresh
    exporter = app[EXPORTER]
    exporter_client = await aiohttp_client(create_exporter_app(app))
    await exporter.refresh()
    resp = await exporter_client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    return await resp.text()


async def test_exporter_reports_what_the_rollups_and_health_hashes_hold(
    aiohttp_client: Any, app: web.Application, settings: Settings, redis_client: redis.Redis
) -> None:
    now = time.time()
    events = workload(now)
    load_events(settings, events)
    redis_client.hset(
        settings.streams.key("health", "pipeline"),
        mapping={
            "heartbeat": now - 2,
            "events_total": 1234,
            "dead_letters_total": 5,
            "late_events_total": 1,
            "lag_entries": 17,
            "window_close_delay_seconds": 0.4,
            "sink_batch_seconds": 0.02,
        },
    )
    text = await scrape(aiohttp_client, app)
    got = samples(text)

    revenue: dict[tuple[str, ...], float] = defaultdict(float)
    requests: dict[tuple[str, ...], float] = defaultdict(float)
    durations: dict[tuple[str, ...], list[float]] = defaultdict(list)
    for e in events:
        if e.name == "subscription_payment":
            revenue[(e.tenant, e.labels["plan"], e.labels["currency"], e.labels["kind"])] += e.value
        if e.name == "http_request":
            key = (e.labels["service"], e.labels["endpoint"], e.labels["method"])
            requests[(*key, e.labels["status"])] += 1
            durations[key].append(e.value)
    for (tenant, plan, currency, kind), total in revenue.items():
        labels = (("currency", currency), ("kind", kind), ("plan", plan), ("tenant_id", tenant))
        assert got[("qes_revenue_total", labels)] == pytest.approx(total)
    for (service, endpoint, method, status), count in requests.items():
        labels = (
            ("endpoint", endpoint),
            ("method", method),
            ("service", service),
            ("status", status),
        )
        assert got[("qes_requests_total", labels)] == count
    for (service, endpoint, method), values in durations.items():
        labels = (("endpoint", endpoint), ("method", method), ("service", service))
        assert got[("qes_request_duration_seconds_count", labels)] == len(values)
        assert got[("qes_request_duration_seconds_sum", labels)] == pytest.approx(sum(values))
        for le in ("0.1", "1.0", "2.5"):
            bucket = tuple(sorted((*labels, ("le", le))))
            assert got[("qes_request_duration_seconds_bucket", bucket)] == sum(
                v <= float(le) for v in values
            )
    signatures = sum(
        e.value for e in events if e.name == "signatures_created" and e.tenant == "tenant-a"
    )
    assert (
        got[("qes_usage_total", (("kind", "signatures"), ("tenant_id", "tenant-a")))] == signatures
    )
    assert (
        got[("qes_quota_utilization", (("resource", "signatures"), ("tenant_id", "tenant-a")))]
        == 92.0
    )
    users_7d = len(
        {e.user for e in events if e.user and e.tenant == "tenant-b" and e.ts >= now - 7 * DAY}
    )
    assert got[("qes_users_active", (("period", "7d"), ("tenant_id", "tenant-b")))] == users_7d
    assert got[("qes_pipeline_lag_entries", ())] == 17
    assert got[("qes_pipeline_events_total", ())] == 1234
    assert 1.5 <= got[("qes_pipeline_heartbeat_age_seconds", ())] < 60
    assert ("qes_notifier_heartbeat_age_seconds", ()) not in got  # never seen: absent
    assert got[("qes_rule_file_errors", ())] == 0
    assert any(name == "qes_database_connections" for name, _ in got)


async def test_scrapes_serve_the_snapshot_quickly(
    aiohttp_client: Any, app: web.Application, settings: Settings
) -> None:
    load_events(settings, workload(time.time()))
    await scrape(aiohttp_client, app)
    exporter = app[EXPORTER]
    started = time.perf_counter()
    for _ in range(20):
        exporter.render()
    assert (time.perf_counter() - started) / 20 < 0.05


async def test_promtool_accepts_the_exposition(
    aiohttp_client: Any, app: web.Application, settings: Settings, redis_client: redis.Redis
) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:  # the set-up installs it: missing is a broken set-up, not a skip
        pytest.fail("promtool is missing: install Debian's prometheus (scripts/setup.sh --test)")
    load_events(settings, workload(time.time()))
    redis_client.hset(settings.streams.key("health", "pipeline"), mapping={"heartbeat": 1.0})
    text = await scrape(aiohttp_client, app)
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=text.encode(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
