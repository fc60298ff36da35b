"""The Bytewax dataflow: read -> window -> write rollups / dead letters -> rules -> alerts.

Steps, one Bytewax item per XREAD batch (per-item engine overhead is paid per batch):

* ``read``    :class:`~pipeline.source.RedisStreamSource`, one partition per shard, plus the
  backfill shard (historical events, with a watermark of its own, not evaluated by rules);
* ``window``  a stateful step per shard: parses each read with the shared contract parser
  (rejects become dead letters) and feeds :class:`~pipeline.windows.ShardWindows`
  (snapshotted by Bytewax recovery together with the source position);
* ``rollups`` / ``dead``  to TimescaleDB and the dead-letter stream;
* ``rules``   closed windows and watermarks to the rule evaluator (``pipeline.alerting``),
  alert transitions to the alert store.
"""

from __future__ import annotations

import functools
import logging
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulLogic

from pipeline.alerting import AlertSink, RulesLogic
from pipeline.health import PipelineStats
from pipeline.live import LivePublisher
from pipeline.sinks import DeadLetter, DeadLetterSink, DeadLetterWriter, RollupSink
from pipeline.source import Entry, InFlight, ReadBatch, RedisStreamSource
from pipeline.windows import ShardWindows
from qesmon.columns import EventColumns, parse_entries
from qesmon.contract import Rejection, entry_time, parse_entry
from qesmon.encode import event_fields
from qesmon.series import ROLLUP_WIDTHS, WindowResult
from qesmon.settings import Settings

log = logging.getLogger(__name__)


def _parse(entries: list[Entry], max_entry_bytes: int) -> tuple[EventColumns, list[Rejection]]:
    """The contract parser over one read, with a last line of defence: the parser never raises
    on bad input by design, but should a bug make it raise, the read is parsed entry by entry
    and an entry that still raises becomes a dead letter, so no entry can stop the pipeline."""
    try:
        return parse_entries(entries, max_entry_bytes)
    except Exception:
        log.exception("the contract parser raised on a read; parsing it entry by entry")
    events = EventColumns()
    rejections: list[Rejection] = []
    for entry_id, fields in entries:
        try:
            parsed, rejected = parse_entry(entry_id, fields, max_entry_bytes)
        except Exception as exc:
            log.exception("the contract parser raised on entry %s", entry_id)
            rejections.append(Rejection(entry_id, f"internal parser error: {exc!r}", fields))
            continue
        for event in parsed:
            events.append(event, entry_time(entry_id), entry_id)
        rejections += rejected
    return events, rejections


@dataclass(slots=True)
class WindowOutput:
    """What the window step produced for one read: results, dead letters, the watermark."""

    results: list[WindowResult]
    dead: list[DeadLetter]
    watermark: float


class WindowLogic(StatefulLogic[ReadBatch, WindowOutput, bytes]):
    """Bytewax glue around :class:`ShardWindows` for one shard."""

    def __init__(
        self,
        settings: Settings,
        stats: PipelineStats | None,
        resume: bytes | None,
        inflight: InFlight | None = None,
    ) -> None:
        self.stats = stats
        self.inflight = inflight
        self.max_entry_bytes = settings.pipeline.max_entry_bytes
        self.live = LivePublisher(settings.redis_url, settings.key_prefix)
        if resume is not None:
            self.windows: ShardWindows = pickle.loads(resume)
        else:
            widths = [w for w in ROLLUP_WIDTHS if w > settings.pipeline.window_seconds]
            self.windows = ShardWindows(
                settings.pipeline.window_seconds,
                widths,
                settings.pipeline.watermark_wait,
                settings.pipeline.allowed_lateness,
            )
        # the limits are settings, not state: a restart with new values applies them
        self.windows.max_series_per_tenant = settings.pipeline.max_series_per_tenant
        self.windows.max_series = settings.pipeline.max_series

    def on_item(self, batch: ReadBatch) -> tuple[list[WindowOutput], bool]:
        # Parsing here rather than in a map step of its own: Bytewax runs a map far ahead of
        # the stateful step within an epoch, and parsed events take ~3x the memory of the raw
        # entries they came from (600k events parsed ahead cost ~250 MB).
        events, rejections = _parse(batch.entries, self.max_entry_bytes)
        if self.inflight is not None and batch.weight:
            self.inflight.done(batch.weight)
        windows = self.windows
        late = windows.add(events)
        windows.set_caught_up(batch.caught_up, batch.read_at, bool(batch.entries))
        results = windows.advance(time.time())
        if self.live.due(batch.caught_up):
            self.live.publish(windows.take_touched())
        dead = [DeadLetter(r.source_id, r.error, "invalid", r.fields) for r in rejections]
        limited = windows.take_limited()
        for over in limited:
            dead.append(DeadLetter(over.source_id, over.reason, "limit", event_fields(over.event)))
        for item in late:
            e = item.event
            fields = event_fields(e)
            dead.append(
                DeadLetter(
                    item.source_id,
                    f"late: event time {e.ts:.3f} is in a window that closed for good at watermark "
                    f"{item.watermark:.3f} (allowed lateness {windows.lateness:g} s)",
                    "late",
                    fields,
                )
            )
        stats = self.stats
        if stats is not None:
            stats.set_gauge("heartbeat", time.time())
            stats.incr("events_total", len(events) - len(late))
            if dead:
                stats.incr("dead_letters_total", len(dead))
            if late:
                stats.incr("late_events_total", len(late))
            if limited:
                stats.incr("limited_events_total", len(limited))
                stats.set_note("last_limit", limited[-1].reason)
            stats.set_active_series(batch.stream, windows.active_series)
        output = WindowOutput(results, dead, windows.watermark(time.time()))
        return [output], StatefulLogic.RETAIN

    def snapshot(self) -> bytes:
        return pickle.dumps(self.windows, protocol=pickle.HIGHEST_PROTOCOL)


def build_flow(
    settings: Settings,
    *,
    stats: PipelineStats | None = None,
    batch_size: int = 1000,
    poll_interval: float = 0.05,
    trim_after: float | None = None,
    stop_at: str | None = None,
    stopping: Callable[[], bool] | None = None,
    max_inflight: int | None = 100_000,
) -> Dataflow:
    """The whole dataflow for ``settings``.

    ``trim_after``: seconds behind a snapshot after which stream entries are trimmed (None:
    never trim); ``stop_at``: end after this entry ID (bounded runs, benchmarks); ``stopping``:
    polled by the source, True ends the run gracefully; ``max_inflight``: events the source may
    read ahead of the window step (None for multi-process clusters, see :class:`InFlight`).
    """
    flow = Dataflow("qesmon")
    inflight = InFlight(max_inflight) if max_inflight else None
    source = RedisStreamSource(
        settings.redis_url,
        # a bounded run (stop_at) reads the metric shards only: an empty backfill shard
        # would never reach the stop ID
        settings.streams.metrics
        if stop_at
        else [*settings.streams.metrics, settings.streams.backfill],
        batch_size=batch_size,
        poll_interval=poll_interval,
        trim_after=trim_after,
        stats=stats,
        stop_at=stop_at,
        stopping=stopping,
        inflight=inflight,
    )
    reads = op.input("read", flow, source)
    outputs = op.stateful(
        "window", reads, lambda resume: WindowLogic(settings, stats, resume, inflight)
    )
    results = op.filter_map("rollups", outputs, lambda kv: kv[1].results or None)
    dead_sink = DeadLetterSink(
        functools.partial(
            DeadLetterWriter,
            settings.redis_url,
            settings.streams.dead,
            maxlen=settings.pipeline.dead_letter_maxlen,
            max_bytes=settings.pipeline.dead_letter_max_bytes,
        )
    )
    op.output(
        "write_rollups",
        results,
        RollupSink(
            settings.database_url,
            settings.pipeline.watermark_wait,
            settings.pipeline.window_seconds,
            stats,
            dead=dead_sink,
        ),
    )
    dead = op.filter_map("dead", outputs, lambda kv: kv[1].dead or None)
    op.output("write_dead", dead, dead_sink)
    live = op.filter("live_shards", outputs, lambda kv: kv[0] != settings.streams.backfill)
    to_rules = op.map(
        "to_rules", live, lambda kv: ("rules", (kv[0], kv[1].results, kv[1].watermark))
    )
    transitions = op.stateful("rules", to_rules, lambda resume: RulesLogic(settings, stats, resume))
    alerts = op.filter_map("alerts", transitions, lambda kv: kv[1] or None)
    op.output("write_alerts", alerts, AlertSink(settings))
    return flow
