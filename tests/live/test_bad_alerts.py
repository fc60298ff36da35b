"""The live feed's alert task skips alert entries that do not parse and goes on (real Redis)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis
from aiohttp.test_utils import TestClient

from api.live import LIVE_HUB
from qesmon.alerts import AlertState, AlertTransition, Severity
from qesmon.settings import Settings
from tests.live.conftest import Keys, open_stream


def _firing(fingerprint: str) -> dict[bytes, bytes]:
    t = AlertTransition(
        fingerprint=fingerprint,
        rule_id="high_error_rate",
        rule_name="High error rate",
        severity=Severity.CRITICAL,
        from_state=AlertState.PENDING,
        to_state=AlertState.FIRING,
        at=time.time(),
        value=42.0,
        tenant="tenant-a",
        labels={"service": "signing"},
        annotations={"summary": "42 % of requests fail"},
    )
    return {k.encode(): v.encode() for k, v in t.to_fields().items()}


BAD: list[dict[bytes, bytes]] = [
    {**_firing("bad-utf8"), b"rule_id": b"\xff\xfe"},
    {b"\xc3(": b"1", b"fingerprint": b"x"},
    {**_firing("bad-labels"), b"labels": b"[1,2]"},
    {**_firing("bad-at"), b"at": b"nan"},
    {**_firing("bad-nul"), b"labels": b'{"service": "sig\\u0000ning"}'},
]


async def test_alert_entries_that_do_not_parse_are_skipped_and_the_next_good_one_shows(
    client: TestClient[Any, Any], keys: Keys, settings: Settings
) -> None:
    hub = client.app[LIVE_HUB]
    sse = await open_stream(client, keys.tenant_a)
    await sse.snapshot_where(lambda s: True)
    raw = redis.Redis.from_url(settings.redis_url)  # bytes in, bytes out
    try:
        # the hub starts reading from the stream's end: wait until it has read something
        raw.xadd(settings.streams.alerts, _firing("first"))  # type: ignore[arg-type]
        await sse.snapshot_where(lambda s: s["active_alerts"] == 1)
        for fields in BAD:
            raw.xadd(settings.streams.alerts, fields)  # type: ignore[arg-type]
        raw.xadd(settings.streams.alerts, _firing("after"))  # type: ignore[arg-type]
    finally:
        raw.close()
    s = await sse.snapshot_where(lambda s: s["active_alerts"] == 2)
    assert sorted(a["fingerprint"] for a in s["alerts"]) == ["after", "first"]
    assert hub.skipped_alerts == len(BAD)
    await asyncio.sleep(0)
    alerts_task = [t for t in hub._tasks if t.get_name() == "live-alerts"]
    assert len(alerts_task) == 1 and not alerts_task[0].done()
