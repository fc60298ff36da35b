"""What the live hub holds — windows, alerts, today's revenue — and the snapshots read from it.

Pure data and arithmetic (no I/O): :class:`LiveState` is fed by :class:`api.live.hub.LiveHub`
and read through a :class:`LiveFilter` per subscriber. The definitions of the numbers are in
:mod:`api.live`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from qesmon import vocabulary
from qesmon.alerts import AlertState, AlertTransition

MAX_LIST = 200

SeriesKey = tuple[str, str, str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True, slots=True)
class LiveFilter:
    """What one subscriber sees: a tenant (or all), a service (or all).

    ``restricted``: the tenant comes from the key, so the tenant list shows that one only.
    """

    tenant: str | None = None
    service: str | None = None
    restricted: bool = False

    def series(self, w: dict[str, Any]) -> bool:
        if self.tenant is not None and (w.get("tenant") or "") != self.tenant:
            return False
        return self.service is None or w["labels"].get("service") == self.service

    def alert(self, a: dict[str, Any]) -> bool:
        if self.tenant is not None and (a.get("tenant_id") or "") != self.tenant:
            return False
        return self.service is None or (a.get("labels") or {}).get("service") == self.service


def series_key(w: dict[str, Any]) -> SeriesKey:
    return (w["name"], w["type"], w.get("tenant") or "", tuple(sorted(w["labels"].items())))


@dataclass
class LiveState:
    """The open and recent windows per start, the active alerts, the closed revenue of today.

    Pure data and arithmetic: fed by :class:`LiveHub`, read by :meth:`snapshot`.
    """

    history_s: float = 300.0
    width: float = 10.0
    windows: dict[float, dict[SeriesKey, dict[str, Any]]] = field(default_factory=dict)
    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: when each alert was last set from the stream (a DB resync keeps newer ones)
    alert_seen: dict[str, float] = field(default_factory=dict)
    #: closed revenue rollups of the day: (day start, cut-off, {(tenant, currency): sum})
    revenue: tuple[float, float, dict[tuple[str, str], float]] = (0.0, 0.0, {})
    updated_at: float = 0.0

    def add_windows(self, windows: Iterable[dict[str, Any]], now: float) -> None:
        for w in windows:
            start = float(w["start"])
            self.width = float(w.get("width_s") or self.width)
            self.windows.setdefault(start, {})[series_key(w)] = w
        self.updated_at = now

    def prune(self, now: float) -> None:
        horizon = now - self.history_s - self.width
        for start in [s for s in self.windows if s < horizon]:
            del self.windows[start]

    def apply_transition(self, t: AlertTransition, now: float) -> None:
        if t.to_state in (AlertState.RESOLVED, AlertState.INACTIVE):
            self.alerts.pop(t.fingerprint, None)
        else:
            previous = self.alerts.get(t.fingerprint, {})
            self.alerts[t.fingerprint] = {
                "fingerprint": t.fingerprint,
                "rule_id": t.rule_id,
                "rule_name": t.rule_name,
                "severity": t.severity.value,
                "state": t.to_state.value,
                "tenant_id": t.tenant or None,
                "labels": dict(t.labels),
                "summary": t.annotations.get("summary", ""),
                "value": t.value,
                "since": previous.get("since", t.at),
            }
        self.alert_seen[t.fingerprint] = now

    def replace_alerts(self, rows: list[dict[str, Any]], now: float, keep_s: float) -> None:
        """Take the table's open alerts; keep what the stream changed in the last ``keep_s``."""
        fresh: dict[str, dict[str, Any]] = {}
        for row in rows:
            fresh[row["fingerprint"]] = {
                "fingerprint": row["fingerprint"],
                "rule_id": row["rule_id"],
                "rule_name": row["rule_name"],
                "severity": row["severity"],
                "state": row["state"],
                "tenant_id": row["tenant_id"],
                "labels": row["labels"] or {},
                "summary": (row["annotations"] or {}).get("summary", ""),
                "value": row["value"],
                "since": _unix(row["fired_at"] or row["started_at"]),
            }
        for fp, seen in list(self.alert_seen.items()):
            if now - seen < keep_s:
                if fp in self.alerts:
                    fresh[fp] = self.alerts[fp]
                else:
                    fresh.pop(fp, None)
            else:
                del self.alert_seen[fp]
        self.alerts = fresh

    # -- reading -------------------------------------------------------------------------

    def _requests(self, flt: LiveFilter, starts: list[float]) -> list[dict[str, Any]]:
        out = []
        for start in starts:
            for w in self.windows.get(start, {}).values():
                if w["name"] == vocabulary.HTTP_REQUEST and flt.series(w):
                    out.append(w)
        return out

    def requests_now(self, flt: LiveFilter, now: float) -> dict[str, Any]:
        width = self.width
        current = math.floor(now / width) * width
        starts = sorted(s for s in self.windows if s >= current - width)
        ws = self._requests(flt, starts)
        count = sum(int(w["count"]) for w in ws)
        errors = sum(int(w["errors"]) for w in ws)
        elapsed = max(now - (current - width), width)
        p95: float | None = None
        for start in reversed(starts):
            values = [
                float(w["p95"])
                for w in self._requests(flt, [start])
                if w.get("p95") is not None and w["count"]
            ]
            if values:
                p95 = max(values)
                break
        return {
            "rate": count / elapsed,
            "error_pct": errors / count * 100.0 if count else 0.0,
            "p95_s": p95,
            "count": count,
        }

    def history(self, flt: LiveFilter, now: float) -> list[dict[str, Any]]:
        """One point per closed window in memory (oldest first), for the charts."""
        width = self.width
        current = math.floor(now / width) * width
        points = []
        for start in sorted(s for s in self.windows if s < current):
            ws = self._requests(flt, [start])
            count = sum(int(w["count"]) for w in ws)
            errors = sum(int(w["errors"]) for w in ws)
            p95s = [float(w["p95"]) for w in ws if w.get("p95") is not None and w["count"]]
            points.append(
                {
                    "at": start + width,
                    "rate": count / width,
                    "error_pct": errors / count * 100.0 if count else 0.0,
                    "p95_s": max(p95s) if p95s else None,
                }
            )
        return points

    def revenue_today(self, flt: LiveFilter, now: float) -> dict[str, float]:
        day_start, cutoff, closed = self.revenue
        today = utc_day_start(now)
        if day_start != today:  # the cache is from yesterday: the live part only
            closed, cutoff = {}, today
        out: dict[str, float] = {}
        for (tenant, currency), amount in closed.items():
            if flt.tenant is None or tenant == flt.tenant:
                out[currency] = out.get(currency, 0.0) + amount
        for start, ws in self.windows.items():
            if start < cutoff:
                continue
            for w in ws.values():
                if w["type"] == "revenue" and (
                    flt.tenant is None or (w.get("tenant") or "") == flt.tenant
                ):
                    currency = w["labels"].get("currency", "")
                    out[currency] = out.get(currency, 0.0) + float(w["sum"])
        return {k: round(v, 6) for k, v in sorted(out.items())}

    def snapshot(self, flt: LiveFilter, now: float, stale: bool) -> dict[str, Any]:
        tenants: set[str] = set()
        services: set[str] = set()
        for ws in self.windows.values():
            for w in ws.values():
                tenant = w.get("tenant") or ""
                if tenant:
                    tenants.add(tenant)
                service = w["labels"].get("service")
                if service and (flt.tenant is None or tenant == flt.tenant):
                    services.add(service)
        if flt.restricted:
            tenants = {flt.tenant} if flt.tenant else set()
        alerts = sorted(
            (a for a in self.alerts.values() if flt.alert(a)),
            key=lambda a: (_SEVERITY_RANK.get(a["severity"], 3), -float(a["since"] or 0)),
        )
        return {
            "at": now,
            "tenant_id": flt.tenant,
            "service": flt.service,
            "requests": self.requests_now(flt, now),
            "revenue_today": self.revenue_today(flt, now),
            "alerts": alerts[:MAX_LIST],
            "active_alerts": len(alerts),
            "tenants": sorted(tenants)[:MAX_LIST],
            "services": sorted(services)[:MAX_LIST],
            "stale": stale,
        }


_SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}


def _unix(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(str(value)).timestamp()


def utc_day_start(now: float) -> float:
    return math.floor(now / 86400) * 86400.0
