"""The dataflow's rule step: closed windows from every shard -> rule evaluator -> alert store.

All shards' window results meet under one key, so ``group_by`` can merge series from
different shards. The evaluator advances to the lowest watermark among the shards that have
seen data, so a group is evaluated only once every shard has closed that window. Rule files
are re-read on change (``rules.watch.RuleWatcher``); the evaluator's state (pending and firing
alerts) is snapshotted with the rest of the dataflow, so a restart neither fires twice nor
forgets a resolve.
"""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Sequence

from bytewax.operators import StatefulLogic
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from pipeline.health import PipelineStats
from qesmon.alerts import AlertTransition
from qesmon.series import WindowResult
from qesmon.settings import Settings
from rules.engine import Evaluator
from rules.store import AlertStore
from rules.watch import RuleWatcher

log = logging.getLogger(__name__)

RulesInput = tuple[str, list[WindowResult], float]  # shard, closed windows, its watermark


class RulesLogic(StatefulLogic[RulesInput, list[AlertTransition], bytes]):
    """Bytewax glue around :class:`rules.engine.Evaluator` (one instance for all shards)."""

    def __init__(
        self, settings: Settings, stats: PipelineStats | None, resume: bytes | None
    ) -> None:
        self.stats = stats
        self.watcher = RuleWatcher(settings.rules_dir)
        self.status = AlertStore(settings)
        self.watermarks: dict[str, float] = {}
        state: bytes | None = None
        if resume is not None:
            state, self.watermarks = pickle.loads(resume)
        self.evaluator = Evaluator(
            self.watcher.rules,
            state,
            max_groups_per_rule=settings.pipeline.max_alert_groups_per_rule,
        )
        self._limited = 0
        self._publish_status()

    def _publish_status(self) -> None:
        self.status.publish_rule_status(len(self.watcher.rules), self.watcher.errors)
        for error in self.watcher.errors:
            log.warning("rule file problem: %s", error)

    def on_item(self, value: RulesInput) -> tuple[list[list[AlertTransition]], bool]:
        stream, results, watermark = value
        new_rules = self.watcher.poll()
        if new_rules is not None:
            self.evaluator.set_rules(new_rules)
            self._publish_status()
        if results:
            self.evaluator.add(results)
        if math.isfinite(watermark):
            self.watermarks[stream] = watermark
        transitions: list[AlertTransition] = []
        if self.watermarks:
            transitions = self.evaluator.advance(min(self.watermarks.values()))
        limited = self.evaluator.stats.limited - self._limited
        if limited:
            self._limited += limited
            log.warning("%s (%d group(s) this time)", self.evaluator.stats.last_limit, limited)
            if self.stats is not None:
                self.stats.incr("alert_groups_limited_total", limited)
                self.stats.set_note("last_alert_limit", self.evaluator.stats.last_limit)
        errors = self.evaluator.drain_errors()
        if errors:
            for message in errors[:20]:
                log.warning("rule evaluation: %s", message)
            if self.stats is not None:
                self.stats.incr("rule_errors_total", len(errors))
        return ([transitions] if transitions else []), StatefulLogic.RETAIN

    def snapshot(self) -> bytes:
        return pickle.dumps((self.evaluator.snapshot(), dict(self.watermarks)))


class _AlertPartition(StatelessSinkPartition[list[AlertTransition]]):
    def __init__(self, store: AlertStore) -> None:
        self.store = store

    def write_batch(self, items: list[list[AlertTransition]]) -> None:
        batch: Sequence[AlertTransition] = [t for chunk in items for t in chunk]
        self.store.record(batch)

    def close(self) -> None:
        self.store.close()


class AlertSink(DynamicSink[list[AlertTransition]]):
    """Bytewax sink: alert transitions -> ``rules.store.AlertStore`` (stream, then tables)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _AlertPartition:
        return _AlertPartition(AlertStore(self.settings))
