"""``qesmon demo``: a believable day of the QES platform, pushed through the SDK, with incidents.

What it sends (every event through :class:`~qesmon.sdk.MetricsCollector`, names and labels
from :mod:`qesmon.vocabulary`), for a few tenants on the ``starter``, ``business`` and
``enterprise`` plans, paying in EUR, USD, GBP or CHF:

* traffic, in proportion to ``--rate`` (events per second): ``http_request`` on eight
  endpoints of four services (log-normal latencies, ~3 % 4xx, ~0.1 % 5xx), ``db_query``,
  ``external_api`` (HSM signing and TSA time stamps for advanced and qualified signatures),
  ``documents_uploaded``, ``signatures_created`` (simple, advanced, qualified, in each plan's
  mix), ``user_login`` / ``auth_failed``, and feature usage (``bulk_signing``, ...);
* business time, independent of ``--rate``: ``subscription_payment`` (new and recurring,
  per seat), ``user_signup``, ``quota_utilization`` per tenant and resource (every 15 s),
  ``subscription_active`` (every minute), ``security_violation`` (every 2 min) and the
  ``custom`` gauge ``signing_queue_depth`` (every 5 s).

CPU, memory, disk and network come from the API's resource monitor (:mod:`qesmon.monitor`),
not from here. Tenant ids are readable slugs (``acme-legal``) instead of the platform's UUIDs,
so that alert texts stay readable.

Incidents repeat every 12 minutes of demo time (``--speed`` compresses it), each tripping one
default rule in ``rules/``::

    0:30-5:30  quota      a starter tenant's signature quota above 90 %   quota_exceeded
    1:00-4:00  errors     30 % of POST /api/v1/signatures fail (HSM down) high_error_rate
    5:00-8:00  latency    GET /api/v1/documents/{id} takes ~3 s           slow_response_time

The incident clock starts at a multiple of the window width, so a compressed incident still
covers whole windows. ``high_error_rate`` is critical: with the routing that ``qesmon up``
gives the notifier (:data:`NOTIFICATIONS_YAML`) it escalates after a minute unless
acknowledged.

Notifications: the demo starts a webhook receiver on loopback that prints every notice it
gets (``[notify] FIRING ...``) and points the notifier's ``webhook`` channel at it
(``channel_configs``), unless ``WEBHOOK_URL`` or an earlier ``/alerts/configure`` already set
that channel to something else. On exit it switches its own configuration off again.

``--backfill 7d`` first writes the past period, ending where the current hour starts, into
the backfill shard (``settings.streams.backfill``; its own watermark, no rules), so that
business-intelligence views have history and live and backfilled windows never share an
hour. It is skipped when the backfill shard already holds entries (a second run would only be
counted late). ``--seed`` makes the events the same from run to run (live events depend on
the tick times as well).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import re
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import redis
import redis.asyncio as aioredis
from aiohttp import web

from qesmon import vocabulary as v
from qesmon.contract import MetricType
from qesmon.errors import ConfigError
from qesmon.sdk.collector import MetricsCollector
from qesmon.settings import Settings, mask_url

__all__ = [
    "CYCLE",
    "INCIDENTS",
    "NOTIFICATIONS_YAML",
    "DemoOptions",
    "Ev",
    "Incident",
    "Schedule",
    "Traffic",
    "WebhookReceiver",
    "backfill_range",
    "main",
    "make_tenants",
    "notifier_rules_dir",
    "parse_period",
    "run",
]

# -- the platform: plans, tenants, endpoints ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    seat_price: float  # EUR per seat and month
    users: int  # users of a tenant of weight 1
    levels: tuple[float, float, float]  # share of simple, advanced, qualified signatures
    features: tuple[str, ...]
    payments_per_hour: float  # for a tenant of weight 1 (seat purchases and renewals)
    signups_per_hour: float


PLANS = {
    "starter": Plan("starter", 15.0, 40, (0.7, 0.25, 0.05), ("templates", "mobile_signing"), 1, 1),
    "business": Plan(
        "business",
        39.0,
        150,
        (0.45, 0.4, 0.15),
        ("templates", "mobile_signing", "bulk_signing", "audit_trail_export"),
        2,
        2,
    ),
    "enterprise": Plan(
        "enterprise",
        89.0,
        400,
        (0.2, 0.4, 0.4),
        ("templates", "mobile_signing", "bulk_signing", "audit_trail_export", "api_access"),
        3,
        3,
    ),
}
FX = {"EUR": 1.0, "USD": 1.08, "GBP": 0.85, "CHF": 0.96}
LEVELS = ("simple", "advanced", "qualified")
RESOURCES = ("signatures", "storage")

_NAMED_TENANTS = (
    ("acme-legal", "business", "EUR", 1.0),
    ("nordbank", "enterprise", "CHF", 1.5),
    ("brightpath-hr", "starter", "USD", 0.5),
    ("meridian-insurance", "enterprise", "GBP", 1.3),
    ("kestrel-realty", "starter", "EUR", 0.4),
    ("helios-health", "business", "USD", 0.9),
    ("orbit-logistics", "business", "EUR", 0.8),
    ("vega-notaries", "enterprise", "EUR", 1.1),
)


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    plan: Plan
    currency: str
    weight: float  # share of the traffic, relative

    @property
    def seats(self) -> int:
        return max(3, round(self.plan.users * self.weight / 3))


def make_tenants(count: int, rng: random.Random) -> list[Tenant]:
    """``count`` tenants: the named ones first, then ``tenant-009``... on rotating plans."""
    out = []
    for i in range(count):
        if i < len(_NAMED_TENANTS):
            name, plan, currency, weight = _NAMED_TENANTS[i]
        else:
            name = f"tenant-{i + 1:03d}"
            plan = ("starter", "business", "enterprise")[i % 3]
            currency = tuple(FX)[i % len(FX)]
            weight = round(rng.uniform(0.3, 1.5), 2)
        out.append(Tenant(name, PLANS[plan], currency, weight))
    return out


@dataclass(frozen=True, slots=True)
class Endpoint:
    service: str
    method: str
    path: str
    weight: float
    median: float  # seconds
    sigma: float  # of the log-normal
    action: str  # login, upload, sign or browse


ENDPOINTS = (
    Endpoint("auth", "POST", "/api/v1/auth/login", 0.10, 0.09, 0.35, "login"),
    Endpoint("api", "GET", "/api/v1/envelopes", 0.16, 0.07, 0.45, "browse"),
    Endpoint("api", "POST", "/api/v1/envelopes", 0.07, 0.16, 0.40, "browse"),
    Endpoint("documents", "POST", "/api/v1/documents", 0.12, 0.32, 0.55, "upload"),
    Endpoint("documents", "GET", "/api/v1/documents/{id}", 0.18, 0.06, 0.50, "browse"),
    Endpoint("signing", "POST", "/api/v1/signatures", 0.17, 0.45, 0.50, "sign"),
    Endpoint("signing", "GET", "/api/v1/signatures/{id}", 0.12, 0.03, 0.40, "browse"),
    Endpoint("api", "GET", "/api/v1/users/me", 0.08, 0.02, 0.35, "browse"),
)
#: the endpoints the incidents hit
ERROR_ENDPOINT = ENDPOINTS[5]
SLOW_ENDPOINT = ENDPOINTS[4]
#: events one request brings on average (the request, database calls, usage, features)
EVENTS_PER_REQUEST = 2.1
_SIGN_MEDIAN = {"simple": 0.2, "advanced": 0.4, "qualified": 0.85}
_AUTH_FAILURES = ("bad_password", "expired_certificate", "mfa_failed", "locked_account")
_VIOLATIONS = ("rate_limited", "ip_blocked", "invalid_certificate", "tampered_document")

# -- incidents ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Incident:
    """Something going wrong for a while, every cycle; times in demo seconds."""

    kind: str  # quota, errors or latency
    start: float  # into the cycle
    duration: float
    rule: str  # the default rule it trips
    story: str

    @property
    def end(self) -> float:
        return self.start + self.duration


CYCLE = 720.0
INCIDENTS = (
    Incident(
        "quota",
        30,
        300,
        "quota_exceeded",
        "{tenant} is about to run out of signatures: quota use above 90 %",
    ),
    Incident(
        "errors",
        60,
        180,
        "high_error_rate",
        "HSM unreachable: 30 % of POST /api/v1/signatures fail with 502/503",
    ),
    Incident(
        "latency",
        300,
        180,
        "slow_response_time",
        "storage backend degraded: GET /api/v1/documents/{{id}} takes ~3 s",
    ),
)


@dataclass(frozen=True, slots=True)
class Effects:
    """What the active incidents do to the traffic."""

    errors: bool = False
    latency: bool = False
    quota_tenant: str | None = None
    quota_progress: float = 0.0  # 0..1 through the quota incident


class Schedule:
    """Which incidents are active at a wall time: demo time runs ``speed`` times faster and
    starts at ``origin`` (a multiple of the window width)."""

    def __init__(self, origin: float, speed: float, quota_tenant: str) -> None:
        self.origin = origin
        self.speed = speed
        self.quota_tenant = quota_tenant

    def demo_time(self, wall: float) -> float:
        return (wall - self.origin) * self.speed

    def active(self, wall: float) -> list[Incident]:
        phase = self.demo_time(wall) % CYCLE
        return [i for i in INCIDENTS if i.start <= phase < i.end]

    def effects(self, wall: float) -> Effects:
        phase = self.demo_time(wall) % CYCLE
        kinds = {i.kind: i for i in INCIDENTS if i.start <= phase < i.end}
        quota = kinds.get("quota")
        return Effects(
            errors="errors" in kinds,
            latency="latency" in kinds,
            quota_tenant=self.quota_tenant if quota else None,
            quota_progress=(phase - quota.start) / quota.duration if quota else 0.0,
        )

    def describe(self, incident: Incident) -> str:
        return incident.story.format(tenant=self.quota_tenant)


def quota_tenant(tenants: Sequence[Tenant]) -> str:
    """The tenant that runs near its quota: the first on the starter plan (else the last)."""
    return next((t.id for t in tenants if t.plan.name == "starter"), tenants[-1].id)


# -- the traffic model (pure: no I/O) -------------------------------------------------------


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


# -- the notifier side -----------------------------------------------------------------------

DEMO_HEADER = "X-Qesmon-Demo"

#: Routing for the demo's notifier when RULES_DIR has none: every alert to the webhook
#: channel (the demo's receiver), critical ones escalated after a minute.
NOTIFICATIONS_YAML = """\
# Written by `qesmon up` for the demo: RULES_DIR has no notifier routing file, so alerts go
# to the `webhook` channel, which `qesmon demo` points at its receiver (it prints them).
# Put a routing file (`routing:` / `escalation_policies:`) into RULES_DIR to replace this.
routing:
  defaults:
    channels: [webhook]
    group_by: [rule_id, tenant]
    group_wait: 1s
    repeat_interval: 30m
  routes:
    - match: {severity: critical}
      escalation: demo-critical
escalation_policies:
  demo-critical:
    levels:
      - {after: 0s, channels: [webhook]}
      - {after: 1m, channels: [webhook]}
"""


def _has_routing(directory: Path) -> bool:
    for path in [*directory.glob("*.yaml"), *directory.glob("*.yml")]:
        with contextlib.suppress(OSError):
            text = path.read_text(encoding="utf-8", errors="replace")
            if re.search(r"^(routing|escalation_policies):", text, re.MULTILINE):
                return True
    return False


def notifier_rules_dir(rules_dir: Path, work_dir: Path) -> Path | None:
    """A RULES_DIR for the demo's notifier, or None when ``rules_dir`` has routing already.

    The notifier reads routing and escalation from RULES_DIR only; without a routing file it
    tells nobody. ``work_dir/notifier`` gets :data:`NOTIFICATIONS_YAML` (and a link to
    ``rules_dir/templates`` when there is one); the pipeline keeps reading the rules from
    ``rules_dir``.
    """
    if _has_routing(rules_dir):
        return None
    target = work_dir / "notifier"
    target.mkdir(parents=True, exist_ok=True)
    (target / "notifications.yaml").write_text(NOTIFICATIONS_YAML, encoding="utf-8")
    templates = target / "templates"
    if (rules_dir / "templates").is_dir() and not templates.exists():
        templates.symlink_to((rules_dir / "templates").resolve(), target_is_directory=True)
    return target


class WebhookReceiver:
    """A loopback HTTP server that takes Alertmanager-style webhook posts and prints them.

    ::

        receiver = WebhookReceiver(sys.stdout)
        url = await receiver.start()          # http://127.0.0.1:<port>/notify
        ...
        await receiver.stop()
    """

    def __init__(self, out: TextIO, port: int = 0) -> None:
        self.out = out
        self.port = port
        self.received: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "expected a JSON body"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "expected a JSON object"}, status=400)
        self.received.append(body)
        reason = str(body.get("notification_reason") or body.get("status") or "?")
        for alert in body.get("alerts") or []:
            labels = alert.get("labels") or {}
            summary = (alert.get("annotations") or {}).get("summary", "")
            print(
                f"[notify] {_clock(time.time())} {reason.upper():<12} "
                f"{labels.get('severity', '?'):<8} {labels.get('alertname', '?')}: {summary}",
                file=self.out,
                flush=True,
            )
        return web.json_response({"ok": True})

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/notify", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.port = int(port)
        return f"http://{host}:{port}/notify"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _webhook_config(url: str) -> dict[str, Any]:
    return {"url": url, "headers": {DEMO_HEADER: "receiver"}, "format": "alertmanager"}


def _webhook_row(settings: Settings) -> tuple[bool, dict[str, Any]] | None:
    from qesmon.db import connect

    with connect(settings.database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT enabled, config FROM channel_configs WHERE channel = 'webhook'"
        ).fetchone()
    if row is None:
        return None
    return bool(row[0]), row[1] if isinstance(row[1], dict) else {}


def _is_ours(config: dict[str, Any]) -> bool:
    headers = config.get("headers")
    return isinstance(headers, dict) and DEMO_HEADER in headers


def claim_webhook(settings: Settings, url: str) -> str | None:
    """Point the ``webhook`` channel at ``url``; None when done, else why it was left alone."""
    from qesmon.sdk.alerting import AlertingSystem

    if settings.webhook_url:
        return "WEBHOOK_URL is set, so alerts go there"
    row = _webhook_row(settings)
    if row is not None and row[0] and not _is_ours(row[1]):
        return "the webhook channel is configured already (not by the demo), so alerts go there"
    AlertingSystem(settings.database_url).configure_channel("webhook", _webhook_config(url))
    return None


def release_webhook(settings: Settings, url: str) -> None:
    """Switch the demo's webhook configuration off: its receiver is going away."""
    from qesmon.sdk.alerting import AlertingSystem

    row = _webhook_row(settings)
    if row is not None and _is_ours(row[1]) and row[1].get("url") == url:
        AlertingSystem(settings.database_url).configure_channel(
            "webhook", _webhook_config(url), enabled=False
        )


# -- what `qesmon up` asks of the demo ----------------------------------------------------------

#: ``scripts/setup.sh`` writes this into ``var/env.sh`` with the URL of the Redis it started
PRIVATE_REDIS_VAR = "QESMON_PRIVATE_REDIS_URL"


def why_no_demo(settings: Settings, *, no_demo: bool) -> str | None:
    """Why ``qesmon up`` must not start demo traffic, or None when it should.

    The demo runs only against the private Redis that ``scripts/setup.sh`` started (it marks
    it in ``var/env.sh``), never against a REDIS_URL that may be a real platform's.
    """
    if no_demo:
        return "--no-demo"
    if settings.extra.get("QESMON_DEMO", "1").strip().lower() in ("0", "false", "no", "off"):
        return "QESMON_DEMO=0"
    private = settings.extra.get(PRIVATE_REDIS_VAR)
    if not private or private != settings.redis_url:
        return (
            "REDIS_URL is not the private Redis that scripts/setup.sh started "
            "(run `qesmon demo` yourself to send demo traffic there)"
        )
    return None


def create_session_key(settings: Settings) -> str:
    """An admin API key for one ``qesmon up`` session (revoke it with :func:`revoke_key`)."""
    from api.keys import create_key_sync
    from qesmon.db import connect

    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    with connect(settings.database_url, autocommit=True) as conn:
        return create_key_sync(conn, role="admin", name=f"qesmon up session {stamp}")


def revoke_key(settings: Settings, key: str) -> None:
    from api.keys import hash_key
    from qesmon.db import connect

    with connect(settings.database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE key_hash = %s AND revoked_at IS NULL",
            (hash_key(key),),
        )


def up_banner(
    settings: Settings, key: str | None, demo_off: str | None, routing: Path | None
) -> str:
    """Where to look, printed by ``qesmon up`` once everything is started."""
    api = f"http://{settings.api_host}:{settings.api_port}"
    auth = f"-H 'Authorization: Bearer {key}'" if key else "-H 'Authorization: Bearer <key>'"
    lines = [
        "qesmon up: pipeline, notifier, API"
        + ("" if demo_off else " and demo traffic")
        + " are running; Ctrl-C stops them all",
        f"  REST API   {api}/api/v1/metrics/health",
        f"  admin key  {key} (revoked when this session stops)"
        if key
        else "  admin key  none (create one: qesmon keys create --role admin)",
        f"  dashboard  curl -s {auth} {api}/api/v1/metrics/dashboard",
        f"  alerts     curl -s {auth} '{api}/api/v1/metrics/alerts?active_only=false'",
        f"  live page  {api}/live",
        f"  exporter   http://{settings.api_host}:{settings.prometheus_metrics_port}/metrics",
    ]
    if demo_off:
        lines.append(f"  demo       off: {demo_off}")
    else:
        lines.append(
            f"  demo       {DemoOptions().tenants} tenants, a week of history, incidents every "
            f"{CYCLE / 60:g} min; notifications print as [notify] lines "
            "(turn off: --no-demo or QESMON_DEMO=0)"
        )
        if routing is not None:
            lines.append(
                f"  routing    {routing / 'notifications.yaml'} (RULES_DIR {settings.rules_dir} "
                "has no routing file)"
            )
    lines.append("  stop       Ctrl-C; then `make stop` stops Redis and PostgreSQL")
    return "\n".join(lines)


# -- running it ---------------------------------------------------------------------------------

_PERIOD = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_BACKFILL = 90 * 86400
#: the SDK drops the oldest events beyond its buffer; the backfill waits above this many
BACKFILL_BUFFERED = 50_000


def parse_period(text: str, option: str = "--backfill") -> float:
    """Seconds from ``7d``, ``12h``, ``90m``, ``1w`` or ``1d12h``; ConfigError otherwise."""
    raw = text.strip().lower()
    parts = _PERIOD.findall(raw)
    if not parts or "".join(n + u for n, u in parts) != raw:
        raise ConfigError(f"{option}: expected a period like 7d, 12h or 90m, got {text!r}")
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not 0 < seconds <= MAX_BACKFILL:
        raise ConfigError(f"{option}: must be more than 0 and at most 90d, got {text!r}")
    return seconds


def backfill_range(now: float, period: float) -> tuple[float, float]:
    """``[start, end)`` of a backfill: it ends where the current hour starts, so backfilled
    and live events never share an hourly window."""
    end = math.floor(now / 3600) * 3600
    return end - period, end


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """The demo's knobs (the ``qesmon demo`` options), validated."""

    rate: float = 200.0
    tenants: int = 4
    duration: float = 0.0
    backfill: float | None = None
    backfill_rate: float = 0.05
    speed: float = 1.0
    seed: int = 1
    receiver: bool = True
    progress_every: float = 30.0

    def __post_init__(self) -> None:
        checks = [
            ("--rate", 0 < self.rate <= 100_000, "must be > 0 and at most 100000 events/s"),
            ("--tenants", 1 <= self.tenants <= 100, "must be between 1 and 100"),
            ("--duration", self.duration >= 0, "must be >= 0 seconds (0 = until stopped)"),
            ("--backfill-rate", 0 < self.backfill_rate <= 100, "must be > 0 and at most 100"),
            ("--speed", 0 < self.speed <= 1000, "must be > 0 and at most 1000"),
        ]
        for option, ok, message in checks:
            if not ok:
                raise ConfigError(f"{option}: {message}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DemoOptions:
        backfill = getattr(args, "backfill", None)
        return cls(
            rate=float(args.rate),
            tenants=int(args.tenants),
            duration=float(args.duration),
            backfill=parse_period(backfill) if backfill else None,
            backfill_rate=float(getattr(args, "backfill_rate", 0.05)),
            speed=float(getattr(args, "speed", 1.0)),
            seed=int(getattr(args, "seed", 1)),
            receiver=not getattr(args, "no_receiver", False),
        )


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%H:%M:%S")


def _elapsed(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


async def _record(collector: MetricsCollector, events: Iterable[Ev]) -> None:
    for e in events:
        await collector.record_metric(
            e.type, e.name, e.value, e.labels, e.tenant, e.user, e.ts, e.success
        )


@dataclass
class _Run:
    settings: Settings
    options: DemoOptions
    out: TextIO
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: int = 0  # events the SDK could not deliver

    def say(self, text: str) -> None:
        print(f"[demo] {text}", file=self.out, flush=True)

    async def wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless asked to stop; True when asked to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), max(0.0, seconds))
        return self.stop.is_set()

    async def backfill(self, tenants: Sequence[Tenant], period: float) -> None:
        settings, opts = self.settings, self.options
        stream = settings.streams.backfill
        client = aioredis.Redis.from_url(settings.redis_url)
        try:
            existing = int(await client.xlen(stream))
        finally:
            await client.aclose()
        if existing:
            self.say(
                f"backfill skipped: {stream} already holds {existing:,} entries (backfilled "
                "windows are final; start from empty servers to write them again)"
            )
            return
        start, end = backfill_range(time.time(), period)
        self.say(f"backfill: {_utc(start)} -> {_utc(end)} into {stream}")
        traffic = Traffic(tenants, opts.seed, Intervals().scaled(60.0), start=start)
        rng = random.Random(opts.seed + 2)
        step = 60.0
        sent = 0
        began = last_report = time.monotonic()
        collector = MetricsCollector(settings.redis_url, streams=stream, close_timeout=60.0)
        await collector.start()
        try:
            t = start
            day = -1
            while t < end and not self.stop.is_set():
                if int((t - start) // 86400) != day:  # one bad deploy a day, 10-25 minutes
                    day = int((t - start) // 86400)
                    bad = t + rng.uniform(2 * 3600, 20 * 3600)
                    traffic.history_errors = (bad, bad + rng.uniform(600, 1500))
                t1 = min(end, t + step)
                lam = opts.backfill_rate * (t1 - t) * diurnal(t) / EVENTS_PER_REQUEST
                n = poisson(traffic.rng, lam)
                events = traffic.generate(t, t1, n, Effects(), t1 - t)
                await _record(collector, events)
                sent += len(events)
                t = t1
                while collector.stats.buffered > BACKFILL_BUFFERED and not self.stop.is_set():
                    await asyncio.sleep(0.05)
                if time.monotonic() - last_report >= 2.0:
                    last_report = time.monotonic()
                    done = 100 * (t - start) / (end - start)
                    self.say(f"backfill {_utc(t)}  {done:5.1f} %  {sent:,} events")
                await asyncio.sleep(0)
        finally:
            await collector.close()
        stats = collector.stats
        self.dropped += stats.dropped
        took = time.monotonic() - began
        lost = f", {stats.dropped:,} NOT delivered ({stats.last_error})" if stats.dropped else ""
        self.say(
            f"backfill done: {stats.sent:,} events in {took:.1f} s{lost}; "
            "the pipeline aggregates them in the background"
        )

    async def live(self, tenants: Sequence[Tenant], receiver: WebhookReceiver | None) -> None:
        settings, opts = self.settings, self.options
        width = settings.window_seconds
        began = time.time()
        schedule = Schedule(math.floor(began / width) * width, opts.speed, quota_tenant(tenants))
        traffic = Traffic(tenants, opts.seed + 10, start=began)
        self.say(
            f"live traffic: {opts.rate:g} events/s for {len(tenants)} tenants "
            f"({', '.join(f'{t.id} ({t.plan.name}, {t.currency})' for t in tenants)}); "
            f"incidents every {CYCLE / opts.speed:g} s"
        )
        for incident in INCIDENTS:
            at = max(began, schedule.origin + incident.start / opts.speed)
            self.say(
                f"  {_clock(at)} for {incident.duration / opts.speed:g} s: "
                f"{schedule.describe(incident)} -> rule {incident.rule}"
            )
        tick = 0.1
        last = began
        active: set[Incident] = set()
        next_report = began + opts.progress_every
        async with MetricsCollector(settings.redis_url, streams=settings.streams) as collector:
            while True:
                if await self.wait(last + tick - time.time()):
                    break
                now = time.time()
                effects = schedule.effects(now)
                current = set(schedule.active(now))
                for incident in sorted(current - active, key=lambda i: i.start):
                    self.say(f"{_clock(now)} incident starts: {schedule.describe(incident)}")
                for incident in sorted(active - current, key=lambda i: i.start):
                    self.say(f"{_clock(now)} incident over: {schedule.describe(incident)}")
                active = current
                n = poisson(traffic.rng, opts.rate * (now - last) / EVENTS_PER_REQUEST)
                await _record(
                    collector,
                    traffic.generate(last, now, n, effects, (now - last) * opts.speed),
                )
                last = now
                if now >= next_report:
                    next_report = now + opts.progress_every
                    stats = collector.stats
                    heard = (
                        f"  notifications {len(receiver.received)}" if receiver is not None else ""
                    )
                    self.say(
                        f"{_elapsed(now - began)}  {stats.sent:,} events sent "
                        f"({stats.sent / max(now - began, 1e-9):,.0f}/s), "
                        f"{stats.buffered:,} buffered, {stats.dropped:,} dropped{heard}"
                        + (
                            "  incident: " + "; ".join(i.kind for i in sorted(active, key=str))
                            if active
                            else ""
                        )
                    )
                if opts.duration and now - began >= opts.duration:
                    break
        stats = collector.stats
        self.dropped += stats.dropped
        self.say(
            f"stopped after {_elapsed(time.time() - began)}: {stats.sent:,} events sent, "
            f"{stats.dropped:,} dropped"
        )


async def run(settings: Settings, options: DemoOptions, out: TextIO = sys.stdout) -> int:
    """Run the demo until ``options.duration`` has passed or SIGINT/SIGTERM; exit status."""
    state = _Run(settings, options, out)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, state.stop.set)
    tenants = make_tenants(options.tenants, random.Random(options.seed))
    receiver: WebhookReceiver | None = None
    url = ""
    claimed = False
    try:
        if options.receiver:
            receiver = WebhookReceiver(out)
            url = await receiver.start()
            why = await asyncio.to_thread(claim_webhook, settings, url)
            claimed = why is None
            state.say(
                f"webhook receiver on {url}: "
                + ("the notifier's webhook channel now points here" if claimed else str(why))
            )
        if options.backfill:
            await state.backfill(tenants, options.backfill)
        if not state.stop.is_set():
            await state.live(tenants, receiver)
    except (redis.RedisError, OSError) as exc:
        state.say(f"cannot reach Redis at {mask_url(settings.redis_url)}: {exc}")
        return 1
    finally:
        if claimed:
            await asyncio.to_thread(release_webhook, settings, url)
        if receiver is not None:
            await receiver.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)
    return 1 if state.dropped else 0


def main(settings: Settings, args: argparse.Namespace) -> int:
    """``qesmon demo``: see the module docstring."""
    options = DemoOptions.from_args(args)
    return asyncio.run(run(settings, options))
