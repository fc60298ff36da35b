"""A generated QES platform workload that touches every event name the dashboards read.

Events cover the last few hours in time order (so the pipeline's watermark follows them and
closes every window), for every tenant, service, host and label value the panels group by;
the first tenant and service (alphabetically) get every kind of event in every hour, because
the dashboard tests also run with only those selected. Alert episodes, their state changes
and delivery attempts are written straight into their tables (what the rule engine and the
notifier record), covering every severity and state.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from qesmon import vocabulary as v
from qesmon.encode import event_dict

TENANTS = ("tenant-a", "tenant-b", "tenant-c")
SERVICES = ("api", "signing")
ENDPOINTS = ("/api/v1/documents", "/api/v1/signatures", "/api/v1/auth/login")
HOSTS = ("app-1", "db-1")
FEATURES = ("bulk_signing", "templates", "api_access")


@dataclass(frozen=True)
class Workload:
    """Events in time order, and the time span they cover (Unix seconds)."""

    events: list[dict[str, Any]]
    start: float
    end: float

    def batches(self, size: int = 1000) -> Iterator[list[dict[str, Any]]]:
        for i in range(0, len(self.events), size):
            yield self.events[i : i + size]


def generate(now: float, hours: float = 3.0, step: float = 20.0, seed: int = 7) -> Workload:
    """Every ``step`` seconds, one round of events of every kind, the last at ``now - 150``.

    The last event's minute ended more than the allowed lateness (30 s) ago, so the pipeline
    finalises its 10 s and 1 min windows as soon as it has read everything, without waiting
    for more traffic or for the wall clock.
    """
    rng = random.Random(seed)
    end = now - 150.0
    start = end - hours * 3600.0
    events: list[dict[str, Any]] = []
    n = int((end - start) // step)
    for i in range(n + 1):
        events.extend(_round(rng, i, start + i * step))
    return Workload(events, start, end)


def _round(rng: random.Random, i: int, ts: float) -> list[dict[str, Any]]:
    tenant = TENANTS[i % len(TENANTS)]
    user = f"{tenant}-user-{rng.randrange(40)}"
    out: list[dict[str, Any]] = []

    def add(name: str, value: float, type_: str, **kw: Any) -> None:
        out.append(event_dict(name, value, type=type_, ts=ts + rng.random(), **kw))

    for k in range(4):
        service = SERVICES[(i + k) % len(SERVICES)]
        ok = rng.random() > 0.08
        add(
            v.HTTP_REQUEST,
            rng.lognormvariate(-2.0, 0.8) * (1 if ok else 3),
            "performance",
            tenant=tenant if k % 2 else None,
            user=user,
            labels={
                "service": service,
                "endpoint": ENDPOINTS[rng.randrange(len(ENDPOINTS))],
                "method": "GET" if k % 2 else "POST",
                "status": "200" if ok else "500",
            },
            success=ok,
        )
    add(
        v.DB_QUERY,
        rng.uniform(0.001, 0.05),
        "performance",
        labels={"operation": "select", "service": "api"},
    )
    add(
        v.EXTERNAL_API,
        rng.uniform(0.05, 0.6),
        "performance",
        labels={"provider": "tsp", "operation": "timestamp"},
        success=rng.random() > 0.05,
    )
    add(
        v.SUBSCRIPTION_PAYMENT,
        rng.choice((29.0, 99.0, 299.0)),
        "revenue",
        tenant=tenant,
        user=user,
        labels={
            "plan": rng.choice(("basic", "pro")),
            "currency": ("EUR", "USD")[i % 2],
            "kind": ("new", "recurring")[(i // 2) % 2],
        },
    )
    add(
        v.SIGNATURES_CREATED,
        float(rng.randint(1, 5)),
        "usage",
        tenant=tenant,
        user=user,
        labels={"level": ("simple", "advanced", "qualified")[i % 3]},
    )
    add(v.DOCUMENTS_UPLOADED, float(rng.randint(1, 3)), "usage", tenant=tenant, user=user)
    add(
        v.QUOTA_UTILIZATION,
        min(99.0, 40.0 + i % 60),
        "usage",
        tenant=tenant,
        labels={"resource": ("signatures", "storage")[i % 2]},
    )
    add(v.USER_SIGNUP, 1.0, "business_event", tenant=tenant, user=f"{tenant}-new-{i}")
    add(v.USER_LOGIN, 1.0, "business_event", tenant=tenant, user=user)
    add(
        v.AUTH_FAILED,
        1.0,
        "business_event",
        tenant=tenant,
        labels={"reason": ("bad_password", "expired_key")[i % 2]},
    )
    add(
        v.SECURITY_VIOLATION,
        1.0,
        "business_event",
        tenant=tenant,
        labels={"kind": ("cross_tenant_access", "rate_limit")[i % 2]},
    )
    add(
        v.SUBSCRIPTION_ACTIVE,
        float(10 + i % 5),
        "business_event",
        tenant=tenant,
        labels={"plan": ("basic", "pro")[i % 2]},
    )
    add(FEATURES[i % len(FEATURES)], 1.0, "feature_usage", tenant=tenant, user=user)
    for host in HOSTS:
        add(v.CPU_USAGE, rng.uniform(5, 95), "system", labels={"host": host})
        add(v.MEMORY_USAGE, rng.uniform(30, 90), "system", labels={"host": host})
        add(v.DISK_USAGE, rng.uniform(40, 85), "system", labels={"host": host, "mount": "/"})
        add(v.NETWORK_BYTES_SENT, rng.uniform(1e5, 1e7), "system", labels={"host": host})
        add(v.NETWORK_BYTES_RECV, rng.uniform(1e5, 1e7), "system", labels={"host": host})
    return out


#: (rule id, severity, state, tenant) of the alert episodes written by :func:`insert_alerts`
ALERTS = (
    ("high-error-rate", "critical", "firing", TENANTS[0]),
    ("high-memory", "critical", "resolved", ""),
    ("low-disk", "warning", "pending", ""),
    ("quota-exceeded", "info", "firing", TENANTS[1]),
    ("high-cpu", "warning", "firing", ""),
    ("slow-response", "warning", "resolved", TENANTS[0]),  # the latest: in the last 30 min
)


def insert_alerts(conn: psycopg.Connection[Any], start: float, end: float) -> None:
    """Alert episodes with their transitions and delivery attempts, spread over the span."""
    span = end - start
    for n, (rule_id, severity, state, tenant) in enumerate(ALERTS):
        began = end - span * (len(ALERTS) - n) / (len(ALERTS) + 1)  # the last: 26 min ago
        started_at = _dt(began)
        fired_at = _dt(began + 60) if state != "pending" else None
        resolved_at = _dt(began + 900) if state == "resolved" else None
        row = conn.execute(
            "INSERT INTO alerts (fingerprint, rule_id, rule_name, severity, state, tenant_id,"
            " labels, value, started_at, fired_at, resolved_at, acknowledged_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (
                f"{rule_id}:{tenant}",
                rule_id,
                rule_id.replace("-", " ").capitalize(),
                severity,
                state,
                tenant,
                Jsonb({"tenant_id": tenant} if tenant else {}),
                91.0 + n,
                started_at,
                fired_at,
                resolved_at,
                _dt(began + 300) if n % 2 else None,
            ),
        ).fetchone()
        assert row is not None
        alert_id = row[0]
        steps = [("inactive", "pending", started_at)]
        if fired_at:
            steps.append(("pending", "firing", fired_at))
        if resolved_at:
            steps.append(("firing", "resolved", resolved_at))
        for from_state, to_state, at in steps:
            conn.execute(
                "INSERT INTO alert_events (alert_id, fingerprint, from_state, to_state, at, value)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (alert_id, f"{rule_id}:{tenant}", from_state, to_state, at, 91.0 + n),
            )
        if fired_at:
            for attempt, status in enumerate(("failed", "sent"), start=1):
                conn.execute(
                    "INSERT INTO deliveries (alert_id, notification_key, channel, attempt,"
                    " status, http_status, latency_ms, created_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    (
                        alert_id,
                        f"{alert_id}:firing",
                        "slack",
                        attempt,
                        status,
                        500 if status == "failed" else 200,
                        12.5,
                        _dt(began + 60 + attempt * 5),
                    ),
                )


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)
