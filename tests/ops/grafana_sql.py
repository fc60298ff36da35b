"""What Grafana does to a dashboard's SQL before PostgreSQL sees it, for the dashboard tests.

Two steps, in Grafana's order:

1. Template variables (the frontend): ``$var``, ``${var}``, ``${var:format}``, ``[[var]]``.
   A multi-value or include-All variable becomes a list of quoted literals (``'a','b'``),
   All meaning every option; a single-value variable is inserted raw; ``:sqlstring`` quotes
   and escapes; ``:raw`` inserts as is. ``$__interval``, ``$__interval_ms``, ``$__from`` and
   ``$__to`` are the built-ins. An interval variable set to ``auto`` becomes the time range
   divided by its ``auto_count``, rounded like Grafana, and at least ``auto_min``.
2. Macros (the backend, ``pkg/tsdb/grafana-postgresql-datasource/macros.go``, with
   ``timescaledb: true``): ``$__timeFilter(col)`` -> ``col BETWEEN '<from>' AND '<to>'``,
   ``$__timeFrom()``/``$__timeTo()`` -> quoted RFC 3339 times, ``$__timeGroup(col, 5m)`` ->
   ``time_bucket('300.000s',col)``, ``$__timeGroupAlias`` adds ``AS "time"``, ``$__time``,
   ``$__timeEpoch``, ``$__unixEpochFilter``/``From``/``To``. An unknown macro or variable is an
   error here (Grafana would send it on and PostgreSQL would reject it later, less clearly).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

_VARIABLE = re.compile(
    r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^\}]+))?(?::([^\}]+))?\}"
)
_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")
_MACROS = frozenset(
    {
        "__time",
        "__timeEpoch",
        "__timeFilter",
        "__timeFrom",
        "__timeTo",
        "__timeGroup",
        "__timeGroupAlias",
        "__unixEpochFilter",
        "__unixEpochFrom",
        "__unixEpochTo",
    }
)
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
# Grafana's rangeutil.roundInterval: (upper bound of the raw interval, rounded interval) in s
_ROUNDING = (
    (1.5, "1s"), (3.5, "2s"), (7.5, "5s"), (12.5, "10s"), (17.5, "15s"), (25, "20s"),
    (45, "30s"), (90, "1m"), (210, "2m"), (450, "5m"), (750, "10m"), (1050, "15m"),
    (1500, "20m"), (2700, "30m"), (5400, "1h"), (9000, "2h"), (16200, "3h"),
    (32400, "6h"), (86400, "12h"), (604800, "1d"), (1814400, "1w"), (3628800, "30d"),
)  # fmt: skip


class ExpansionError(ValueError):
    """A query that Grafana could not expand (unknown variable, bad macro argument)."""


def parse_duration(text: str) -> float:
    """Seconds of a Grafana interval such as ``10s``, ``5m``, ``1h``, ``7d``."""
    match = _DURATION.fullmatch(text.strip().strip("'"))
    if not match:
        raise ExpansionError(f"not an interval: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def auto_interval(span: timedelta, count: int, minimum: str) -> str:
    raw = span.total_seconds() / count
    rounded = next((text for bound, text in _ROUNDING if raw <= bound), "1y")
    return rounded if parse_duration(rounded) >= parse_duration(minimum) else minimum


@dataclass(frozen=True)
class Scenario:
    """A time range and the variable selections a user would make."""

    name: str
    start: datetime
    end: datetime
    #: variable name -> selected value(s); "All" selects every option; absent = its default
    selected: Mapping[str, str | Sequence[str]]
    interval: str = "1m"  # what Grafana computes as $__interval for the panel


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Expander:
    """Expands the SQL of one dashboard for one scenario.

    ``options`` gives each query variable's options (what its own SQL returned); custom and
    interval variables take theirs from the dashboard JSON.
    """

    def __init__(
        self,
        dashboard: Mapping[str, Any],
        scenario: Scenario,
        options: Mapping[str, Sequence[str]],
    ) -> None:
        self.scenario = scenario
        self.values: dict[str, tuple[bool, list[str]]] = {}
        for var in dashboard.get("templating", {}).get("list", []):
            name = var["name"]
            self.values[name] = self._resolve(var, options.get(name))

    def _resolve(
        self, var: Mapping[str, Any], options: Sequence[str] | None
    ) -> tuple[bool, list[str]]:
        name, kind = var["name"], var["type"]
        if kind == "interval":
            choice = self.scenario.selected.get(name, "auto")
            assert isinstance(choice, str)
            if choice == "auto":
                span = self.scenario.end - self.scenario.start
                choice = auto_interval(span, int(var["auto_count"]), var["auto_min"])
            elif choice not in var["query"].split(","):
                raise ExpansionError(f"{name}: {choice!r} is not one of {var['query']!r}")
            return False, [choice]
        if kind == "custom":
            options = [o.strip() for o in var["query"].split(",")]
        if kind not in ("custom", "query"):
            raise ExpansionError(f"variable {name}: type {kind!r} not supported by this expander")
        if options is None:
            raise ExpansionError(f"variable {name}: no options given")
        choice = self.scenario.selected.get(name, "All")
        if choice == "All":
            if not var.get("includeAll"):
                raise ExpansionError(f"variable {name} has no All option")
            chosen = list(options)
        else:
            chosen = [choice] if isinstance(choice, str) else list(choice)
            missing = [c for c in chosen if c not in options]
            if missing:
                raise ExpansionError(f"variable {name}: {missing} not among options {options}")
        multi = bool(var.get("multi") or var.get("includeAll"))
        if not multi and len(chosen) != 1:
            raise ExpansionError(f"variable {name} is single-valued, got {chosen}")
        return multi, chosen

    def expand(self, sql: str) -> str:
        return self.macros(self.variables(sql))

    def variables(self, sql: str) -> str:
        span = self.scenario.end - self.scenario.start
        builtins = {
            "__interval": self.scenario.interval,
            "__interval_ms": str(int(parse_duration(self.scenario.interval) * 1000)),
            "__from": str(int(self.scenario.start.timestamp() * 1000)),
            "__to": str(int(self.scenario.end.timestamp() * 1000)),
            "__range_s": str(int(span.total_seconds())),
        }

        def replace(match: re.Match[str]) -> str:
            name = match.group(1) or match.group(2) or match.group(4)
            fmt = match.group(3) or match.group(6)
            if name in builtins:
                return builtins[name]
            if name.startswith("__"):
                return match.group(0)  # a macro (or a typo of one): the backend's job
            if name not in self.values:
                raise ExpansionError(f"unknown variable ${name} in: {sql[:80]}...")
            multi, chosen = self.values[name]
            if fmt in (None, ""):
                return ",".join(_quote(c) for c in chosen) if multi else chosen[0]
            if fmt == "sqlstring":
                return ",".join(_quote(c) for c in chosen)
            if fmt == "raw":
                return ",".join(chosen)
            if fmt == "csv":
                return ",".join(chosen)
            raise ExpansionError(f"variable format :{fmt} not supported by this expander")

        return _VARIABLE.sub(replace, sql)

    def macros(self, sql: str) -> str:
        start, end = self.scenario.start, self.scenario.end

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            args = [a.strip() for a in match.group(2).split(",")]
            if name == "__timeGroup" and sql[match.end() : match.end() + 1] == ",":
                name = "__timeGroupAlias"  # Grafana's pre-5.3 compatibility rule
            return self._macro(name, args, start, end)

        return _MACRO.sub(replace, sql)

    def _macro(self, name: str, args: list[str], start: datetime, end: datetime) -> str:
        column = args[0] if args and args[0] else None
        if name in ("__time", "__timeEpoch", "__timeFilter", "__unixEpochFilter") and not column:
            raise ExpansionError(f"missing time column argument for macro {name}")
        if name == "__time":
            return f'{column} AS "time"'
        if name == "__timeEpoch":
            return f'extract(epoch from {column}) as "time"'
        if name == "__timeFilter":
            return f"{column} BETWEEN '{_rfc3339(start)}' AND '{_rfc3339(end)}'"
        if name == "__timeFrom":
            return f"'{_rfc3339(start)}'"
        if name == "__timeTo":
            return f"'{_rfc3339(end)}'"
        if name in ("__timeGroup", "__timeGroupAlias"):
            if len(args) < 2:
                raise ExpansionError(f"macro {name} needs a time column and an interval")
            if len(args) == 3 and args[2] not in ("NULL", "previous") and not _is_number(args[2]):
                raise ExpansionError(f"macro {name}: bad fill value {args[2]!r}")
            seconds = parse_duration(args[1])
            group = f"time_bucket('{seconds:.3f}s',{args[0]})"
            return group + ' AS "time"' if name == "__timeGroupAlias" else group
        if name == "__unixEpochFilter":
            return f"{column} >= {int(start.timestamp())} AND {column} <= {int(end.timestamp())}"
        if name == "__unixEpochFrom":
            return str(int(start.timestamp()))
        if name == "__unixEpochTo":
            return str(int(end.timestamp()))
        raise ExpansionError(f"unknown macro ${name}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def sql_targets(dashboard: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(where, format, rawSql) of every TimescaleDB query: panel targets and annotations."""
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            if target.get("datasource", panel.get("datasource", {})).get("uid") == "timescaledb":
                out.append((f"panel {panel['title']!r}", target["format"], target["rawSql"]))
    for annotation in dashboard["annotations"]["list"]:
        target = annotation.get("target") or {}
        if annotation.get("datasource", {}).get("uid") == "timescaledb":
            out.append((f"annotation {annotation['name']!r}", "table", target["rawSql"]))
    return out
