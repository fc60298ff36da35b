"""The API's side of issue 13: /record and the SDK refuse what the pipeline refuses, with the
same words, and health and the exporter say when a limit was hit or the database refused."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestClient

from api.exporter import EXPORTER, create_exporter_app
from qesmon.contract import parse_entry
from qesmon.errors import ContractError
from qesmon.sdk import MetricType
from qesmon.sdk.events import metric_event
from qesmon.settings import Settings
from tests.api.conftest import Keys, auth
from tests.api.test_exporter import samples

P = "/api/v1/metrics"

# (labels, tenant, user) that break the contract, and the words every boundary uses
HOSTILE = [
    ({"a": "x\u0000y"}, None, None, "contains a control character"),
    ({"a": "\u0085"}, None, None, "contains a control character"),
    (None, "t\u0000", None, "tenant: contains control"),
    (None, None, "u\u2028", "user: contains control"),
]


@pytest.mark.parametrize(("labels", "tenant", "user", "words"), HOSTILE)
async def test_record_sdk_and_pipeline_refuse_the_same_input_with_the_same_words(
    client: TestClient[Any, Any],
    keys: Keys,
    settings: Settings,
    redis_client: redis.Redis,
    labels: dict[str, str] | None,
    tenant: str | None,
    user: str | None,
    words: str,
) -> None:
    body: dict[str, Any] = {"name": "x", "value": 1}
    if labels is not None:
        body["labels"] = labels
    if tenant is not None:
        body["tenant"] = tenant
    if user is not None:
        body["user"] = user
    resp = await client.post(f"{P}/record", json=body, headers=auth(keys.admin))
    assert resp.status == 400, await resp.text()
    api_message = (await resp.json())["error"]["message"]
    assert words in api_message
    assert redis_client.xlen(settings.streams.metrics[0]) == 0  # nothing reached the stream
    with pytest.raises(ContractError) as sdk:
        metric_event(MetricType.CUSTOM, "x", 1, labels, tenant_id=tenant, user_id=user)
    assert words in str(sdk.value)
    fields = {k: str(v) for k, v in body.items() if k != "labels"}
    if labels is not None:
        fields["labels"] = orjson.dumps(labels).decode()
    _, (rejection,) = parse_entry("1700000000000-0", fields)
    assert words in rejection.error


async def test_health_and_exporter_say_when_a_limit_was_hit_or_the_database_refused(
    aiohttp_client: Any, app: web.Application, settings: Settings, redis_client: redis.Redis
) -> None:
    key = settings.streams.key("health", "pipeline")
    redis_client.hset(
        key,
        mapping={
            "heartbeat": repr(time.time()),
            "limited_events_total": "198000",
            "alert_groups_limited_total": "3",
            "db_refused_total": "6",
            "active_series": "2000.0",
            "last_limit": "limit: tenant 'noisy' already has 2000 active series",
        },
    )
    api = await aiohttp_client(app)
    resp = await api.get(f"{P}/health")
    pipeline = (await resp.json())["checks"]["pipeline"]
    assert pipeline["limited_events_total"] == 198000
    assert pipeline["db_refused_total"] == 6
    assert pipeline["last_limit"].startswith("limit: tenant 'noisy'")
    exporter = app[EXPORTER]
    await exporter.refresh()
    scraped = await (await aiohttp_client(create_exporter_app(app))).get("/metrics")
    got = samples(await scraped.text())
    assert got[("qes_pipeline_limited_events_total", ())] == 198000
    assert got[("qes_pipeline_alert_groups_limited_total", ())] == 3
    assert got[("qes_pipeline_db_refused_total", ())] == 6
    assert got[("qes_pipeline_active_series", ())] == 2000
