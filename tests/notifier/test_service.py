"""The notifier end to end: stream -> outbox -> loopback receivers, with a fake clock."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis.asyncio
from psycopg_pool import AsyncConnectionPool

from notifier import actions, outbox, store
from notifier.clock import FakeClock, SystemClock
from notifier.service import Notifier
from qesmon.alerts import AlertState
from qesmon.settings import Settings
from tests.notifier.conftest import (
    Answer,
    Receiver,
    configure,
    push,
    rows,
    running,
    transition,
    wait_for,
    write_policy,
)
from tests.support.settings import replace_settings

WEBHOOK_ONLY = """
routing:
  defaults: {channels: [webhook], group_wait: 0s, repeat_interval: 10m}
"""


class Polls:
    """Counts the notifier's polls — timer checks (``timers``) and delivery claims per channel
    — so that a test asserting that nothing was sent can first wait until the notifier has
    looked again, instead of sleeping and assuming it did."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.begun: Counter[str] = Counter()
        claim, fire_due_timers = outbox.claim, store.fire_due_timers

        async def counting_claim(pool: Any, channel: str, **kwargs: Any) -> Any:
            self.begun[channel] += 1
            return await claim(pool, channel, **kwargs)

        async def counting_fire(conn: Any, **kwargs: Any) -> Any:
            self.begun["timers"] += 1
            return await fire_due_timers(conn, **kwargs)

        monkeypatch.setattr(outbox, "claim", counting_claim)
        monkeypatch.setattr(store, "fire_due_timers", counting_fire)

    async def looked_again(self, *loops: str) -> None:
        """Wait, loop after loop, until each has begun two polls since this call: the first
        of them saw the state as it is now, and the second began only once the first had
        finished, sends included. So a timer that wrongly fired has enqueued its message
        before the delivery loops are counted, and that message is out when they are."""
        for loop in loops:
            target = self.begun[loop] + 2
            await wait_for(
                lambda loop=loop, target=target: self.begun[loop] >= target,  # type: ignore[misc]
                what=f"two more {loop} polls",
            )


@pytest.fixture
def polls(monkeypatch: pytest.MonkeyPatch) -> Polls:
    return Polls(monkeypatch)


async def settled(pool: AsyncConnectionPool[Any]) -> bool:
    """No notification is left to send or retry (every outbox row is sent or failed)."""
    return not await rows(pool, "SELECT 1 FROM notifier_outbox WHERE status = 'pending'")


async def health(aredis: redis.asyncio.Redis, settings: Settings) -> dict[str, str]:
    return dict(await aredis.hgetall(settings.streams.key("health", "notifier")))  # type: ignore[misc]


async def test_a_firing_transition_read_twice_is_delivered_once(
    nsettings: Settings,
    pool: AsyncConnectionPool[Any],
    receiver: Receiver,
    aredis: redis.asyncio.Redis,
) -> None:
    write_policy(nsettings, WEBHOOK_ONLY)
    await configure(pool, "webhook", {"url": receiver.url + "/hook"})
    t = transition()
    async with running(nsettings):
        await push(aredis, nsettings, t)
        await push(aredis, nsettings, t)  # the rule engine writes at least once
        await wait_for(lambda: len(receiver.requests) == 1, what="the firing message")
        await wait_for(lambda: _pending_zero(aredis, nsettings), what="both entries acked")
        await wait_for(lambda: _counter(aredis, nsettings, "duplicates", 1), what="health")
    assert len(receiver.requests) == 1
    body = receiver.requests[0].json()
    assert body["status"] == "firing" and body["version"] == "4"
    assert body["alerts"][0]["labels"]["alertname"] == "High error rate"
    assert body["alerts"][0]["fingerprint"] == "fp1"
    delivered = await rows(
        pool, "SELECT channel, status, attempt, http_status, alert_id FROM deliveries"
    )
    alert_id = (await rows(pool, "SELECT id FROM alerts WHERE fingerprint = 'fp1'"))[0][0]
    assert delivered == [("webhook", "sent", 1, 200, alert_id)]


async def _pending_zero(aredis: redis.asyncio.Redis, settings: Settings) -> bool:
    info = await aredis.xpending(settings.streams.alerts, "notifier")
    return int(info["pending"]) == 0


async def _counter(aredis: redis.asyncio.Redis, settings: Settings, name: str, want: int) -> bool:
    return int((await health(aredis, settings)).get(name, 0)) >= want


async def test_alerts_that_fire_together_go_out_in_one_message_after_group_wait(
    nsettings: Settings,
    pool: AsyncConnectionPool[Any],
    receiver: Receiver,
    aredis: redis.asyncio.Redis,
    polls: Polls,
) -> None:
    write_policy(
        nsettings,
        """
routing:
  defaults: {channels: [webhook], group_wait: 30s, group_by: [rule_id]}
""",
    )
    await configure(pool, "webhook", {"url": receiver.url})
    clock = FakeClock()
    async with running(nsettings, clock):
        for i in range(3):
            await push(aredis, nsettings, transition(f"fp{i}", labels={"endpoint": f"/e{i}"}))
        await push(aredis, nsettings, transition("other", rule_id="slow_requests"))

        async def queued() -> bool:
            return len(await rows(pool, "SELECT 1 FROM notifier_outbox")) == 4

        await wait_for(queued, what="four outbox rows")
        await polls.looked_again("webhook")  # due rows would be out: group_wait holds them
        assert receiver.requests == []
        clock.advance(31)
        await wait_for(lambda: len(receiver.requests) == 2, what="two group messages")
    by_size = sorted(receiver.bodies(), key=lambda b: len(b["alerts"]))
    assert [len(b["alerts"]) for b in by_size] == [1, 3]
    assert by_size[1]["groupLabels"] == {"rule_id": "high_error_rate"}
    assert by_size[1]["commonLabels"]["alertname"] == "High error rate"
    assert sorted(a["labels"]["endpoint"] for a in by_size[1]["alerts"]) == ["/e0", "/e1", "/e2"]


async def test_an_alert_that_keeps_firing_is_repeated_every_repeat_interval_only(
    nsettings: Settings,
    pool: AsyncConnectionPool[Any],
    receiver: Receiver,
    aredis: redis.asyncio.Redis,
    polls: Polls,
) -> None:
    write_policy(nsettings, WEBHOOK_ONLY)
    await configure(pool, "webhook", {"url": receiver.url, "format": "qesmon"})
    clock = FakeClock()
    async with running(nsettings, clock):
        await push(aredis, nsettings, transition())
        await wait_for(lambda: len(receiver.requests) == 1, what="first notice")
        # the same alert firing again (another window) within the interval is deduped
        await push(aredis, nsettings, transition(at=1_700_000_060.0))
        await wait_for(lambda: _counter(aredis, nsettings, "deduped", 1), what="dedup")
        clock.advance(599)
        await polls.looked_again("timers", "webhook")
        assert len(receiver.requests) == 1
        clock.advance(2)
        await wait_for(lambda: len(receiver.requests) == 2, what="repeat notice")
        clock.advance(600)
        await wait_for(lambda: len(receiver.requests) == 3, what="second repeat")
    first, repeat, _ = receiver.bodies()
    assert first["event"] == "firing" and first["message"].startswith("Firing: High error rate")
    assert repeat["event"] == "repeat" and repeat["message"].startswith("Still firing")


ESCALATION = """
routing:
  defaults: {channels: [], group_wait: 0s, repeat_interval: 0s}
  routes:
    - match: {severity: critical}
      escalation: critical-default
escalation_policies:
  critical-default:
    levels:
      - {after: 0s, channels: [slack]}
      - {after: 5m, channels: [sms]}
      - {after: 15m, channels: [pagerduty]}
"""


async def _escalation_setup(
    pool: AsyncConnectionPool[Any], slack: Receiver, sms: Receiver, pd: Receiver
) -> None:
    await configure(pool, "slack", {"webhook_url": slack.url + "/services/T/B/secret"})
    await configure(
        pool,
        "sms",
        {
            "account_sid": "AC123",
            "auth_token": "tok-123456789",
            "from": "+15005550006",
            "to": ["+4915112345678"],
            "api_url": sms.url,
        },
    )
    await configure(
        pool, "pagerduty", {"routing_key": "r" * 32, "events_url": pd.url + "/v2/enqueue"}
    )
    sms.default = Answer(201, body=b'{"sid": "SM1", "status": "queued"}')
    pd.default = Answer(202, body=b'{"status": "success", "dedup_key": "x"}')


async def test_escalation_reaches_sms_then_pagerduty_and_ack_and_resolve_follow(
    nsettings: Settings,
    pool: AsyncConnectionPool[Any],
    receiver: Receiver,
    aredis: redis.asyncio.Redis,
    polls: Polls,
) -> None:
    sms, pd = Receiver(), Receiver()
    await sms.start()
    await pd.start()
    try:
        write_policy(nsettings, ESCALATION)
        await _escalation_setup(pool, receiver, sms, pd)
        clock = FakeClock()
        async with running(nsettings, clock):
            await push(aredis, nsettings, transition(at=clock.now()))
            await wait_for(lambda: len(receiver.requests) == 1, what="slack firing")
            clock.advance(299)
            await polls.looked_again("timers", "sms")
            assert sms.requests == []
            clock.advance(2)
            await wait_for(lambda: len(sms.requests) == 1, what="sms escalation")
            assert "Escalated to level 1" in sms.requests[0].form()["Body"]
            clock.advance(600)
            await wait_for(lambda: len(pd.requests) == 1, what="pagerduty trigger")
            trigger = pd.requests[0].json()
            assert trigger["event_action"] == "trigger"
            alert_id = (await rows(pool, "SELECT id FROM alerts"))[0][0]
            result = await actions.acknowledge_alert(
                pool, nsettings, alert_id, "alice", clock=clock
            )
            assert result["acknowledged_by"] == "alice"
            assert sorted(result["notified"]) == ["pagerduty", "slack"]
            await wait_for(lambda: len(pd.requests) == 2, what="pagerduty acknowledge")
            assert pd.requests[1].json() == {
                "routing_key": "r" * 32,
                "event_action": "acknowledge",
                "dedup_key": trigger["dedup_key"],
            }
            await wait_for(lambda: len(receiver.requests) == 2, what="slack ack notice")
            assert (
                "Acknowledged by alice" in receiver.requests[1].json()["blocks"][0]["text"]["text"]
            )
            await push(aredis, nsettings, transition(to=AlertState.RESOLVED, at=clock.now() + 1))
            await wait_for(
                lambda: (
                    len(pd.requests) == 3 and len(sms.requests) == 2 and len(receiver.requests) == 3
                ),
                what="resolved notices",
            )
        assert pd.requests[2].json()["event_action"] == "resolve"
        assert pd.requests[2].json()["dedup_key"] == trigger["dedup_key"]
        assert sms.requests[1].form()["Body"].startswith("Resolved")
        assert receiver.requests[2].json()["text"].startswith("[RESOLVED]")
    finally:
        await sms.stop()
        await pd.stop()


async def test_acknowledging_stops_escalation_and_repeats(
    nsettings: Settings,
    pool: AsyncConnectionPool[Any],
    receiver: Receiver,
    aredis: redis.asyncio.Redis,
    polls: Polls,
) -> None:
    sms, pd = Receiver(), Receiver()
    await sms.start()
    await pd.start()
    try:
        write_policy(nsettings, ESCALATION)
        await _escalation_setup(pool, receiver, sms, pd)
        clock = FakeClock()
        async with running(nsettings, clock):
            await push(aredis, nsettings, transition(at=clock.now()))
            await wait_for(lambda: len(receiver.requests) == 1, what="slack firing")
            alert_id = (await rows(pool, "SELECT id FROM alerts"))[0][0]
            result = await actions.acknowledge_alert(pool, nsettings, alert_id, "bob", clock=clock)
            assert result["escalation_stopped"] == 2
            clock.advance(3600)
            await wait_for(lambda: len(receiver.requests) == 2, what="ack notice")
            await polls.looked_again("timers", "sms", "pagerduty")
        assert sms.requests == [] and pd.requests == []
        timers = await rows(pool, "SELECT kind, status FROM notifier_timers ORDER BY level")
        assert timers == [("escalate", "cancelled"), ("escalate", "cancelled")]
    finally:
        await sms.stop()
        await pd.stop()


async def test_a_receiver_down_for_a_while_gets_every_notification_exactly_once(
    nsettings: Settings,
    pool: AsyncConnectionPool[Any],
    receiver: Receiver,
    aredis: redis.asyncio.Redis,
) -> None:
    write_policy(
        nsettings,
        """
routing:
  defaults: {channels: [webhook], group_wait: 0s, group_by: [fingerprint]}
""",
    )
    await configure(pool, "webhook", {"url": receiver.url, "timeout": 1})
    # 503s, one request that never gets an answer (the client gives up), then 502s
    receiver.answers = [Answer(503)] * 12 + [Answer(504, hang=True)] + [Answer(502)] * 3
    async with running(nsettings, SystemClock()):
        for i in range(5):
            await push(aredis, nsettings, transition(f"fp{i}"))
        await wait_for(
            lambda: len({r.json()["alerts"][0]["fingerprint"] for r in receiver.accepted()}) == 5,
            timeout=30,
            what="all five after the outage",
        )
        await wait_for(lambda: settled(pool), what="no notification left to send")
    delivered = Counter(r.json()["alerts"][0]["fingerprint"] for r in receiver.accepted())
    assert delivered == {f"fp{i}": 1 for i in range(5)}
    statuses = Counter(s for (s,) in await rows(pool, "SELECT status FROM deliveries"))
    assert statuses["sent"] == 5 and statuses["retrying"] >= 15
    errors = await rows(
        pool,
        "SELECT http_status, error FROM deliveries"
        " WHERE status = 'retrying' AND http_status IS NOT NULL LIMIT 1",
    )
    assert errors[0][0] in (502, 503) and errors[0][1].startswith("webhook: HTTP 50")
    timeouts = await rows(pool, "SELECT error FROM deliveries WHERE http_status IS NULL")
    assert timeouts == [("webhook: no answer within 1 s",)]


async def test_429_waits_for_retry_after_and_other_4xx_is_not_retried(
    nsettings: Settings,
    pool: AsyncConnectionPool[Any],
    receiver: Receiver,
    aredis: redis.asyncio.Redis,
) -> None:
    write_policy(
        nsettings,
        """
routing:
  defaults: {channels: [slack], group_wait: 0s, group_by: [fingerprint]}
""",
    )
    await configure(
        pool, "slack", {"webhook_url": receiver.url + "/services/T/B/s3cr3tXYZ", "timeout": 2}
    )
    receiver.answers = [
        Answer(429, {"Retry-After": "1"}, b'{"ok":false}'),
        Answer(200, body=b"ok"),
        Answer(404, body=b"no_service"),
    ]
    async with running(nsettings, SystemClock()):
        await push(aredis, nsettings, transition("limited"))
        await wait_for(lambda: len(receiver.requests) == 2, what="retry after 429")
        await push(aredis, nsettings, transition("gone"))
        await wait_for(lambda: len(receiver.requests) == 3, what="the 404")

        async def failed() -> bool:
            return bool(await rows(pool, "SELECT 1 FROM deliveries WHERE status = 'failed'"))

        await wait_for(failed, what="the failure recorded")
        await wait_for(lambda: settled(pool), what="no notification left to send")
    assert receiver.requests[1].at - receiver.requests[0].at >= 0.95
    assert len(receiver.requests) == 3  # the 404 was not retried
    outbox = await rows(pool, "SELECT status, last_status FROM notifier_outbox ORDER BY id")
    assert outbox == [("sent", 200), ("failed", 404)]
    errors = [
        e for (e,) in await rows(pool, "SELECT error FROM deliveries WHERE error IS NOT NULL")
    ]
    assert all("s3cr3tXYZ" not in e for e in errors)


async def test_a_broken_template_falls_back_to_the_plain_message_and_is_counted(
    nsettings: Settings,
    pool: AsyncConnectionPool[Any],
    receiver: Receiver,
    aredis: redis.asyncio.Redis,
) -> None:
    write_policy(
        nsettings,
        """
routing:
  defaults: {channels: [slack], group_wait: 0s}
""",
    )
    broken = nsettings.rules_dir / "templates" / "broken" / "slack"
    broken.mkdir(parents=True)
    (broken / "firing.md.j2").write_text("{{ alert.no_such_field.x }} {{ ''.__class__ }}")
    await configure(pool, "slack", {"webhook_url": receiver.url + "/hook"})
    async with running(nsettings):
        await push(aredis, nsettings, transition(template="broken"))
        await wait_for(lambda: len(receiver.requests) == 1, what="the fallback message")
        await wait_for(
            lambda: _counter(aredis, nsettings, "template_errors", 1), what="template error counted"
        )
    text = receiver.requests[0].json()["blocks"][0]["text"]["text"]
    assert text.startswith("[FIRING] High error rate (critical)")
    assert "value=0.42 tenant=acme endpoint=/sign" in text


async def test_a_malformed_entry_goes_to_the_dead_stream_and_is_acknowledged(
    nsettings: Settings,
    pool: AsyncConnectionPool[Any],
    aredis: redis.asyncio.Redis,
) -> None:
    await configure(pool, "webhook", {"url": "http://127.0.0.1:9/"})
    async with running(nsettings):
        await aredis.xadd(nsettings.streams.alerts, {"fingerprint": "x", "severity": "loud"})
        dead = nsettings.streams.key("alerts", "dead")

        async def landed() -> bool:
            return int(await aredis.xlen(dead)) == 1

        await wait_for(landed, what="dead letter")
        await wait_for(lambda: _pending_zero(aredis, nsettings), what="ack")
    ((_, fields),) = await aredis.xrange(dead)
    assert fields["fingerprint"] == "x" and "malformed" in fields["error"]


class TcpProxy:
    """A loopback TCP proxy to a real server that can be switched off (refuse and cut)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.up = False
        self.links: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.links += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def stop(self) -> None:
        for w in self.links:
            w.close()
        self.server.close()
        await self.server.wait_closed()


async def test_the_notifier_rides_out_a_database_outage_and_delivers_afterwards(
    nsettings: Settings,
    receiver: Receiver,
    aredis: redis.asyncio.Redis,
) -> None:
    url = urlsplit(nsettings.database_url)
    proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 5432)
    port = await proxy.start()
    user = url.netloc.rpartition("@")[0]  # the credentials as given
    behind = url._replace(netloc=f"{user}@127.0.0.1:{port}").geturl()
    write_policy(nsettings, WEBHOOK_ONLY)
    down = replace_settings(nsettings, database_url=behind, channels=dict(webhook_url=receiver.url))
    notifier = Notifier(down, environ={}, poll_interval=0.05, db_timeout=0.5)
    task = asyncio.create_task(notifier.run())
    try:
        await push(aredis, nsettings, transition())
        await wait_for(lambda: notifier.counters["errors"] >= 3, what="outage noticed")
        assert not task.done() and receiver.requests == []
        proxy.up = True
        await wait_for(
            lambda: len(receiver.requests) == 1,
            timeout=40,
            what="delivery after the database came back",
        )
    finally:
        notifier.stop()
        await asyncio.wait_for(task, 15)
        await proxy.stop()
    assert receiver.requests[0].json()["alerts"][0]["fingerprint"] == "fp1"
