"""The traffic model: the platform's events for a span of time, pure and deterministic."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cli.demo.incidents import Effects
from cli.demo.platform import (
    ENDPOINTS,
    ERROR_ENDPOINT,
    FX,
    LEVELS,
    RESOURCES,
    SLOW_ENDPOINT,
    Endpoint,
    Tenant,
)
from qesmon import vocabulary as v
from qesmon.contract import MetricType

#: events one request brings on average (the request, database calls, usage, features)
EVENTS_PER_REQUEST = 2.1
_SIGN_MEDIAN = {"simple": 0.2, "advanced": 0.4, "qualified": 0.85}
_AUTH_FAILURES = ("bad_password", "expired_certificate", "mfa_failed", "locked_account")
_VIOLATIONS = ("rate_limited", "ip_blocked", "invalid_certificate", "tampered_document")


@dataclass(frozen=True, slots=True)
class Ev:
    """One event, in the arguments of :meth:`MetricsCollector.record_metric`."""

    type: MetricType
    name: str
    value: float
    labels: dict[str, str] | None
    tenant: str | None
    user: str | None
    ts: float
    success: bool = True


@dataclass(frozen=True, slots=True)
class Intervals:
    """Seconds (business time) between two samples of the periodic metrics."""

    quota: float = 15.0
    subscriptions: float = 60.0
    queue: float = 5.0
    security: float = 120.0

    def scaled(self, factor: float) -> Intervals:
        return Intervals(
            self.quota * factor,
            self.subscriptions * factor,
            self.queue * factor,
            self.security * factor,
        )


def poisson(rng: random.Random, lam: float) -> int:
    """A Poisson draw (Knuth below 30, normal approximation above)."""
    if lam <= 0:
        return 0
    if lam > 30:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _activity(ts: float) -> float:
    day = datetime.fromtimestamp(ts, UTC)
    hour = day.hour + day.minute / 60
    level = 0.2 + 1.6 * math.exp(-(((hour - 13.0) / 4.0) ** 2))
    return level * (0.4 if day.weekday() >= 5 else 1.0)


#: the mean of _activity over a week (2 January 1970 was a Friday: any whole week will do)
_ACTIVITY_MEAN = sum(_activity(86400 + i * 900) for i in range(7 * 96)) / (7 * 96)


def diurnal(ts: float) -> float:
    """Relative activity at ``ts`` (UTC): a working-day peak at 13:00, quiet nights and
    weekends; its mean over a week is 1."""
    return _activity(ts) / _ACTIVITY_MEAN


class Traffic:
    """Generates the platform's events for a span of time; deterministic for one seed.

    ``generate(t0, t1, n, effects, business_seconds)`` returns the events of ``n`` requests
    (about :data:`EVENTS_PER_REQUEST` each) stamped
    in ``[t0, t1)`` plus the business-time events (payments, sign-ups, samples) due during
    ``business_seconds`` of business time, sorted by time::

        traffic = Traffic(make_tenants(4, random.Random(1)), seed=1)
        events = traffic.generate(now - 0.1, now, 20, Effects(), 0.1)
    """

    def __init__(
        self,
        tenants: Sequence[Tenant],
        seed: int,
        intervals: Intervals | None = None,
        start: float = 0.0,
    ) -> None:
        if not tenants:
            raise ValueError("need at least one tenant")
        self.rng = random.Random(seed)
        self.tenants = list(tenants)
        self.intervals = intervals or Intervals()
        self._weights = [t.weight for t in self.tenants]
        self._endpoint_weights = [e.weight for e in ENDPOINTS]
        self.users = {t.id: [f"{t.id}-u{i:04d}" for i in range(t.plan.users)] for t in tenants}
        self._signups = {t.id: 0 for t in tenants}
        base = random.Random(seed + 1)
        self.quota_base = {
            (t.id, r): round(base.uniform(25, 70), 1) for t in tenants for r in RESOURCES
        }
        self._business_clock = (
            start  # business time, which runs `speed` times faster than the stamps
        )
        self._due = dict.fromkeys(("quota", "subscriptions", "queue", "security"), start)
        self.history_errors: tuple[float, float] | None = None  # backfill: a bad deploy

    # -- the parts -----------------------------------------------------------------------
    def _tenant(self) -> Tenant:
        return self.rng.choices(self.tenants, self._weights)[0]

    def _user(self, tenant: Tenant) -> str:
        pool = self.users[tenant.id]
        # recent users are the most active: new sign-ups come back the next days
        return pool[len(pool) - 1 - int(len(pool) * self.rng.random() ** 1.6)]

    def _latency(self, median: float, sigma: float) -> float:
        return round(median * math.exp(self.rng.gauss(0.0, sigma)), 6)

    def _request(
        self, ts: float, effects: Effects, endpoint: Endpoint, tenant: Tenant, out: list[Ev]
    ) -> None:
        rng = self.rng
        user = self._user(tenant)
        level = ""
        median = endpoint.median
        if endpoint.action == "sign":
            level = rng.choices(LEVELS, tenant.plan.levels)[0]
            median = _SIGN_MEDIAN[level]
        failing = effects.errors and endpoint is ERROR_ENDPOINT and rng.random() < 0.3
        in_history_burst = (
            self.history_errors is not None
            and self.history_errors[0] <= ts < self.history_errors[1]
            and endpoint is ERROR_ENDPOINT
            and rng.random() < 0.2
        )
        r = rng.random()
        if failing or in_history_burst:
            status, success = rng.choice((502, 503, 504)), False
            duration = self._latency(1.2, 0.6)
        elif r < 0.001:
            status, success = 500, False
            duration = self._latency(median, endpoint.sigma)
        elif endpoint.action == "login" and r < 0.083:
            status, success = 401, True
            duration = self._latency(median, endpoint.sigma)
        elif r < 0.033:
            status, success = rng.choice((400, 404, 409, 422)), True
            duration = self._latency(median / 2, endpoint.sigma)
        else:
            status, success = (201 if endpoint.method == "POST" else 200), True
            slow = effects.latency and endpoint is SLOW_ENDPOINT
            duration = self._latency(2.7, 0.3) if slow else self._latency(median, endpoint.sigma)
        labels = {
            "service": endpoint.service,
            "endpoint": endpoint.path,
            "method": endpoint.method,
            "status": str(status),
        }
        perf = MetricType.PERFORMANCE
        out.append(Ev(perf, v.HTTP_REQUEST, duration, labels, tenant.id, None, ts, success))
        service = endpoint.service
        if endpoint.action == "login":
            if status == 401:
                reason = {"reason": rng.choice(_AUTH_FAILURES)}
                out.append(
                    Ev(MetricType.BUSINESS_EVENT, v.AUTH_FAILED, 1, reason, tenant.id, user, ts)
                )
            elif success:
                out.append(
                    Ev(MetricType.BUSINESS_EVENT, v.USER_LOGIN, 1, None, tenant.id, user, ts)
                )
        elif endpoint.action == "upload" and status == 201:
            db = {"operation": "insert", "service": service}
            out.append(Ev(perf, v.DB_QUERY, self._latency(0.012, 0.5), db, tenant.id, None, ts))
            out.append(Ev(MetricType.USAGE, v.DOCUMENTS_UPLOADED, 1, None, tenant.id, user, ts))
        elif endpoint.action == "sign":
            if level in ("advanced", "qualified"):
                if level == "qualified":
                    hsm = {"provider": "hsm", "operation": "sign"}
                    dur = self._latency(0.25, 0.4)
                    out.append(Ev(perf, v.EXTERNAL_API, dur, hsm, tenant.id, None, ts, success))
                tsa = {"provider": "tsa", "operation": "timestamp"}
                dur = self._latency(0.15, 0.4)
                out.append(Ev(perf, v.EXTERNAL_API, dur, tsa, tenant.id, None, ts, success))
            if status == 201:
                db = {"operation": "insert", "service": service}
                out.append(Ev(perf, v.DB_QUERY, self._latency(0.01, 0.5), db, tenant.id, None, ts))
                lv = {"level": level}
                out.append(Ev(MetricType.USAGE, v.SIGNATURES_CREATED, 1, lv, tenant.id, user, ts))
        elif rng.random() < 0.4:
            slow = effects.latency and endpoint is SLOW_ENDPOINT
            dur = self._latency(0.9, 0.3) if slow else self._latency(0.004, 0.6)
            db = {"operation": "select", "service": service}
            out.append(Ev(perf, v.DB_QUERY, dur, db, tenant.id, None, ts))
        if success and rng.random() < 0.08:
            feature = rng.choice(tenant.plan.features)
            out.append(
                Ev(MetricType.FEATURE_USAGE, feature, 1, {"feature": feature}, tenant.id, user, ts)
            )

    def _business(
        self, t0: float, t1: float, seconds: float, effects: Effects, out: list[Ev]
    ) -> None:
        """Payments, sign-ups and periodic samples due during ``seconds`` of business time,
        stamped in ``[t0, t1)``."""
        rng = self.rng
        span = t1 - t0
        hours = seconds / 3600 * diurnal(t0)
        for tenant in self.tenants:
            plan = tenant.plan
            for _ in range(poisson(rng, plan.payments_per_hour * tenant.weight * hours)):
                kind = "new" if rng.random() < 0.25 else "recurring"
                seats = rng.randint(1, 5) if kind == "new" else rng.randint(1, tenant.seats)
                amount = round(plan.seat_price * FX[tenant.currency] * seats, 2)
                labels = {"plan": plan.name, "currency": tenant.currency, "kind": kind}
                ts = t0 + rng.random() * span
                out.append(
                    Ev(
                        MetricType.REVENUE,
                        v.SUBSCRIPTION_PAYMENT,
                        amount,
                        labels,
                        tenant.id,
                        None,
                        ts,
                    )
                )
            for _ in range(poisson(rng, plan.signups_per_hour * tenant.weight * hours)):
                self._signups[tenant.id] += 1
                user = f"{tenant.id}-n{self._signups[tenant.id]:05d}"
                self.users[tenant.id].append(user)
                ts = t0 + rng.random() * span
                labels = {"plan": plan.name}
                out.append(
                    Ev(MetricType.BUSINESS_EVENT, v.USER_SIGNUP, 1, labels, tenant.id, user, ts)
                )
        # periodic samples, due by the business clock, stamped proportionally in [t0, t1)
        bstart = self._business_clock
        bend = self._business_clock = bstart + seconds

        def due(kind: str, every: float) -> Iterable[float]:
            self._due[kind] = max(self._due[kind], bstart)  # no catching up after a pause
            while self._due[kind] < bend:
                at = self._due[kind]
                self._due[kind] = at + every
                yield t0 + (at - bstart) / seconds * span

        iv = self.intervals
        for ts in due("quota", iv.quota):
            for tenant in self.tenants:
                for resource in RESOURCES:
                    value = self.quota_base[(tenant.id, resource)] + rng.gauss(0, 0.8)
                    if tenant.id == effects.quota_tenant and resource == "signatures":
                        value = 91.5 + 5.0 * effects.quota_progress + rng.gauss(0, 0.4)
                    out.append(
                        Ev(
                            MetricType.USAGE,
                            v.QUOTA_UTILIZATION,
                            round(min(100.0, max(0.0, value)), 2),
                            {"resource": resource},
                            tenant.id,
                            None,
                            ts,
                        )
                    )
        for ts in due("subscriptions", iv.subscriptions):
            for tenant in self.tenants:
                out.append(
                    Ev(
                        MetricType.BUSINESS_EVENT,
                        v.SUBSCRIPTION_ACTIVE,
                        tenant.seats,
                        {"plan": tenant.plan.name},
                        tenant.id,
                        None,
                        ts,
                    )
                )
        for ts in due("queue", iv.queue):
            for queue in ("advanced", "qualified"):
                depth = poisson(rng, 40.0 if effects.errors else 3.0)
                out.append(
                    Ev(
                        MetricType.CUSTOM,
                        "signing_queue_depth",
                        depth,
                        {"queue": queue},
                        None,
                        None,
                        ts,
                    )
                )
        for ts in due("security", iv.security):
            tenant = self._tenant()
            what = {"kind": rng.choice(_VIOLATIONS)}
            out.append(
                Ev(MetricType.BUSINESS_EVENT, v.SECURITY_VIOLATION, 1, what, tenant.id, None, ts)
            )

    # -- the whole ---------------------------------------------------------------------------
    def generate(
        self, t0: float, t1: float, n: int, effects: Effects, business_seconds: float
    ) -> list[Ev]:
        """``n`` traffic events in ``[t0, t1)`` plus the business events due in
        ``business_seconds``; sorted by time."""
        rng = self.rng
        span = t1 - t0
        out: list[Ev] = []
        tenants = rng.choices(self.tenants, self._weights, k=n)
        endpoints = rng.choices(ENDPOINTS, self._endpoint_weights, k=n)
        for tenant, endpoint in zip(tenants, endpoints, strict=True):
            self._request(t0 + rng.random() * span, effects, endpoint, tenant, out)
        self._business(t0, t1, business_seconds, effects, out)
        out.sort(key=lambda e: e.ts)
        return out
