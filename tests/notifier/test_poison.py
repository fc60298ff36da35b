"""Bad entries in the alerts stream and refused rows never stop the notifier (real Redis,
TimescaleDB and a loopback webhook receiver).

Hostile entries are written as raw bytes (a client without decode_responses); every good
alert around them must be delivered, every bad one parked in ``<prefix>:alerts:dead`` with its
reason and original bytes, and nothing left pending in the consumer group.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import psycopg
import pytest
import redis.asyncio
from psycopg_pool import AsyncConnectionPool

from notifier import store
from qesmon import deadletter
from qesmon.alerts import AlertTransition
from qesmon.settings import Settings
from tests.notifier.conftest import (
    Answer,
    Receiver,
    configure,
    rows,
    running,
    transition,
    wait_for,
    write_policy,
)
from tests.support.settings import replace_settings

WEBHOOK_ONLY = """
routing:
  defaults: {channels: [webhook], group_wait: 0s, repeat_interval: 0s, group_by: [fingerprint]}
"""


@pytest.fixture
async def raw(settings: Settings) -> AsyncIterator[redis.asyncio.Redis]:
    """A Redis client that writes and reads bytes as they are."""
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    yield client
    await client.aclose()


def as_bytes(t: AlertTransition, **changes: bytes | None) -> dict[bytes, bytes]:
    fields = {k.encode(): v.encode() for k, v in t.to_fields().items()}
    for key, value in changes.items():
        if value is None:
            del fields[key.encode()]
        else:
            fields[key.encode()] = value
    return fields


def hostile() -> list[dict[bytes, bytes]]:
    """One entry per way of breaking the alert entry format."""
    bad = transition("bad")
    return [
        {**as_bytes(bad), b"\xff\xfekey": b"1"},  # a key that is not UTF-8
        as_bytes(bad, rule_name=b"High \xc3\x28 rate"),  # a value that is not UTF-8
        as_bytes(bad, labels=b"[1,2]"),
        as_bytes(bad, labels=b'{"a": 1}'),
        {b"fingerprint": b"only-this"},  # missing fields
        as_bytes(bad, at=b"nan"),
        as_bytes(bad, labels=b'{"endpoint": "/si\\u0000gn"}'),  # NUL inside a label value
        as_bytes(bad, annotations=b'{"summary": "' + b"x" * (1 << 20) + b'"}'),  # 1 MB field
    ]


async def dead_letters(
    raw: redis.asyncio.Redis, settings: Settings
) -> list[tuple[str, dict[str, str]]]:
    entries: Any = await raw.xrange(settings.streams.key("alerts", "dead"))
    return [(i.decode(), {k.decode(): v.decode() for k, v in f.items()}) for i, f in entries]


async def pending(raw: redis.asyncio.Redis, settings: Settings) -> int:
    info: Any = await raw.xpending(settings.streams.alerts, "notifier")
    return int(info["pending"])


def delivered(receiver: Receiver) -> set[str]:
    return {a["fingerprint"] for body in receiver.bodies() for a in body["alerts"]}


def original_fields(letter: dict[str, str]) -> dict[bytes, bytes]:
    meta = deadletter.META
    return {
        deadletter.original(k.removeprefix("orig:")): deadletter.original(v)
        for k, v in letter.items()
        if k not in meta
    }


async def test_hostile_entries_between_good_ones_are_parked_and_every_good_alert_is_delivered(
    nsettings: Settings,
    pool: AsyncConnectionPool[Any],
    receiver: Receiver,
    raw: redis.asyncio.Redis,
) -> None:
    write_policy(nsettings, WEBHOOK_ONLY)
    await configure(pool, "webhook", {"url": receiver.url + "/hook"})
    bad = hostile()
    ids: dict[str, dict[bytes, bytes]] = {}
    good: list[str] = []
    async with running(nsettings):
        # half before the notifier's first read (one batch), half while it runs
        for i, fields in enumerate(bad):
            good.append(f"good{i}")
            await raw.xadd(nsettings.streams.alerts, as_bytes(transition(good[-1])))  # type: ignore[arg-type]
            entry_id = await raw.xadd(nsettings.streams.alerts, fields)  # type: ignore[arg-type]
            ids[entry_id.decode()] = fields
        good.append("last")
        await raw.xadd(nsettings.streams.alerts, as_bytes(transition("last")))  # type: ignore[arg-type]
        await wait_for(lambda: delivered(receiver) == set(good), what="every good alert")

        async def all_parked() -> bool:
            return len(await dead_letters(raw, nsettings)) == len(bad)

        await wait_for(all_parked, what="every bad entry parked")
        await wait_for(lambda: _zero(raw, nsettings), what="an empty PEL")
    counted = await health(raw, nsettings)  # written when it stops
    assert counted.get("malformed") == str(len(bad)) and "errors" not in counted
    letters = dict(await dead_letters(raw, nsettings))
    assert {letter["source_id"] for letter in letters.values()} == set(ids)
    for letter in letters.values():
        sent = ids[letter["source_id"]]
        assert letter["kind"] == "invalid"
        assert letter["error"].startswith("malformed alert entry: ")
        if "truncated" in letter:  # the 1 MB entry: an excerpt, the length and the hash
            cut = orjson.loads(letter["truncated"])["fields"]["annotations"]
            assert cut["bytes"] == len(sent[b"annotations"])
            assert cut["sha256"] == hashlib.sha256(sent[b"annotations"]).hexdigest()
            assert len(orjson.dumps(letter)) <= deadletter.MAX_LETTER_BYTES + 1024
            assert "annotations: 1048" in letter["error"]
            continue
        assert original_fields(letter) == sent
    reasons = sorted(letter["error"] for letter in letters.values())
    for words in (
        "a field name: not UTF-8",
        "rule_name: not UTF-8",
        "labels: expected a JSON object, got list",
        "labels: value of 'a' must be a string, got int",
        "rule_id: missing",
        "at: 'nan' is not a finite number",
        "labels.endpoint: contains NUL",
    ):
        assert any(words in r for r in reasons), (words, reasons)
    seen = await rows(pool, "SELECT count(*) FROM notifier_seen_transitions")
    assert seen == [(len(good),)]


async def health(raw: redis.asyncio.Redis, settings: Settings) -> dict[str, str]:
    got: Any = await raw.hgetall(settings.streams.key("health", "notifier"))
    return {k.decode(): v.decode() for k, v in got.items()}


async def _zero(raw: redis.asyncio.Redis, settings: Settings) -> bool:
    return await pending(raw, settings) == 0


@pytest.fixture
def refuse_rule_name(nsettings: Settings) -> Iterator[None]:
    """A CHECK constraint on ``alerts`` that refuses one rule name, as a database would
    refuse data it cannot hold."""
    with psycopg.connect(nsettings.database_url, autocommit=True) as conn:
        conn.execute(
            "ALTER TABLE alerts ADD CONSTRAINT poison_test CHECK (rule_name <> 'Refuse me')"
            " NOT VALID"
        )
    try:
        yield
    finally:
        with psycopg.connect(nsettings.database_url, autocommit=True) as conn:
            conn.execute("ALTER TABLE alerts DROP CONSTRAINT IF EXISTS poison_test")


async def test_an_entry_the_database_refuses_is_parked_and_the_rest_of_its_batch_goes_through(
    nsettings: Settings,
    pool: AsyncConnectionPool[Any],
    receiver: Receiver,
    raw: redis.asyncio.Redis,
    refuse_rule_name: None,
) -> None:
    write_policy(nsettings, WEBHOOK_ONLY)
    await configure(pool, "webhook", {"url": receiver.url})
    stream = nsettings.streams.alerts
    # all written before the notifier starts, so that its first read is one batch
    await raw.xadd(stream, as_bytes(transition("before")))  # type: ignore[arg-type]
    refused_id = await raw.xadd(stream, as_bytes(transition("refused", rule_name="Refuse me")))  # type: ignore[arg-type]
    await raw.xadd(stream, as_bytes(transition("after")))  # type: ignore[arg-type]
    async with running(nsettings):
        await wait_for(lambda: delivered(receiver) == {"before", "after"}, what="the good two")

        async def parked() -> bool:
            return len(await dead_letters(raw, nsettings)) == 1

        await wait_for(parked, what="the refused entry parked")
        await wait_for(lambda: _zero(raw, nsettings), what="an empty PEL")
    assert (await health(raw, nsettings)).get("refused") == "1"  # written when it stops
    ((_, letter),) = await dead_letters(raw, nsettings)
    assert letter["source_id"] == refused_id.decode() and letter["kind"] == "refused"
    assert "the database refused it" in letter["error"] and "poison_test" in letter["error"]
    assert "SQLSTATE 23514" in letter["error"]
    assert original_fields(letter)[b"rule_name"] == b"Refuse me"
    assert await rows(pool, "SELECT fingerprint FROM alerts ORDER BY fingerprint") == [
        ("after",),
        ("before",),
    ]


async def test_an_entry_that_keeps_failing_is_parked_after_max_deliveries(
    nsettings: Settings,
    pool: AsyncConnectionPool[Any],
    receiver: Receiver,
    raw: redis.asyncio.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_policy(nsettings, WEBHOOK_ONLY)
    await configure(pool, "webhook", {"url": receiver.url})
    real = store.record_transition

    async def buggy(conn: Any, t: AlertTransition, *args: Any, **kwargs: Any) -> store.Plan:
        if t.fingerprint == "boom":
            raise RuntimeError("a bug that only this entry trips")
        return await real(conn, t, *args, **kwargs)

    monkeypatch.setattr(store, "record_transition", buggy)
    stream = nsettings.streams.alerts
    async with running(replace_settings(nsettings, notifier=dict(max_deliveries=3))):
        await raw.xadd(stream, as_bytes(transition("one")))  # type: ignore[arg-type]
        boom_id = await raw.xadd(stream, as_bytes(transition("boom")))  # type: ignore[arg-type]
        await raw.xadd(stream, as_bytes(transition("two")))  # type: ignore[arg-type]
        await wait_for(lambda: delivered(receiver) == {"one", "two"}, what="the good two")

        async def parked() -> bool:
            return len(await dead_letters(raw, nsettings)) == 1

        await wait_for(parked, what="the failing entry parked")
        await wait_for(lambda: _zero(raw, nsettings), what="an empty PEL")
    assert (await health(raw, nsettings)).get("unprocessable") == "1"
    ((_, letter),) = await dead_letters(raw, nsettings)
    assert letter["source_id"] == boom_id.decode() and letter["kind"] == "failed"
    assert letter["error"].startswith("failed 3 times, last: RuntimeError: a bug that only")
    assert original_fields(letter) == as_bytes(transition("boom"))


@pytest.fixture
def refuse_error_text(nsettings: Settings) -> Iterator[None]:
    """A CHECK constraint on ``deliveries`` that refuses one error text (HTTP 400's)."""
    with psycopg.connect(nsettings.database_url, autocommit=True) as conn:
        conn.execute(
            "ALTER TABLE deliveries ADD CONSTRAINT poison_test"
            " CHECK (error IS NULL OR error NOT LIKE '%Bad Request%') NOT VALID"
        )
    try:
        yield
    finally:
        with psycopg.connect(nsettings.database_url, autocommit=True) as conn:
            conn.execute("ALTER TABLE deliveries DROP CONSTRAINT IF EXISTS poison_test")


async def test_a_delivery_record_the_database_refuses_closes_its_row_and_the_outbox_goes_on(
    nsettings: Settings,
    pool: AsyncConnectionPool[Any],
    receiver: Receiver,
    raw: redis.asyncio.Redis,
    refuse_error_text: None,
) -> None:
    write_policy(nsettings, WEBHOOK_ONLY)
    await configure(pool, "webhook", {"url": receiver.url})
    # the status ends up in deliveries.error (not the answer, NUL and all); the table refuses 400
    receiver.answers = [Answer(403, body=b"bad\x00request"), Answer(400, body=b"refuse-record")]
    stream = nsettings.streams.alerts
    async with running(nsettings):
        await raw.xadd(stream, as_bytes(transition("nul")))  # type: ignore[arg-type]
        await wait_for(lambda: delivered(receiver) == {"nul"}, what="the first attempt")
        await raw.xadd(stream, as_bytes(transition("refused")))  # type: ignore[arg-type]
        await wait_for(lambda: len(receiver.requests) == 2, what="the second attempt")
        await raw.xadd(stream, as_bytes(transition("fine")))  # type: ignore[arg-type]
        await wait_for(lambda: len(receiver.requests) == 3, what="the third alert")

        async def closed() -> bool:
            got = await rows(pool, "SELECT count(*) FROM notifier_outbox WHERE status <> 'sent'")
            return got == [(2,)]

        await wait_for(closed, what="every outbox row closed")
    assert (await health(raw, nsettings)).get("record_refused") == "1"
    assert [r.status for r in receiver.requests] == [403, 400, 200]
    outbox = await rows(
        pool, "SELECT notification_key, status, attempts, last_error FROM notifier_outbox"
    )
    by_key = {key.split(":")[0]: (status, n, error) for key, status, n, error in outbox}
    assert by_key["nul"] == ("failed", 1, "webhook: HTTP 403 Forbidden")
    assert by_key["refused"][:2] == ("failed", 1)
    assert by_key["refused"][2].startswith("the database refused the delivery record: ")
    assert "poison_test" in by_key["refused"][2]
    assert by_key["fine"][:2] == ("sent", 1)
    recorded = await rows(
        pool, "SELECT notification_key, status, error FROM deliveries ORDER BY id"
    )
    assert [(k.split(":")[0], s) for k, s, _ in recorded] == [("nul", "failed"), ("fine", "sent")]
    assert recorded[0][2] == "webhook: HTTP 403 Forbidden"
