"""The SSE endpoint against real Redis and TimescaleDB: auth, tenant scoping, filters, alerts,
revenue, fan-out over one subscription, slow clients, heartbeat and shutdown."""

from __future__ import annotations

import asyncio
import math
import socket
import time
from typing import Any

import psycopg
import pytest
import redis
from aiohttp.test_utils import TestClient

from api.live import COOKIE, LIVE_HUB, LiveConfig
from api.resources import KEY_CACHE
from pipeline.live import LivePublisher
from qesmon.alerts import AlertState, AlertTransition, Severity
from qesmon.settings import Settings
from tests.api.conftest import Ev, load_events
from tests.live.conftest import Event, Keys, auth, http, open_stream, windows

Db = psycopg.Connection[tuple[object, ...]]


# -- auth ------------------------------------------------------------------------------------


async def test_stream_without_a_key_or_with_a_bad_one_is_401(
    client: TestClient[Any, Any],
) -> None:
    r = await client.get("/api/v1/metrics/stream")
    assert r.status == 401
    assert (await r.json())["error"]["code"] == "missing_api_key"
    r = await client.get("/api/v1/metrics/stream", headers=auth("qes_nope"))
    assert r.status == 401
    r = await client.get("/api/v1/metrics/stream", cookies={COOKIE: "v1.1.99999999999.forged"})
    assert r.status == 401
    assert (await r.json())["error"]["code"] == "session_invalid"


async def test_login_sets_a_signed_httponly_cookie_that_opens_the_stream_and_never_holds_the_key(
    client: TestClient[Any, Any], keys: Keys
) -> None:
    r = await client.post("/live/session", json={"key": "qes_wrong"})
    assert r.status == 401
    r = await client.post("/live/session", json={"key": keys.tenant_a})
    assert r.status == 200
    assert await r.json() == {"role": "viewer", "tenant_id": "tenant-a", "name": ""}
    set_cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    assert keys.tenant_a not in set_cookie and keys.tenant_a[4:12] not in set_cookie
    r = await client.get("/live/session")
    assert (await r.json())["tenant_id"] == "tenant-a"
    sse = await open_stream(client)  # the cookie jar carries the session
    event, _ = await sse.next()
    assert event == "history"
    event, snapshot = await sse.next()
    assert event == "snapshot" and snapshot["tenant_id"] == "tenant-a"
    sse.response.close()
    # a tampered token is refused
    token = client.session.cookie_jar.filter_cookies(client.make_url("/"))[COOKIE].value
    kid, exp = token.split(".")[1:3]
    forged = token.replace(f"v1.{kid}.{exp}", f"v1.{kid}.{int(exp) + 1000}")
    r = await client.get("/live/session", cookies={COOKIE: forged})
    assert r.status == 401
    r = await client.delete("/live/session")
    assert r.status == 200
    assert (await client.get("/live/session")).status == 401


async def test_a_revoked_key_loses_its_session(
    client: TestClient[Any, Any], keys: Keys, db: Db
) -> None:
    client.app[KEY_CACHE].ttl = 0.0
    assert (await client.post("/live/session", json={"key": keys.viewer})).status == 200
    assert (await client.get("/live/session")).status == 200
    db.execute("UPDATE api_keys SET revoked_at = now()")
    r = await client.get("/api/v1/metrics/stream")
    assert r.status == 401
    assert "revoked" in (await r.json())["error"]["message"]


async def test_the_page_and_its_assets_are_served_without_any_external_reference(
    client: TestClient[Any, Any],
) -> None:
    r = await client.get("/live")
    assert r.status == 200
    html = await r.text()
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    for asset in ("live.js", "live.css", "chart.js"):
        assert f"/live/static/{asset}" in html
        body = await (await client.get(f"/live/static/{asset}")).text()
        assert "http://" not in body and "https://" not in body
    assert "http://" not in html and "https://" not in html


# -- scoping and filters ---------------------------------------------------------------------


async def test_a_tenant_key_sees_only_its_tenant_and_is_refused_another(
    client: TestClient[Any, Any], keys: Keys, publisher: LivePublisher
) -> None:
    r = await client.get(
        "/api/v1/metrics/stream", params={"tenant_id": "tenant-b"}, headers=auth(keys.tenant_a)
    )
    assert r.status == 403
    assert (await r.json())["error"]["code"] == "tenant_forbidden"
    mine = await open_stream(client, keys.tenant_a)
    everyone = await open_stream(client, keys.viewer)
    publisher.publish(windows([http("tenant-a")] * 3 + [http("tenant-b", ok=False)] * 7))
    a = await mine.snapshot_where(lambda s: s["requests"]["count"] > 0)
    assert a["requests"]["count"] == 3 and a["requests"]["error_pct"] == 0.0
    assert a["tenants"] == ["tenant-a"]
    both = await everyone.snapshot_where(lambda s: s["requests"]["count"] == 10)
    assert both["requests"]["error_pct"] == pytest.approx(70.0)
    assert both["tenants"] == ["tenant-a", "tenant-b"]
    # the rate is per second over the current and previous window
    now = both["at"]
    elapsed = now - (math.floor(now / 10) * 10 - 10)
    assert both["requests"]["rate"] == pytest.approx(10 / elapsed, rel=0.05)


async def test_service_filter_narrows_requests_and_p95_is_the_slowest_series(
    client: TestClient[Any, Any], keys: Keys, publisher: LivePublisher
) -> None:
    sse = await open_stream(client, keys.admin, service="archive")
    events = [http(service="signing", seconds=2.0)] * 5
    events += [http(service="archive", seconds=0.2, endpoint="/a")] * 4
    events += [http(service="archive", seconds=0.6, endpoint="/b")] * 2
    publisher.publish(windows(events))
    s = await sse.snapshot_where(lambda s: s["requests"]["count"] > 0)
    assert s["requests"]["count"] == 6
    assert s["requests"]["p95_s"] == pytest.approx(0.6)
    assert s["services"] == ["archive", "signing"]
    assert s["service"] == "archive"


async def test_unknown_query_parameters_are_rejected_by_name(
    client: TestClient[Any, Any], keys: Keys
) -> None:
    r = await client.get(
        "/api/v1/metrics/stream", params={"tenant": "x"}, headers=auth(keys.viewer)
    )
    assert r.status == 400
    assert "tenant" in (await r.json())["error"]["message"]


# -- alerts ----------------------------------------------------------------------------------


def _transition(
    to: AlertState, tenant: str = "tenant-a", service: str = "signing", fingerprint: str = "fp-1"
) -> AlertTransition:
    return AlertTransition(
        fingerprint=fingerprint,
        rule_id="high_error_rate",
        rule_name="High error rate",
        severity=Severity.CRITICAL,
        from_state=AlertState.PENDING if to != AlertState.PENDING else AlertState.INACTIVE,
        to_state=to,
        at=time.time(),
        value=42.0,
        tenant=tenant,
        labels={"service": service, "endpoint": "/sign"},
        annotations={"summary": "42 % of requests fail"},
    )


async def _hub_reads_alerts(sse: Any, redis_client: redis.Redis, stream: str) -> None:
    """Return once the hub reads the alert stream: it starts reading at the stream's end, so
    a probe alert is repeated until it shows, then resolved (a fixed sleep only guessed)."""
    probe = _transition(AlertState.FIRING, fingerprint="fp-probe").to_fields()
    deadline = time.monotonic() + 10
    while True:
        redis_client.xadd(stream, probe)  # type: ignore[arg-type]
        try:
            await sse.snapshot_where(lambda s: s["active_alerts"] > 0, timeout=0.5)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
    resolved = _transition(AlertState.RESOLVED, fingerprint="fp-probe").to_fields()
    redis_client.xadd(stream, resolved)  # type: ignore[arg-type]
    await sse.snapshot_where(lambda s: s["active_alerts"] == 0)


async def test_alerts_appear_and_clear_live_from_the_alert_stream_with_filters(
    client: TestClient[Any, Any], keys: Keys, settings: Settings, redis_client: redis.Redis
) -> None:
    mine = await open_stream(client, keys.tenant_a)
    other_service = await open_stream(client, keys.viewer, service="archive")
    await mine.snapshot_where(lambda s: True)
    stream = settings.streams.alerts
    await _hub_reads_alerts(mine, redis_client, stream)
    redis_client.xadd(stream, _transition(AlertState.FIRING).to_fields())  # type: ignore[arg-type]
    redis_client.xadd(
        stream,
        _transition(AlertState.FIRING, tenant="tenant-b", fingerprint="fp-b").to_fields(),  # type: ignore[arg-type]
    )
    s = await mine.snapshot_where(lambda s: s["active_alerts"] > 0)
    assert [a["fingerprint"] for a in s["alerts"]] == ["fp-1"]
    assert s["alerts"][0]["summary"] == "42 % of requests fail"
    assert s["alerts"][0]["state"] == "firing"
    o = await other_service.snapshot_where(lambda s: True)
    assert o["active_alerts"] == 0
    redis_client.xadd(stream, _transition(AlertState.RESOLVED).to_fields())  # type: ignore[arg-type]
    await mine.snapshot_where(lambda s: s["active_alerts"] == 0)


async def test_open_alerts_in_the_table_are_shown_and_a_manual_resolve_clears_them(
    client: TestClient[Any, Any], keys: Keys, db: Db
) -> None:
    db.execute(
        "INSERT INTO alerts (fingerprint, rule_id, rule_name, severity, state, tenant_id, "
        "labels, annotations, value, started_at, fired_at) VALUES ('fp-db', 'slow', "
        "'Slow responses', 'warning', 'firing', 'tenant-a', '{\"service\": \"signing\"}', "
        '\'{"summary": "p95 at 3 s"}\', 3.0, now(), now())'
    )
    sse = await open_stream(client, keys.viewer)
    s = await sse.snapshot_where(lambda s: s["active_alerts"] == 1)
    assert s["alerts"][0]["rule_name"] == "Slow responses"
    db.execute("UPDATE alerts SET state = 'resolved', resolved_at = now()")
    await sse.snapshot_where(lambda s: s["active_alerts"] == 0, timeout=5)


# -- revenue today -----------------------------------------------------------------------------


async def test_revenue_today_is_closed_rollups_plus_live_windows_per_currency(
    client: TestClient[Any, Any], keys: Keys, settings: Settings, publisher: LivePublisher
) -> None:
    now = time.time()
    day_start = math.floor(now / 86400) * 86400
    closed_ts = max(day_start + 1, now - 600)
    yesterday = day_start - 100
    load_events(
        settings,
        [
            Ev(
                "subscription_payment",
                "revenue",
                closed_ts,
                29.0,
                "tenant-a",
                labels={"currency": "EUR", "plan": "pro", "kind": "new"},
            ),
            Ev(
                "subscription_payment",
                "revenue",
                closed_ts,
                10.0,
                "tenant-b",
                labels={"currency": "USD", "plan": "pro", "kind": "new"},
            ),
            Ev(
                "subscription_payment",
                "revenue",
                yesterday,
                1000.0,
                "tenant-a",
                labels={"currency": "EUR", "plan": "pro", "kind": "new"},
            ),
        ],
    )
    sse = await open_stream(client, keys.viewer)
    mine = await open_stream(client, keys.tenant_a)
    pay = Event(
        "subscription_payment",
        9.0,
        "tenant-a",
        (("currency", "EUR"), ("kind", "recurring"), ("plan", "basic")),
        type="revenue",
    )
    publisher.publish(windows([pay, pay]))
    expected_eur = 29.0 + 18.0 if closed_ts < now - 60 else 18.0
    s = await sse.snapshot_where(lambda s: s["revenue_today"].get("EUR") == expected_eur)
    if closed_ts < now - 60:
        assert s["revenue_today"] == {"EUR": 47.0, "USD": 10.0}
    m = await mine.snapshot_where(lambda s: s["revenue_today"].get("EUR") == expected_eur)
    assert "USD" not in m["revenue_today"]


# -- fan-out, slow clients, heartbeat, shutdown ------------------------------------------------


async def test_all_subscribers_share_one_redis_subscription(
    client: TestClient[Any, Any],
    keys: Keys,
    settings: Settings,
    redis_client: redis.Redis,
    publisher: LivePublisher,
) -> None:
    streams = [await open_stream(client, keys.viewer, service=f"s{i % 2}") for i in range(5)]
    channel = settings.streams.key("live")
    assert dict(redis_client.pubsub_numsub(channel))[channel] == 1
    publisher.publish(windows([http(service="s1")]))
    for i, sse in enumerate(streams):
        expected = 1 if i % 2 else 0
        await sse.snapshot_where(
            lambda s, n=expected: bool(s["services"]) and s["requests"]["count"] == n
        )
    assert len(client.app[LIVE_HUB].subscribers) == 5


# small buffers and queues so that a client that stops reading is found out fast
SMALL = LiveConfig(tick=0.02, queue_size=8, send_buffer=4096, alert_resync=5, revenue_refresh=5)


@pytest.mark.parametrize("live_config", [SMALL])
async def test_a_client_that_stops_reading_is_dropped_and_never_slows_the_others(
    client: TestClient[Any, Any], keys: Keys, publisher: LivePublisher
) -> None:
    hub = client.app[LIVE_HUB]
    # many tenants make each snapshot a few kB
    publisher.publish(windows([http(f"tenant-{i:03d}") for i in range(150)]))
    fast = await open_stream(client, keys.viewer)
    await fast.snapshot_where(lambda s: len(s["tenants"]) == 150)
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(slow, (client.server.host, client.server.port))
    request = (
        f"GET /api/v1/metrics/stream HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {keys.viewer}\r\n\r\n"
    )
    await loop.sock_sendall(slow, request.encode())
    try:
        deadline = time.monotonic() + 20
        gaps: list[float] = []
        last = time.monotonic()
        while hub.dropped_total == 0:
            assert time.monotonic() < deadline, "the stalled client was never dropped"
            await fast.snapshot_where(lambda s: True)
            gaps.append(time.monotonic() - last)
            last = time.monotonic()
        assert len(hub.subscribers) == 1
        # the reader kept getting every tick while the other one stalled
        assert max(gaps) < 0.5, f"the fast client waited {max(gaps):.2f} s"
        for _ in range(10):
            await fast.snapshot_where(lambda s: True, timeout=1)
    finally:
        slow.close()


@pytest.mark.parametrize("live_config", [LiveConfig(tick=60.0, heartbeat=0.2)])
async def test_a_heartbeat_comes_when_there_is_nothing_to_send(
    client: TestClient[Any, Any], keys: Keys
) -> None:
    sse = await open_stream(client, keys.viewer)
    assert (await sse.next())[0] == "history"
    assert (await sse.next())[0] == "snapshot"
    with pytest.raises(TimeoutError):  # the next tick is a minute away
        await sse.next(timeout=0.7)
    assert sse.comments.count(": heartbeat") >= 2


async def test_shutdown_ends_open_streams_at_once(client: TestClient[Any, Any], keys: Keys) -> None:
    sse = await open_stream(client, keys.viewer)
    await sse.next()
    started = time.monotonic()
    closing = asyncio.create_task(client.server.close())
    with pytest.raises(EOFError):
        while True:
            await sse.next(timeout=5)
    await closing
    assert time.monotonic() - started < 3
