"""Cardinality limits without servers: series per tenant and shard, alert groups per rule,
and live messages that stay small however many series one read touches."""

from __future__ import annotations

import pickle

import orjson

from pipeline.live import messages
from pipeline.windows import ShardWindows
from qesmon.columns import EventColumns
from qesmon.contract import Event
from rules.engine import Evaluator
from tests.rules.helpers import feed, rules_from, window

T0 = 1_700_000_000


def _cols(events: list[tuple[str, str, float]]) -> EventColumns:
    """(tenant, label value, ts) -> one event each of metric ``m``."""
    out = EventColumns()
    for tenant, value, ts in events:
        event = Event("m", 1.0, "custom", ts, tenant, None, (("id", value),), True)
        out.append(event, ts, f"{int(ts * 1000)}-0")
    return out


def test_a_tenant_over_its_series_limit_loses_only_its_new_series() -> None:
    w = ShardWindows(10, (60,), wait=2, lateness=30, max_series_per_tenant=3, max_series=100)
    noisy = [("noisy", f"v{i}", T0 + 1) for i in range(10)]
    calm = [("calm", f"v{i}", T0 + 1) for i in range(2)]
    w.add(_cols(noisy + calm + [("noisy", "v0", T0 + 2)]))
    w.set_caught_up(False, 0.0)
    w.add(_cols([("x", "clock", T0 + 100)]))
    results = w.advance(0.0)
    limited = w.take_limited()
    assert len(limited) == 7
    assert {x.event.labels for x in limited} == {(("id", f"v{i}"),) for i in range(3, 10)}
    assert all("'noisy'" in x.reason and "MAX_SERIES_PER_TENANT" in x.reason for x in limited)
    counted = {
        (r.series.tenant, r.series.labels[0][1]): r.agg.count for r in results if r.width_s == 10
    }
    assert counted == {
        ("noisy", "v0"): 2,
        ("noisy", "v1"): 1,
        ("noisy", "v2"): 1,
        ("calm", "v0"): 1,
        ("calm", "v1"): 1,
    }
    assert w.take_limited() == []


def test_the_shard_limit_holds_across_tenants_and_series_leave_when_their_windows_end() -> None:
    w = ShardWindows(10, (60,), wait=0, lateness=0, max_series_per_tenant=5, max_series=5)
    w.add(_cols([(f"t{i}", "a", T0 + 1) for i in range(8)]))
    w.take_touched()  # counts the pending events into their windows now
    assert w.active_series == 5 and len(w.take_limited()) == 3
    # an hour later every window of those series is final: they leave, new ones get in
    w.add(_cols([(f"u{i}", "a", T0 + 3601) for i in range(5)]))
    w.advance(0.0)
    w.add(_cols([(f"u{i}", "a", T0 + 3605) for i in range(5)]))
    w.advance(0.0)
    w.take_touched()
    assert w.take_limited() == []
    assert w.active_series == 5


def test_limits_survive_a_snapshot_and_old_snapshots_rebuild_the_counts() -> None:
    w = ShardWindows(10, (60,), wait=2, lateness=30, max_series_per_tenant=2)
    w.add(_cols([("t", "a", T0 + 1), ("t", "b", T0 + 1)]))
    w.take_touched()
    restored = pickle.loads(pickle.dumps(w))
    restored.add(_cols([("t", "c", T0 + 2)]))
    restored.take_touched()
    assert len(restored.take_limited()) == 1
    old = pickle.loads(pickle.dumps(w))
    for name in ("_series_windows", "_tenant_series", "limited"):
        delattr(old, name)
    rebuilt = pickle.loads(pickle.dumps(old))
    assert rebuilt.active_series == 2 and rebuilt.max_series_per_tenant is None


def test_a_rule_keeps_at_most_its_limit_of_alert_groups() -> None:
    rules = rules_from("""
id: slow
severity: warning
metric: http_request
group_by: [endpoint]
condition: avg > 1
""")
    ev = Evaluator(rules, max_groups_per_rule=2)
    windows = [window("http_request", T0, [5.0], endpoint=f"/e{i}") for i in range(5)]
    out = feed(ev, windows)
    assert len(out) == 2 and ev.open_alerts == 2
    assert ev.stats.limited == 3
    assert "rule 'slow' already has 2 open alerts" in ev.stats.last_limit
    # the state's count is rebuilt from a snapshot: still at the limit
    again = Evaluator(rules, ev.snapshot(), max_groups_per_rule=2)
    feed(again, [window("http_request", T0 + 10, [5.0], endpoint="/new")])
    assert again.stats.limited == 1


def test_live_messages_stay_under_the_pubsub_bound_and_carry_every_window() -> None:
    encoded = [orjson.dumps({"name": f"m{i}", "labels": {"v": "x" * 300}}) for i in range(5000)]
    out = messages(1.5, encoded, limit=64 * 1024)
    assert len(out) > 10
    assert max(map(len, out)) <= 64 * 1024
    decoded = [orjson.loads(m) for m in out]
    assert all(d["at"] == 1.5 for d in decoded)
    assert [w["name"] for d in decoded for w in d["windows"]] == [f"m{i}" for i in range(5000)]
