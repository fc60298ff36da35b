"""End to end: events (and the resource monitor's samples) pushed through Redis and the real
pipeline process, then read back through the dashboard and performance endpoints."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from aiohttp.test_utils import TestClient

from api.monitor import ResourceMonitor, ResourceSampler
from qesmon.contract import parse_entry
from qesmon.encode import encode_batch, event_dict
from qesmon.settings import Settings
from tests.api.conftest import Ev, Keys, auth
from tests.api.test_dashboard import _ts, expected
from tests.support.processes import QesmonProcess, settings_env, wait_for
from tests.support.settings import replace_settings


@pytest.fixture
def psettings(settings: Settings, tmp_path: Path) -> Settings:
    rules = tmp_path / "rules"
    rules.mkdir()
    return replace_settings(
        settings,
        pipeline=dict(watermark_wait=1.0, allowed_lateness=5.0, snapshot_interval=1),
        rules_dir=rules,
    )


def _events(now: float) -> list[Ev]:
    rnd = random.Random(3)
    out: list[Ev] = []
    for i in range(300):
        ts = now - 40 + i * 0.1
        tenant = rnd.choice(("tenant-a", "tenant-b"))
        kind = rnd.random()
        if kind < 0.6:
            ok = rnd.random() > 0.1
            out.append(
                Ev(
                    "http_request",
                    "performance",
                    ts,
                    rnd.uniform(0.01, 0.5),
                    tenant,
                    f"u{rnd.randrange(30)}",
                    {
                        "service": "signing",
                        "endpoint": "/sign",
                        "method": "POST",
                        "status": "200" if ok else "500",
                    },
                    success=ok,
                )
            )
        elif kind < 0.8:
            out.append(
                Ev(
                    "subscription_payment",
                    "revenue",
                    ts,
                    float(rnd.choice((9, 29))),
                    tenant,
                    labels={
                        "plan": "pro",
                        "currency": "EUR",
                        "kind": rnd.choice(("new", "recurring")),
                    },
                )
            )
        elif kind < 0.9:
            out.append(Ev("signatures_created", "usage", ts, float(rnd.randint(1, 3)), tenant))
        else:
            out.append(Ev("user_signup", "business_event", ts, 1.0, tenant, f"new{i}"))
    return out


async def test_dashboard_over_the_real_pipeline_equals_the_ground_truth(
    client: TestClient[Any, Any],
    keys: Keys,
    psettings: Settings,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    now = time.time()
    events = _events(now)
    stream = psettings.streams.metrics[0]
    batch = [
        event_dict(
            e.name,
            e.value,
            type=e.type,
            ts=e.ts,
            tenant=e.tenant,
            user=e.user,
            labels=e.labels,
            success=e.success,
        )
        for e in events
    ]
    for i in range(0, len(batch), 100):
        redis_client.xadd(stream, encode_batch(batch[i : i + 100]))  # type: ignore[arg-type]
    # the resource monitor's samples travel the same way
    aredis = _aredis(psettings)
    monitor = ResourceMonitor(psettings, aredis, ResourceSampler(host="test-host"))
    samples = await monitor.record_once()
    await monitor.close()
    await aredis.aclose()
    assert {s.name for s in samples} >= {"cpu_usage", "memory_usage"}

    proc = QesmonProcess(
        ["pipeline", "--recovery-dir", str(tmp_path / "recovery")],
        settings_env(psettings),
        tmp_path / "pipeline.log",
    ).start()
    try:

        def stored() -> bool:
            assert proc.alive(), proc.log()
            with psycopg.connect(psettings.database_url) as conn:
                row = conn.execute(
                    "SELECT coalesce(sum(count), 0) FROM metrics_rollup WHERE width_s = 10 "
                    "AND name <> ALL(%s)",
                    (
                        [
                            "cpu_usage",
                            "memory_usage",
                            "disk_usage",
                            "network_bytes_sent",
                            "network_bytes_recv",
                        ],
                    ),
                ).fetchone()
                hosts = conn.execute(
                    "SELECT count(*) FROM metrics_rollup WHERE name = 'cpu_usage' "
                    "AND labels->>'host' = 'test-host'"
                ).fetchone()
            return bool(row and row[0] == len(events) and hosts and hosts[0] > 0)

        wait_for(stored, 60, f"{len(events)} events in 10 s rollups", interval=0.3)
    finally:
        proc.stop()

    for tenant in (None, "tenant-a"):
        query = {"days": "1"} | ({"tenant_id": tenant} if tenant else {})
        body = await (
            await client.get("/api/v1/metrics/dashboard", params=query, headers=auth(keys.viewer))
        ).json()
        start, end = _ts(body["period"]["start"]), _ts(body["period"]["end"])
        truth = expected(events, start, end + 1, tenant)
        business = body["business_metrics"]
        assert business["revenue"] == truth["revenue"]
        assert business["usage"]["signatures"] == truth["usage"]["signatures"]
        assert business["activity"] == truth["activity"]
        perf = body["performance_metrics"]
        assert perf["avg_response_time"] == pytest.approx(truth["avg"], abs=1e-6)
        assert perf["error_rate"] == pytest.approx(truth["error_rate"], abs=1e-4)

    perf_body = await (
        await client.get(
            "/api/v1/metrics/performance", params={"hours": "1"}, headers=auth(keys.viewer)
        )
    ).json()
    assert [c["host"] for c in perf_body["resources"]["cpu"]] == ["test-host"]


def _aredis(settings: Settings) -> Any:
    import redis.asyncio

    return redis.asyncio.Redis.from_url(settings.redis_url)


async def test_monitor_samples_are_valid_system_events(
    psettings: Settings, redis_client: redis.Redis
) -> None:
    client = _aredis(psettings)
    monitor = ResourceMonitor(psettings, client, ResourceSampler(host="h"))
    await monitor.record_once()
    await monitor.record_once()  # the second sample has network deltas
    await monitor.close()
    await client.aclose()
    names: dict[str, dict[str, str]] = {}
    for entry_id, fields in redis_client.xrange(psettings.streams.metrics[0]):
        events, rejected = parse_entry(entry_id, fields)
        assert rejected == []
        for e in events:
            assert e.type == "system" and dict(e.labels)["host"] == "h"
            names[e.name] = dict(e.labels)
    assert set(names) >= {
        "cpu_usage",
        "memory_usage",
        "disk_usage",
        "network_bytes_sent",
        "network_bytes_recv",
    }
    assert "mount" in names["disk_usage"]
