"""The demo's incidents: what goes wrong, when in the cycle, and what it does to traffic."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cli.demo.platform import Tenant


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
