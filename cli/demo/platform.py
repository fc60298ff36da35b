"""The demo's QES platform: plans, tenants and API endpoints."""

from __future__ import annotations

import random
from dataclasses import dataclass


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
