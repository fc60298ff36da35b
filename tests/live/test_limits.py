"""Live subscribers are bounded per API key (``API_LIVE_STREAMS_PER_KEY``, issue 15 item 9)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from api.live import LIVE_HUB
from qesmon.settings import Settings
from tests.live.conftest import Keys, auth, open_stream

STREAM = "/api/v1/metrics/stream"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Two streams per key, so that the third is the one refused."""
    return dataclasses.replace(
        settings, api=dataclasses.replace(settings.api, live_streams_per_key=2)
    )


async def test_a_key_past_its_live_stream_limit_gets_429_and_others_are_not_affected(
    client: TestClient[Any, Any], keys: Keys
) -> None:
    first = await open_stream(client, keys.viewer)
    second = await open_stream(client, keys.viewer, service="archive")
    r = await client.get(STREAM, headers=auth(keys.viewer))
    assert r.status == 429
    assert r.headers["Content-Type"].startswith("application/json")
    error = (await r.json())["error"]
    assert error["code"] == "too_many_streams"
    assert "at most 2" in error["message"] and "API_LIVE_STREAMS_PER_KEY" in error["message"]
    assert client.app[LIVE_HUB].refused_total == 1
    # another key has its own allowance, and the open streams go on
    other = await open_stream(client, keys.tenant_a)
    assert (await other.next())[0] == "history"
    assert (await first.snapshot_where(lambda s: True))["stale"] in (True, False)
    await second.snapshot_where(lambda s: True)

    # a stream that ends gives its slot back
    first.response.close()
    deadline = time.monotonic() + 5.0
    while True:
        r = await client.get(STREAM, headers=auth(keys.viewer))
        if r.status == 200:
            break
        assert r.status == 429
        r.close()
        assert time.monotonic() < deadline, "the closed stream's slot was never freed"
        await asyncio.sleep(0.05)
    r.close()


async def test_the_session_cookie_counts_against_the_same_key(
    client: TestClient[Any, Any], keys: Keys
) -> None:
    assert (await client.post("/live/session", json={"key": keys.viewer})).status == 200
    await open_stream(client)  # the cookie
    await open_stream(client, keys.viewer)  # the header, same key
    r = await client.get(STREAM)
    assert r.status == 429
    assert (await r.json())["error"]["code"] == "too_many_streams"
