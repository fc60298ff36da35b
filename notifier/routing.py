"""Routing: which channels hear about an alert, how it is grouped, how often it repeats.

Pure functions over a :class:`RoutingConfig` parsed from the ``routing:`` key of a YAML file in
``RULES_DIR`` (see :mod:`notifier.policy` for where it is read)::

    routing:
      defaults:                     # used when no route matches (all keys optional)
        channels: [slack]
        group_by: [rule_id]         # rule_id, rule_name, severity, tenant or labels.<name>
        group_wait: 1s              # alerts of one group arriving within this go out together
        repeat_interval: 4h         # re-send an alert that keeps firing, unacknowledged
      routes:                       # first match wins; `continue: true` keeps looking
        - match: {severity: critical, tenant: [acme, globex], labels: {service: api}}
          channels: [slack, pagerduty]
          escalation: critical-default
          repeat_interval: 1h

A rule's own ``channels`` / ``escalation`` / ``repeat_interval`` (on the transition) win over
what the routes say.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qesmon.alerts import AlertTransition
from qesmon.errors import RuleError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_GROUP_FIELDS = ("rule_id", "rule_name", "severity", "tenant", "fingerprint")

DEFAULT_GROUP_WAIT = 1.0
DEFAULT_REPEAT_INTERVAL = 4 * 3600.0


def parse_duration(value: Any, where: str) -> float:
    """Seconds from ``90``, ``"90s"``, ``"5m"``, ``"1h30m"`` or ``"250ms"``; RuleError otherwise."""
    if isinstance(value, bool):
        raise RuleError(f"expected a duration like 30s, 5m or 1h, got {value!r}", where)
    if isinstance(value, int | float):
        if value < 0:
            raise RuleError(f"duration must be >= 0, got {value!r}", where)
        return float(value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        parts = _DURATION.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return sum(float(n) * _UNITS[u] for n, u in parts)
    raise RuleError(f"expected a duration like 30s, 5m or 1h, got {value!r}", where)


def _str_set(value: Any, where: str) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset((value,))
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return frozenset(value)
    raise RuleError(f"expected a string or a list of strings, got {value!r}", where)


def _channel_list(value: Any, where: str, known: frozenset[str]) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RuleError(f"expected a list of channel names, got {value!r}", where)
    unknown = [v for v in value if v not in known]
    if unknown:
        raise RuleError(
            f"unknown channel {unknown[0]!r} (known: {', '.join(sorted(known))})", where
        )
    return tuple(value)


@dataclass(frozen=True, slots=True)
class Matcher:
    """Conditions on an alert; every given condition must hold (an empty matcher matches all)."""

    severity: frozenset[str] | None = None
    tenant: frozenset[str] | None = None
    rule_id: frozenset[str] | None = None
    labels: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def matches(self, t: AlertTransition) -> bool:
        if self.severity is not None and t.severity.value not in self.severity:
            return False
        if self.tenant is not None and t.tenant not in self.tenant:
            return False
        if self.rule_id is not None and t.rule_id not in self.rule_id:
            return False
        return all(t.labels.get(name) in values for name, values in self.labels.items())


@dataclass(frozen=True, slots=True)
class Route:
    """Where matching alerts go; ``None`` fields inherit the defaults."""

    matcher: Matcher
    channels: tuple[str, ...] | None = None
    group_by: tuple[str, ...] | None = None
    group_wait: float | None = None
    repeat_interval: float | None = None
    escalation: str | None = None
    continue_: bool = False


@dataclass(frozen=True, slots=True)
class RouteResult:
    """The routing decision for one alert."""

    channels: tuple[str, ...]
    group_key: str
    group_wait: float
    repeat_interval: float
    escalation: str | None


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """Defaults plus an ordered list of routes."""

    channels: tuple[str, ...] = ()
    group_by: tuple[str, ...] = ("rule_id",)
    group_wait: float = DEFAULT_GROUP_WAIT
    repeat_interval: float = DEFAULT_REPEAT_INTERVAL
    escalation: str | None = None
    routes: tuple[Route, ...] = ()

    def route(self, t: AlertTransition) -> RouteResult:
        """Decide channels, group, timing and escalation for ``t`` (rule settings win)."""
        channels: list[str] = []
        group_by, group_wait = self.group_by, self.group_wait
        repeat, escalation = self.repeat_interval, self.escalation
        matched = False
        for route in self.routes:
            if not route.matcher.matches(t):
                continue
            if not matched:
                group_by = route.group_by if route.group_by is not None else group_by
                group_wait = route.group_wait if route.group_wait is not None else group_wait
                repeat = route.repeat_interval if route.repeat_interval is not None else repeat
                escalation = route.escalation or escalation
            matched = True
            channels.extend(c for c in (route.channels or self.channels) if c not in channels)
            if not route.continue_:
                break
        if not matched:
            channels = list(self.channels)
        if t.channels:
            channels = list(dict.fromkeys(t.channels))
        return RouteResult(
            channels=tuple(channels),
            group_key=group_key(t, group_by),
            group_wait=group_wait,
            repeat_interval=t.repeat_interval if t.repeat_interval is not None else repeat,
            escalation=t.escalation or escalation,
        )


def group_key(t: AlertTransition, group_by: Sequence[str]) -> str:
    """A stable key made of the values of ``group_by`` (alert fields or ``labels.<name>``)."""
    parts = []
    for name in group_by:
        value = t.labels.get(name[7:], "") if name.startswith("labels.") else str(getattr(t, name))
        parts.append(f"{name}={value}")
    return ",".join(parts)


def parse_routing(raw: Any, where: str, known_channels: frozenset[str]) -> RoutingConfig:
    """Validate the ``routing:`` mapping of a file; errors name the key path."""
    if not isinstance(raw, dict):
        raise RuleError("routing must be a mapping with `defaults` and/or `routes`", where)
    unknown = set(raw) - {"defaults", "routes"}
    if unknown:
        raise RuleError(f"unknown key routing.{sorted(unknown)[0]}", where)
    defaults = raw.get("defaults") or {}
    base = _route_fields(defaults, f"{where}: routing.defaults", known_channels, allow_match=False)
    routes = []
    raw_routes = raw.get("routes") or []
    if not isinstance(raw_routes, list):
        raise RuleError("routing.routes must be a list", where)
    for i, item in enumerate(raw_routes):
        at = f"{where}: routing.routes[{i}]"
        fields = _route_fields(item, at, known_channels, allow_match=True)
        routes.append(Route(**fields))
    return RoutingConfig(
        channels=base.get("channels") or (),
        group_by=base.get("group_by") or ("rule_id",),
        group_wait=base.get("group_wait", DEFAULT_GROUP_WAIT),
        repeat_interval=base.get("repeat_interval", DEFAULT_REPEAT_INTERVAL),
        escalation=base.get("escalation"),
        routes=tuple(routes),
    )


def _route_fields(
    raw: Any, where: str, known: frozenset[str], *, allow_match: bool
) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise RuleError("expected a mapping", where)
    allowed = {"channels", "group_by", "group_wait", "repeat_interval", "escalation"}
    if allow_match:
        allowed |= {"match", "continue"}
    unknown = set(raw) - allowed
    if unknown:
        raise RuleError(f"unknown key {sorted(unknown)[0]!r} (allowed: {sorted(allowed)})", where)
    out: dict[str, Any] = {}
    if "channels" in raw:
        out["channels"] = _channel_list(raw["channels"], f"{where}.channels", known)
    if "group_by" in raw:
        names = raw["group_by"]
        if not isinstance(names, list) or not all(
            isinstance(n, str) and (n in _GROUP_FIELDS or n.startswith("labels.")) for n in names
        ):
            raise RuleError(
                f"group_by must list names among {_GROUP_FIELDS} or labels.<name>, got {names!r}",
                f"{where}.group_by",
            )
        out["group_by"] = tuple(names)
    for key in ("group_wait", "repeat_interval"):
        if key in raw:
            out[key] = parse_duration(raw[key], f"{where}.{key}")
    if raw.get("escalation") is not None:
        if not isinstance(raw["escalation"], str):
            raise RuleError("escalation must be a policy name", f"{where}.escalation")
        out["escalation"] = raw["escalation"]
    if allow_match:
        out["matcher"] = _matcher(raw.get("match") or {}, f"{where}.match")
        cont = raw.get("continue", False)
        if not isinstance(cont, bool):
            raise RuleError("continue must be true or false", f"{where}.continue")
        out["continue_"] = cont
    return out


def _matcher(raw: Any, where: str) -> Matcher:
    if not isinstance(raw, dict):
        raise RuleError("match must be a mapping", where)
    unknown = set(raw) - {"severity", "tenant", "rule_id", "labels"}
    if unknown:
        raise RuleError(f"unknown match key {sorted(unknown)[0]!r}", where)
    labels = raw.get("labels") or {}
    if not isinstance(labels, dict):
        raise RuleError("match.labels must be a mapping of label to value(s)", where)
    severity = _str_set(raw["severity"], f"{where}.severity") if "severity" in raw else None
    if severity is not None and not severity <= {"info", "warning", "critical"}:
        raise RuleError(f"unknown severity in {sorted(severity)}", f"{where}.severity")
    return Matcher(
        severity=severity,
        tenant=_str_set(raw["tenant"], f"{where}.tenant") if "tenant" in raw else None,
        rule_id=_str_set(raw["rule_id"], f"{where}.rule_id") if "rule_id" in raw else None,
        labels={str(k): _str_set(v, f"{where}.labels.{k}") for k, v in labels.items()},
    )
