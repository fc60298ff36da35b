"""The alert state machine: closed windows in, alert transitions out. Pure, no I/O.

The pipeline hands the :class:`Evaluator` every closed window (:meth:`Evaluator.add`) and
the watermark (:meth:`Evaluator.advance`); the evaluator merges, per rule and window, the
aggregates of the matching series that share the rule's ``group_by`` labels, evaluates the
rule's condition once per group, and moves each alert (one per fingerprint = hash of rule id,
tenant and group labels) through its states::

    inactive --true--> pending --true for `for`--> firing --clear for keep_firing_for--> resolved
       ^                 |  (for: 0 goes straight to firing)                               |
       +-----false-------+ (pending -> inactive)      <-------------------------------------+

Decisions, all in event time (window ends), so a replay gives the same transitions:

* ``for`` is measured from the start of the first true window: with 10 s windows and
  ``for: 30s`` the third consecutive true window fires. A window with no data for the group
  neither confirms nor breaks the streak; a false window breaks it.
* Flapping is damped: a firing alert resolves only when the condition has been clear for
  ``keep_firing_for`` (default two windows), and ``resolve_condition`` gives hysteresis
  (e.g. fire above 5 %, clear below 3 %). After resolving, firing again needs ``for`` again.
* No data: when a pending or firing group gets no window for ``no_data_after`` (default
  max(3 windows, 5 min)), pending ends (-> inactive) and firing resolves, at the event time
  ``last data + no_data_after``, with annotation ``reason: no data``. A group whose fields are
  undefined in a window (a ratio over an empty denominator) has no data in that window.
* A rule that raises while evaluating a group is skipped for that window (no state change)
  and reported once per rule and window through :meth:`Evaluator.drain_errors`.
* Windows with ``revision > 0`` (late re-emissions) and windows at or before what was already
  evaluated for their width are ignored: an alert decision is never taken back.
* A rule removed by :meth:`Evaluator.set_rules` resolves its open alerts (``reason: rule
  removed``) at the next :meth:`Evaluator.advance`.
* :meth:`Evaluator.snapshot` holds the alert states, the buffered windows and the
  not-yet-returned transitions, so a restart neither repeats a firing nor loses a resolve.

Usage::

    ev = Evaluator(rules)
    ev.add(window_results)
    for transition in ev.advance(watermark): ...
    state = ev.snapshot()           # later: Evaluator(rules, state)
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from qesmon.alerts import MAX_ANNOTATION_VALUE, AlertState, AlertTransition, Severity
from qesmon.errors import ContractError
from qesmon.series import Series, WindowResult
from qesmon.sketch import Agg
from rules.annotations import render
from rules.expr import EvaluationFailed
from rules.fields import Sums, compute
from rules.model import Rule, RuleSet

SNAPSHOT_VERSION = 1
#: at most this many error lines are kept between two drain_errors() calls
MAX_ERRORS = 1000
#: per rule, at most this many series -> group decisions are cached
_ROUTE_CACHE_LIMIT = 200_000

_GroupKey = tuple[str, tuple[tuple[str, str], ...]]  # tenant, sorted group labels
_Route = tuple[Rule, tuple[int, ...], _GroupKey, str]  # rule, selector roles, group, fingerprint


def fingerprint(rule_id: str, tenant: str, labels: Iterable[tuple[str, str]]) -> str:
    """Stable identity of an alert: 16 hex digits of SHA-256 over rule id, tenant, labels."""
    blob = orjson.dumps([rule_id, tenant, sorted(labels)])
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(slots=True)
class _Alert:
    """One pending or firing alert (inactive alerts are not kept)."""

    rule_id: str
    severity: Severity  # kept so that an alert outliving its rule can still be resolved
    tenant: str
    labels: tuple[tuple[str, str], ...]
    state: AlertState
    active_since: float  # start of the first window of the current true streak
    last_data: float  # end of the newest window that had data for this group
    clear_since: float | None = None  # firing: start of the first window of the clear streak
    value: float | None = None

    def to_list(self) -> list[object]:
        return [
            self.rule_id,
            self.severity.value,
            self.tenant,
            [list(p) for p in self.labels],
            self.state.value,
            self.active_since,
            self.last_data,
            self.clear_since,
            self.value,
        ]

    @classmethod
    def from_list(cls, row: list[Any]) -> _Alert:
        rule_id, severity, tenant, labels, state, active, last, clear, value = row
        return cls(
            str(rule_id),
            Severity(severity),
            str(tenant),
            tuple((str(k), str(v)) for k, v in labels),
            AlertState(state),
            float(active),
            float(last),
            None if clear is None else float(clear),
            None if value is None else float(value),
        )


@dataclass(slots=True)
class EvaluatorStats:
    """Counters for the exporter and the benchmark."""

    windows: int = 0  # window results evaluated (after filtering)
    evaluations: int = 0  # condition evaluations (rule x group x window)
    errors: int = 0  # failed evaluations
    ignored: int = 0  # re-emissions and windows already evaluated
    limited: int = 0  # groups that met their condition but found their rule at its limit
    last_limit: str = ""  # why the last one was not alerted


class Evaluator:
    """Evaluates rules on closed windows and keeps the alert state machine (see module doc)."""

    def __init__(
        self, rules: RuleSet, state: bytes | None = None, *, max_groups_per_rule: int = 1000
    ) -> None:
        self._rules = rules
        #: open alerts (one per group) a rule may have at once; more groups are not alerted
        self.max_groups_per_rule = max_groups_per_rule
        self._alerts: dict[tuple[str, str], _Alert] = {}  # (rule id, fingerprint) -> alert
        self._per_rule: dict[str, int] = {}  # rule id -> its open alerts
        self._evaluated: dict[int, float] = {}  # width -> end of the newest evaluated window
        self._buffer: dict[tuple[int, float], dict[Series, WindowResult]] = {}
        self._outbox: list[AlertTransition] = []
        self._errors: list[str] = []
        self._dropped_errors = 0
        self._routes: dict[tuple[Series, int], tuple[_Route, ...]] = {}
        self.stats = EvaluatorStats()
        if state is not None:
            self._restore(state)
            self._retire(lambda rule_id: rule_id not in rules.ids, "rule removed")

    # -- rules -----------------------------------------------------------------------------
    @property
    def rules(self) -> RuleSet:
        return self._rules

    def set_rules(self, rules: RuleSet) -> None:
        """Switch to a new rule set; alerts of rules that still exist keep their state, the
        open alerts of removed rules resolve at the next :meth:`advance`."""
        old = self._rules
        self._rules = rules
        self._routes.clear()
        self._retire(lambda rule_id: rule_id not in rules.ids, "rule removed", old)

    # -- input -----------------------------------------------------------------------------
    def add(self, results: Iterable[WindowResult]) -> None:
        """Buffer closed windows until :meth:`advance` passes their end."""
        rules = self._rules
        for result in results:
            if not rules.matching(result.series.name, result.width_s):
                continue
            end = result.start + result.width_s
            if end <= self._evaluated.get(result.width_s, -math.inf):
                self.stats.ignored += 1
                continue
            bucket = self._buffer.setdefault((result.width_s, result.start), {})
            previous = bucket.get(result.series)
            if previous is not None and previous.revision >= result.revision:
                self.stats.ignored += 1
                continue
            bucket[result.series] = result

    def advance(self, watermark: float) -> list[AlertTransition]:
        """Evaluate the buffered windows ending at or before ``watermark``, oldest first, and
        expire groups without data; return the transitions, in order. Never raises for a
        rule's sake."""
        out, self._outbox = self._outbox, []
        due = sorted(
            (key for key in self._buffer if key[1] + key[0] <= watermark),
            key=lambda key: (key[1] + key[0], key[0]),
        )
        for key in due:
            width, start = key
            end = start + width
            self._expire(out, before=end)
            results = self._buffer.pop(key)
            self._evaluate_window(out, width, start, results.values())
            self._evaluated[width] = max(self._evaluated.get(width, -math.inf), end)
        self._expire(out, before=math.nextafter(watermark, math.inf))
        return out

    def drain_errors(self) -> list[str]:
        """Evaluation problems since the last call: ``rule <id>, window [start, end): why``."""
        errors, self._errors = self._errors, []
        if self._dropped_errors:
            errors.append(f"... and {self._dropped_errors} more evaluation errors")
            self._dropped_errors = 0
        return errors

    @property
    def open_alerts(self) -> int:
        """How many alerts are pending or firing."""
        return len(self._alerts)

    # -- evaluation ------------------------------------------------------------------------
    def _evaluate_window(
        self, out: list[AlertTransition], width: int, start: float, results: Iterable[WindowResult]
    ) -> None:
        end = start + width
        # rule id -> group -> selector index -> merged aggregate. A group's first aggregate is
        # used as it is (never mutated); a second one makes an owned merge (Agg or Sums).
        groups: dict[str, dict[_GroupKey, dict[int, Agg | Sums]]] = {}
        owned: set[int] = set()
        rules_by_id: dict[str, Rule] = {}
        fps: dict[tuple[str, _GroupKey], str] = {}
        for result in results:
            self.stats.windows += 1
            for rule, roles, group, fp in self._routes_of(result.series, width):
                by_group = groups.get(rule.id)
                if by_group is None:
                    by_group = groups[rule.id] = {}
                    rules_by_id[rule.id] = rule
                parts = by_group.get(group)
                if parts is None:
                    parts = by_group[group] = {}
                    fps[(rule.id, group)] = fp
                for role in roles:
                    agg = parts.get(role)
                    if agg is None:
                        parts[role] = result.agg
                        continue
                    if id(agg) not in owned:
                        agg = (
                            agg.copy() if isinstance(agg, Agg) and rule.needs_sketch else Sums(agg)
                        )
                        owned.add(id(agg))
                        parts[role] = agg
                    agg.merge(result.agg)
        window_out: list[tuple[str, _GroupKey, AlertTransition]] = []
        for rule_id, by_group in groups.items():
            rule = rules_by_id[rule_id]
            failures: list[str] = []
            for group, parts in by_group.items():
                problem = self._evaluate_group(
                    window_out, rule, width, start, end, group, fps[(rule_id, group)], parts
                )
                if problem is not None:
                    failures.append(problem)
            if failures:
                self.stats.errors += len(failures)
                failures.sort()
                more = f" (and {len(failures) - 1} more groups)" if len(failures) > 1 else ""
                self._error(
                    f"rule {rule.id}, window [{_ts(start)}, {_ts(end)}) "
                    f"width {width}s: {failures[0]}{more}"
                )
        # the same transitions in the same order whatever order the windows came in
        window_out.sort(key=lambda item: (item[0], item[1]))
        out += [t for _, _, t in window_out]

    def _routes_of(self, series: Series, width: int) -> tuple[_Route, ...]:
        """The rules that read ``series`` at ``width``, with its selector roles, group and
        fingerprint for each (cached: series repeat every window)."""
        key = (series, width)
        routes = self._routes.get(key)
        if routes is not None:
            return routes
        found = []
        for rule in self._rules.matching(series.name, width):
            roles = tuple(i for i, sel in enumerate(rule.selectors) if sel.matches(series))
            if not roles:
                continue
            labels = []
            tenant = ""
            for label in rule.group_by:
                if label == "tenant":
                    tenant = series.tenant
                    continue
                value = series.label(label)
                if value:
                    labels.append((label, value))
            if "tenant" not in rule.group_by and rule.metric is not None and rule.metric.tenant:
                tenant = rule.metric.tenant
            group = (tenant, tuple(sorted(labels)))
            found.append((rule, roles, group, fingerprint(rule.id, tenant, group[1])))
        if len(self._routes) >= _ROUTE_CACHE_LIMIT:
            self._routes.clear()
        routes = self._routes[key] = tuple(found)
        return routes

    def _evaluate_group(
        self,
        out: list[tuple[str, _GroupKey, AlertTransition]],
        rule: Rule,
        width: int,
        start: float,
        end: float,
        group: _GroupKey,
        fp: str,
        parts: dict[int, Agg | Sums],
    ) -> str | None:
        tenant, labels = group
        main = parts.get(0) if rule.metric is not None else None
        values = compute(rule.symbols, width, main, parts, rule, tenant, labels)
        if None in values.values():
            return None  # no data for this group in this window
        self.stats.evaluations += 1
        alert = self._alerts.get((rule.id, fp))
        try:
            true = rule.condition(values)
            clear = not true
            if alert is not None and alert.state is AlertState.FIRING and rule.resolve_condition:
                clear = rule.resolve_condition(values)
        except EvaluationFailed as exc:
            return f"{_group_text(group)}: {exc}"
        except Exception as exc:  # a rule must never stop the pipeline
            return f"{_group_text(group)}: {type(exc).__name__}: {exc}"
        value = values[rule.value_field]
        key = (rule.id, fp)
        move: tuple[AlertState, AlertState] | None
        if alert is None:
            if not true:
                return None
            if self._per_rule.get(rule.id, 0) >= self.max_groups_per_rule:
                self.stats.limited += 1
                self.stats.last_limit = (
                    f"limit: rule {rule.id!r} already has {self.max_groups_per_rule} open alerts "
                    f"(MAX_ALERT_GROUPS_PER_RULE); group {_group_text(group)[:200]} of tenant "
                    f"{tenant[:100]!r} not alerted"
                )
                return None
            state = AlertState.FIRING if end - start >= rule.for_s else AlertState.PENDING
            alert = _Alert(rule.id, rule.severity, tenant, labels, state, start, end, value=value)
            self._put(key, alert)
            move = (AlertState.INACTIVE, state)
        else:
            alert.last_data = end
            alert.value = value
            move = self._step(rule, alert, true, clear, start, end)
            if move is None:
                return None
            if move[1] in (AlertState.INACTIVE, AlertState.RESOLVED):
                self._take(key)
        transition = self._transition(rule, fp, alert, *move, end, values, parts, width)
        out.append((rule.id, group, transition))
        return None

    @staticmethod
    def _step(
        rule: Rule, alert: _Alert, true: bool, clear: bool, start: float, end: float
    ) -> tuple[AlertState, AlertState] | None:
        """The state change of a pending or firing alert after one evaluated window."""
        if alert.state is AlertState.PENDING:
            if not true:
                return (AlertState.PENDING, AlertState.INACTIVE)
            if end - alert.active_since >= rule.for_s:
                alert.state = AlertState.FIRING
                return (AlertState.PENDING, AlertState.FIRING)
            return None
        if not clear:
            alert.clear_since = None
            return None
        if alert.clear_since is None:
            alert.clear_since = start
        if end - alert.clear_since >= rule.keep_firing_for:
            return (AlertState.FIRING, AlertState.RESOLVED)
        return None

    def _put(self, key: tuple[str, str], alert: _Alert) -> None:
        if key not in self._alerts:
            self._per_rule[key[0]] = self._per_rule.get(key[0], 0) + 1
        self._alerts[key] = alert

    def _take(self, key: tuple[str, str]) -> _Alert:
        alert = self._alerts.pop(key)
        left = self._per_rule[key[0]] - 1
        if left:
            self._per_rule[key[0]] = left
        else:
            del self._per_rule[key[0]]
        return alert

    def _expire(self, out: list[AlertTransition], before: float) -> None:
        """End the alerts whose groups sent nothing for ``no_data_after`` before ``before``."""
        expired = []
        for key, alert in self._alerts.items():
            rule = self._rules.get(alert.rule_id)
            if rule is not None and alert.last_data + rule.no_data_after < before:
                expired.append((alert.last_data + rule.no_data_after, key, rule))
        for at, key, rule in sorted(expired, key=lambda item: (item[0], item[1])):
            alert = self._take(key)
            to = AlertState.RESOLVED if alert.state is AlertState.FIRING else AlertState.INACTIVE
            out.append(
                self._transition(
                    rule, key[1], alert, alert.state, to, at, None, {}, 0, reason="no data"
                )
            )

    def _retire(self, gone: object, reason: str, rules: RuleSet | None = None) -> None:
        """Queue the end of the alerts whose rule ``gone(rule_id)`` says no longer exists."""
        assert callable(gone)
        source = rules if rules is not None else self._rules
        for key in sorted(k for k, alert in self._alerts.items() if gone(alert.rule_id)):
            alert = self._take(key)
            rule = source.get(alert.rule_id)
            at = alert.last_data
            to = AlertState.RESOLVED if alert.state is AlertState.FIRING else AlertState.INACTIVE
            if rule is None:  # restored state whose rule is unknown here: minimal record
                self._outbox.append(
                    AlertTransition(
                        fingerprint=key[1],
                        rule_id=alert.rule_id,
                        rule_name=alert.rule_id,
                        severity=alert.severity,
                        from_state=alert.state,
                        to_state=to,
                        at=at,
                        value=alert.value,
                        tenant=alert.tenant,
                        labels=dict(alert.labels),
                        annotations={"reason": reason},
                    )
                )
            else:
                self._outbox.append(
                    self._transition(
                        rule, key[1], alert, alert.state, to, at, None, {}, 0, reason=reason
                    )
                )

    def _transition(
        self,
        rule: Rule,
        fp: str,
        alert: _Alert,
        from_state: AlertState,
        to_state: AlertState,
        at: float,
        values: dict[str, object] | None,
        parts: dict[int, Agg | Sums],
        width: int,
        reason: str | None = None,
    ) -> AlertTransition:
        labels = {**rule.labels, **dict(alert.labels)}
        annotations = {
            # cut to what the alerts stream accepts, so the transition (and the snapshot that
            # may hold it) always reads back
            key: _cut(render(text, rule, alert, labels, values, parts, width))
            for key, text in rule.annotations.items()
        }
        if reason is not None:
            annotations["reason"] = reason
        value = alert.value if values is None else values.get(rule.value_field)
        return AlertTransition(
            fingerprint=fp,
            rule_id=rule.id,
            rule_name=rule.name,
            severity=rule.severity,
            from_state=from_state,
            to_state=to_state,
            at=at,
            value=None if value is None else float(value),  # type: ignore[arg-type]
            tenant=alert.tenant,
            labels=labels,
            annotations=annotations,
            channels=rule.channels,
            escalation=rule.escalation,
            repeat_interval=rule.repeat_interval,
            template=rule.template,
        )

    def _error(self, message: str) -> None:
        if len(self._errors) < MAX_ERRORS:
            self._errors.append(message)
        else:
            self._dropped_errors += 1

    # -- snapshot --------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """The state to restore with ``Evaluator(rules, state)``: deterministic JSON bytes."""
        state = {
            "v": SNAPSHOT_VERSION,
            "evaluated": sorted([w, end] for w, end in self._evaluated.items()),
            "alerts": [
                [fp, *self._alerts[(rid, fp)].to_list()] for rid, fp in sorted(self._alerts)
            ],
            "outbox": [t.to_fields() for t in self._outbox],
            "buffer": [
                [
                    width,
                    start,
                    r.series.name,
                    r.series.type,
                    r.series.tenant,
                    [list(p) for p in r.series.labels],
                    r.revision,
                    base64.b64encode(r.agg.to_bytes()).decode(),
                ]
                for (width, start), bucket in sorted(self._buffer.items())
                for r in sorted(bucket.values(), key=lambda r: _series_key(r.series))
            ],
        }
        return orjson.dumps(state, option=orjson.OPT_SORT_KEYS)

    def _restore(self, blob: bytes) -> None:
        try:
            state = orjson.loads(blob)
            if state.get("v") != SNAPSHOT_VERSION:
                raise ValueError(f"unknown snapshot version {state.get('v')!r}")
            self._evaluated = {int(w): float(end) for w, end in state["evaluated"]}
            for fp, *row in state["alerts"]:
                alert = _Alert.from_list(row)
                self._put((alert.rule_id, fp), alert)
            self._outbox = [AlertTransition.from_fields(f) for f in state["outbox"]]
            for width, start, name, type_, tenant, labels, revision, agg in state["buffer"]:
                series = Series(name, type_, tenant, tuple((k, v) for k, v in labels))
                result = WindowResult(
                    series,
                    int(width),
                    float(start),
                    Agg.from_bytes(base64.b64decode(agg)),
                    int(revision),
                )
                self._buffer.setdefault((int(width), float(start)), {})[series] = result
        except (ValueError, KeyError, TypeError, AssertionError, ContractError) as exc:
            raise ContractError(f"evaluator snapshot is unreadable: {exc}") from exc


def _cut(text: str, limit: int = MAX_ANNOTATION_VALUE) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _series_key(series: Series) -> tuple[str, str, str, tuple[tuple[str, str], ...]]:
    return (series.name, series.type, series.tenant, series.labels)


def _group_text(group: _GroupKey) -> str:
    tenant, labels = group
    parts = [f"tenant={tenant}"] if tenant else []
    parts += [f"{k}={v}" for k, v in labels]
    return "group {" + ", ".join(parts) + "}"


def _ts(seconds: float) -> str:
    return f"{seconds:.0f}" if seconds == int(seconds) else f"{seconds:.3f}"
