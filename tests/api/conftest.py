"""Fixtures for the API tests: rollups loaded the way the pipeline writes them, API keys, client.

:func:`load_events` aggregates generated events into 10 s, 60 s and 3600 s windows
(:class:`~qesmon.sketch.Agg` per series and window) and writes them with the pipeline's own
:class:`~pipeline.sinks.RollupWriter`, so the rows are exactly what the sink produces. Tests
compute their expected numbers from the same events, independently of the API's code.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from api.app import create_app
from api.keys import create_key_sync
from pipeline.sinks import RollupWriter
from qesmon.series import ROLLUP_WIDTHS, Series, WindowResult
from qesmon.settings import Settings
from qesmon.sketch import Agg


@dataclass(frozen=True)
class Ev:
    name: str
    type: str
    ts: float
    value: float = 1.0
    tenant: str = ""
    user: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    success: bool = True

    @property
    def series(self) -> Series:
        return Series(self.name, self.type, self.tenant, tuple(sorted(self.labels.items())))


def window_results(events: Iterable[Ev]) -> list[WindowResult]:
    aggs: dict[tuple[Series, int, float], Agg] = {}
    for ev in events:
        for width in ROLLUP_WIDTHS:
            start = math.floor(ev.ts / width) * width
            agg = aggs.setdefault((ev.series, width, start), Agg())
            agg.add(ev.value, ev.success, ev.user)
    return [
        WindowResult(series=s, width_s=w, start=float(b), agg=a) for (s, w, b), a in aggs.items()
    ]


def load_events(settings: Settings, events: Iterable[Ev]) -> int:
    results = window_results(events)
    writer = RollupWriter(settings.database_url)
    try:
        for i in range(0, len(results), 5000):
            writer.write(results[i : i + 5000])
    finally:
        writer.close()
    return len(results)


@dataclass(frozen=True)
class Keys:
    admin: str
    viewer: str
    tenant_a: str
    tenant_b_admin: str
    responder: str
    tenant_a_responder: str


@pytest.fixture
def keys(db: psycopg.Connection[Any]) -> Keys:
    return Keys(
        admin=create_key_sync(db, role="admin", name="test admin"),
        viewer=create_key_sync(db, role="viewer"),
        tenant_a=create_key_sync(db, role="viewer", tenant="tenant-a"),
        tenant_b_admin=create_key_sync(db, role="admin", tenant="tenant-b"),
        responder=create_key_sync(db, role="responder", name="on call"),
        tenant_a_responder=create_key_sync(db, role="responder", tenant="tenant-a"),
    )


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def app(settings: Settings) -> web.Application:
    return create_app(settings, monitor=False)


@pytest.fixture
async def client(aiohttp_client: Any, app: web.Application) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await aiohttp_client(app)
    return client


def now_s() -> float:
    return time.time()
