"""Recording an event through the stream, health checks, errors and limits."""

from __future__ import annotations

import dataclasses
import io
import time
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient

from api.app import create_app
from qesmon.contract import parse_entry
from qesmon.settings import Settings
from tests.api.conftest import Keys, auth

P = "/api/v1/metrics"


async def test_record_writes_a_contract_entry_the_pipeline_can_parse(
    client: TestClient[Any, Any], keys: Keys, settings: Settings, redis_client: redis.Redis
) -> None:
    body = {
        "metric_type": "revenue",
        "name": "subscription_payment",
        "value": 49.5,
        "tenant_id": "tenant-a",
        "labels": {"plan": "pro", "currency": "EUR", "kind": "new"},
        "user_id": "u-1",
    }
    resp = await client.post(f"{P}/record", json=body, headers=auth(keys.admin))
    assert resp.status == 202, await resp.text()
    answer = await resp.json()
    stream = settings.streams.metrics[0]
    assert answer["stream"] == stream
    entries = redis_client.xrange(stream)
    assert [e[0] for e in entries] == [answer["id"]]
    events, rejected = parse_entry(entries[0][0], entries[0][1])
    assert rejected == []
    (event,) = events
    assert (event.name, event.value, event.type, event.tenant, event.user) == (
        "subscription_payment",
        49.5,
        "revenue",
        "tenant-a",
        "u-1",
    )
    assert dict(event.labels) == {"plan": "pro", "currency": "EUR", "kind": "new"}
    assert abs(event.ts - time.time()) < 5


async def test_record_shards_by_tenant_like_the_sdk(
    aiohttp_client: Any, settings: Settings, keys: Keys, redis_client: redis.Redis
) -> None:
    sharded = dataclasses.replace(settings, stream_shards=4)
    client = await aiohttp_client(create_app(sharded, monitor=False))
    resp = await client.post(
        f"{P}/record", json={"name": "x", "value": 1, "tenant": "t-7"}, headers=auth(keys.admin)
    )
    answer = await resp.json()
    import zlib

    assert answer["stream"] == sharded.streams.metrics[zlib.crc32(b"t-7") % 4]
    assert redis_client.xlen(answer["stream"]) == 1


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"value": 1}, "name: missing"),
        ({"name": "x"}, "value: missing"),
        ({"name": "bad name", "value": 1}, "name:"),
        ({"name": "x", "value": "abc"}, "value:"),
        ({"name": "x", "value": 1, "type": "nonsense"}, "type:"),
        ({"name": "x", "value": 1, "labels": ["a"]}, "labels:"),
        ({"name": "x", "value": 1, "labels": {"k": 1}}, "labels:"),
        ({"name": "x", "value": 1, "ts": "yesterday"}, "ts:"),
        ({"name": "x", "value": 1, "color": "red"}, "unknown field 'color'"),
        ({"name": "x", "value": 1, "tenant": "a", "tenant_id": "b"}, "given twice"),
        ({"name": "x", "value": 1, "success": "maybe"}, "success"),
        ([1, 2], "expected a JSON object"),
    ],
)
async def test_record_refuses_bad_events_naming_the_field(
    client: TestClient[Any, Any],
    keys: Keys,
    settings: Settings,
    redis_client: redis.Redis,
    body: Any,
    fragment: str,
) -> None:
    resp = await client.post(f"{P}/record", json=body, headers=auth(keys.admin))
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert fragment in error["message"]
    assert redis_client.exists(settings.streams.metrics[0]) == 0


async def test_bodies_over_the_limit_get_413_and_bad_json_400(
    client: TestClient[Any, Any], keys: Keys
) -> None:
    big = b'{"name": "x", "value": 1, "labels": {"a": "' + b"x" * (2 * 1024 * 1024) + b'"}}'
    resp = await client.post(
        f"{P}/record",
        data=io.BytesIO(big),
        headers={**auth(keys.admin), "Content-Type": "application/json"},
    )
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "payload_too_large"
    resp = await client.post(
        f"{P}/record",
        data=b"{nope",
        headers={**auth(keys.admin), "Content-Type": "application/json"},
    )
    assert resp.status == 400
    assert "not valid JSON" in (await resp.json())["error"]["message"]


async def test_unknown_paths_and_methods_get_json_404_and_405(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/api/v1/nothing")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"
    resp = await client.delete(f"{P}/dashboard")
    assert resp.status == 405
    body = await resp.json()
    assert body["error"]["code"] == "method_not_allowed" and "GET" in body["error"]["message"]


async def test_health_is_503_until_pipeline_and_notifier_beat_then_200(
    client: TestClient[Any, Any], settings: Settings, redis_client: redis.Redis
) -> None:
    resp = await client.get(f"{P}/health")
    assert resp.status == 503
    body = await resp.json()
    assert body["checks"]["redis"]["ok"] and body["checks"]["database"]["ok"]
    assert not body["checks"]["pipeline"]["ok"]
    assert body["checks"]["rules"]["ok"], body["checks"]["rules"]
    now = time.time()
    redis_client.hset(
        settings.streams.key("health", "pipeline"),
        mapping={"heartbeat": now, "lag_entries": 3, "events_total": 10},
    )
    redis_client.hset(settings.streams.key("health", "notifier"), mapping={"heartbeat": now})
    for method in (client.get, client.post):
        resp = await method(f"{P}/health")
        assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["status"] == "healthy" and body["checks"]["pipeline"]["lag_entries"] == 3
    redis_client.hset(settings.streams.key("health", "pipeline"), "heartbeat", now - 120)
    resp = await client.get(f"{P}/health")
    assert resp.status == 503
    assert "old" in (await resp.json())["checks"]["pipeline"]["error"]


async def test_health_reports_rule_file_errors(
    aiohttp_client: Any, settings: Settings, redis_client: redis.Redis, tmp_path: Any
) -> None:
    (tmp_path / "broken.yaml").write_text("id: x\nseverity: loud\n")
    client = await aiohttp_client(
        create_app(dataclasses.replace(settings, rules_dir=tmp_path), monitor=False)
    )
    body = await (await client.get(f"{P}/health")).json()
    rules = body["checks"]["rules"]
    assert not rules["ok"] and any("broken.yaml" in e for e in rules["errors"])


async def test_database_down_gives_503_with_json_not_a_stack_trace(
    aiohttp_client: Any, settings: Settings, keys: Keys
) -> None:
    down = dataclasses.replace(settings, database_url="postgresql://postgres@127.0.0.1:9/nothing")
    client = await aiohttp_client(create_app(down, monitor=False))
    health = await client.get(f"{P}/health")
    assert health.status == 503
    assert not (await health.json())["checks"]["database"]["ok"]
    resp = await client.get(f"{P}/dashboard", headers=auth(keys.admin))
    assert resp.status == 503
    body = await resp.json()
    assert body["error"]["code"] == "unavailable" and "Traceback" not in await resp.text()
