"""A generated week of QES platform events with known properties, for the endpoint tests."""

from __future__ import annotations

import math
import random

from tests.api.conftest import Ev

HOUR = 3600
DAY = 86400
TENANTS = ("tenant-a", "tenant-b")
ENDPOINTS = (
    ("signing", "/sign", "POST"),
    ("documents", "/docs", "GET"),
    ("signing", "/slow", "GET"),
)


def floor_to(ts: float, step: int) -> float:
    return math.floor(ts / step) * step


def workload(now: float, seed: int = 7) -> list[Ev]:
    """Events of the last 6.5 days, the current hour and minute, plus some too old to count.

    Properties the tests rely on: every ``/slow`` request takes 1.5-3 s; all requests succeed
    except in one closed hour (30 h ago) where every request of tenant-a fails; tenant-a's
    signature quota is at 92 %; fewer than 256 users and fewer than 256 requests per endpoint
    in the last 24 h, so distinct counts and percentiles are exact.
    """
    rnd = random.Random(seed)
    events: list[Ev] = []
    start = now - 6.5 * DAY
    down_hour = floor_to(now, HOUR) - 30 * HOUR

    def at() -> float:
        return rnd.uniform(start, now - 5)

    for tenant in TENANTS:
        for _ in range(120):
            service, endpoint, method = rnd.choice(ENDPOINTS)
            dur = rnd.uniform(1.5, 3.0) if endpoint == "/slow" else rnd.uniform(0.01, 0.4)
            ts = at()
            while down_hour <= ts < down_hour + HOUR:
                ts = at()
            events.append(
                Ev(
                    "http_request",
                    "performance",
                    ts,
                    dur,
                    tenant,
                    f"{tenant}-u{rnd.randrange(40)}",
                    {"service": service, "endpoint": endpoint, "method": method, "status": "200"},
                )
            )
        for _ in range(40):
            plan, currency, kind = (
                rnd.choice(("basic", "pro")),
                rnd.choice(("EUR", "USD")),
                rnd.choice(("new", "recurring")),
            )
            events.append(
                Ev(
                    "subscription_payment",
                    "revenue",
                    at(),
                    float(rnd.choice((9, 29, 99))),
                    tenant,
                    labels={"plan": plan, "currency": currency, "kind": kind},
                )
            )
        for _ in range(50):
            events.append(
                Ev(
                    "signatures_created",
                    "usage",
                    at(),
                    float(rnd.randint(1, 5)),
                    tenant,
                    labels={"level": "qualified"},
                )
            )
            events.append(Ev("documents_uploaded", "usage", at(), float(rnd.randint(1, 3)), tenant))
        for i in range(15):
            events.append(
                Ev("user_signup", "business_event", at(), 1.0, tenant, f"{tenant}-new{i}")
            )
        # the current minute: read from 10 s rows only
        events.append(
            Ev(
                "http_request",
                "performance",
                now - 3,
                0.2,
                tenant,
                f"{tenant}-u1",
                {"service": "signing", "endpoint": "/sign", "method": "POST", "status": "200"},
            )
        )
        events.append(
            Ev(
                "subscription_payment",
                "revenue",
                now - 2,
                5.0,
                tenant,
                labels={"plan": "pro", "currency": "EUR", "kind": "new"},
            )
        )
        # too old for a 7-day period
        events.append(
            Ev(
                "subscription_payment",
                "revenue",
                now - 8 * DAY,
                1000.0,
                tenant,
                labels={"plan": "pro", "currency": "EUR", "kind": "new"},
            )
        )
    for i in range(10):
        events.append(
            Ev(
                "http_request",
                "performance",
                down_hour + 60 + i * 300,
                0.1,
                "tenant-a",
                "tenant-a-u1",
                {"service": "signing", "endpoint": "/sign", "method": "POST", "status": "500"},
                success=False,
            )
        )
    events.append(
        Ev(
            "quota_utilization",
            "usage",
            now - 600,
            92.0,
            "tenant-a",
            labels={"resource": "signatures"},
        )
    )
    events.append(
        Ev(
            "quota_utilization",
            "usage",
            now - 600,
            40.0,
            "tenant-b",
            labels={"resource": "signatures"},
        )
    )
    return events


def in_period(events: list[Ev], start: float, end: float, tenant: str | None = None) -> list[Ev]:
    return [e for e in events if start <= e.ts < end and (tenant is None or e.tenant == tenant)]


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
