"""Fixtures of the notifier tests: loopback HTTP receivers, a running notifier, helpers.

:class:`Receiver` is a real aiohttp server that records every request and answers what the
test scripts (``answers`` queue: a status, optionally with headers and body, or ``"hang"``
to time out); after the queue it answers ``default``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import orjson
import psycopg
import pytest
import redis.asyncio
from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from notifier import outbound
from notifier.clock import Clock, FakeClock
from notifier.service import Notifier
from qesmon.alerts import AlertState, AlertTransition, Severity
from qesmon.settings import Settings
from tests.support.settings import LOOPBACK, replace_settings


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    at: float
    status: int = 0

    def json(self) -> Any:
        return orjson.loads(self.body)

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode()))


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    hang: bool = False
    delay: float = 0.0


class Receiver:
    """A recording HTTP server on 127.0.0.1 with scripted answers."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.answers: list[Answer] = []
        self.default = Answer(200, body=b"ok")
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        # a "hang" answer must not hold the test up at clean-up
        self.runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        answer = self.answers.pop(0) if self.answers else self.default
        self.requests.append(
            Request(
                request.method,
                request.path,
                dict(request.query),
                dict(request.headers),
                body,
                time.time(),
                answer.status,
            )
        )
        if answer.hang:
            await asyncio.sleep(30)
        if answer.delay:
            await asyncio.sleep(answer.delay)
        return web.Response(status=answer.status, headers=answer.headers, body=answer.body)

    def bodies(self) -> list[Any]:
        return [r.json() for r in self.requests]

    def accepted(self) -> list[Request]:
        return [r for r in self.requests if 200 <= r.status < 300]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
def nsettings(settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    """Settings for notifier tests: own rules dir, fast retries, no env channels."""
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE notifier_seen_transitions")
    rules = tmp_path / "rules"
    rules.mkdir()
    yield replace_settings(
        settings,
        rules_dir=rules,
        notifier=dict(retry_base=0.05, retry_max=0.2, claim_idle=2.0),
    )


@pytest.fixture
async def pool(nsettings: Settings) -> AsyncIterator[AsyncConnectionPool[Any]]:
    p: AsyncConnectionPool[Any] = AsyncConnectionPool(
        nsettings.database_url,
        min_size=1,
        max_size=4,
        open=False,
        kwargs={"autocommit": True, "options": "-c timezone=UTC"},
    )
    await p.open()
    yield p
    await p.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """The channels' session, allowed to reach the loopback receivers."""
    async with outbound.session(LOOPBACK) as s:
        yield s


def write_policy(settings: Settings, text: str) -> None:
    (settings.rules_dir / "notifications.yaml").write_text(text, encoding="utf-8")


def transition(
    fingerprint: str = "fp1",
    to: AlertState = AlertState.FIRING,
    *,
    at: float = 1_700_000_000.0,
    severity: Severity = Severity.CRITICAL,
    rule_id: str = "high_error_rate",
    **kwargs: Any,
) -> AlertTransition:
    frm = AlertState.PENDING if to is AlertState.FIRING else AlertState.FIRING
    return AlertTransition(
        fingerprint=fingerprint,
        rule_id=rule_id,
        rule_name=kwargs.pop("rule_name", "High error rate"),
        severity=severity,
        from_state=frm,
        to_state=to,
        at=at,
        value=kwargs.pop("value", 0.42),
        tenant=kwargs.pop("tenant", "acme"),
        labels=kwargs.pop("labels", {"endpoint": "/sign"}),
        annotations=kwargs.pop("annotations", {"summary": "Error rate above 5%"}),
        **kwargs,
    )


async def push(aredis: redis.asyncio.Redis, settings: Settings, t: AlertTransition) -> str:
    return str(await aredis.xadd(settings.streams.alerts, t.to_fields()))  # type: ignore[arg-type]


async def wait_for(
    cond: Callable[[], Awaitable[bool]] | Callable[[], bool],
    timeout: float = 10.0,
    what: str = "condition",
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = cond()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def configure(pool: AsyncConnectionPool[Any], channel: str, config: dict[str, Any]) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO receivers (name, channel, enabled, config) VALUES (%s, %s, true, %s)"
            " ON CONFLICT (tenant_id, name) DO UPDATE SET config = EXCLUDED.config",
            (channel, channel, psycopg.types.json.Jsonb(config)),
        )


@contextlib.asynccontextmanager
async def running(
    settings: Settings, clock: Clock | None = None, **kwargs: Any
) -> AsyncIterator[Notifier]:
    """A notifier running in this event loop (FakeClock by default)."""
    notifier = Notifier(
        settings,
        clock=clock or FakeClock(),
        environ={},
        poll_interval=0.05,
        health_interval=0.2,
        **kwargs,
    )
    task = asyncio.create_task(notifier.run())
    try:
        await wait_for(
            lambda: (notifier.ready.is_set() and bool(notifier.configs)) or task.done(),
            what="notifier start",
        )
        yield notifier
    finally:
        notifier.stop()
        await asyncio.wait_for(task, 15)


async def rows(pool: AsyncConnectionPool[Any], sql: str, *args: Any) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn:
        cur = await conn.execute(sql, args)
        return await cur.fetchall()
