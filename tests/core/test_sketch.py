"""Agg: exact below the limit, sketches above, mergeable, serialisable, bulk = one by one."""

from __future__ import annotations

import pickle
import random

from qesmon.contract import Event
from qesmon.sketch import EXACT_LIMIT, Agg
from tests.pipeline.workload import nearest_rank


def events(n: int, seed: int = 1, users: int = 50) -> list[Event]:
    rng = random.Random(seed)
    return [
        Event(
            "m",
            rng.randint(1, 10_000) / 8,
            "custom",
            0.0,
            "",
            f"u{rng.randint(1, users)}",
            (),
            rng.random() > 0.1,
        )
        for _ in range(n)
    ]


def one_by_one(evs: list[Event]) -> Agg:
    agg = Agg()
    for e in evs:
        agg.add(e.value, e.success, e.user)
    return agg


def test_small_windows_are_exact_with_nearest_rank_percentiles() -> None:
    evs = events(200)
    agg = one_by_one(evs)
    values = sorted(e.value for e in evs)
    assert agg.exact
    assert agg.quantiles() == tuple(nearest_rank(values, q) for q in (0.5, 0.95, 0.99))
    assert agg.distinct_users() == len({e.user for e in evs})
    assert (agg.count, agg.errors) == (200, sum(not e.success for e in evs))
    assert (agg.min, agg.max) == (values[0], values[-1])


def test_bulk_add_equals_adding_one_by_one() -> None:
    for n in (1, 37, EXACT_LIMIT, EXACT_LIMIT + 1, 3000):
        evs = events(n, seed=n, users=n)
        bulk = Agg()
        for i in range(0, n, 100):
            part = evs[i : i + 100]
            bulk.add_values(
                [e.value for e in part],
                sum(not e.success for e in part),
                [e.user for e in part if e.user is not None],
            )
        single = one_by_one(evs)
        assert (bulk.count, bulk.errors, bulk.sum, bulk.min, bulk.max) == (
            single.count,
            single.errors,
            single.sum,
            single.min,
            single.max,
        )
        assert bulk.exact == single.exact
        if single.exact:
            assert bulk.quantiles() == single.quantiles()
        assert abs(bulk.distinct_users() - single.distinct_users()) <= 0.03 * n + 1


def test_large_windows_switch_to_sketches_within_their_error() -> None:
    evs = events(20_000, users=5_000)
    agg = one_by_one(evs)
    assert not agg.exact
    values = sorted(e.value for e in evs)
    for q, got in zip((0.5, 0.95, 0.99), agg.quantiles(), strict=True):
        assert nearest_rank(values, q - 0.02) <= got <= nearest_rank(values, min(1.0, q + 0.02))
    truth = len({e.user for e in evs})
    assert abs(agg.distinct_users() - truth) <= 0.05 * truth


def test_merging_equals_counting_together_and_never_averages_percentiles() -> None:
    fast = [Event("m", 0.01, "custom", 0.0, "", None, (), True)] * 100
    slow = [Event("m", 5.0, "custom", 0.0, "", None, (), True)] * 10
    a, b = one_by_one(fast), one_by_one(slow)
    a.merge(b)
    both = one_by_one(fast + slow)
    assert a.quantiles() == both.quantiles() == (0.01, 5.0, 5.0)
    assert a.count == 110 and a.sum == both.sum


def test_serialisation_round_trips_exact_and_sketched_aggregates() -> None:
    for n in (0, 10, 5000):
        agg = one_by_one(events(n, users=n + 1))
        for copy in (Agg.from_bytes(agg.to_bytes()), pickle.loads(pickle.dumps(agg))):
            assert (copy.count, copy.errors, copy.sum, copy.min, copy.max) == (
                agg.count,
                agg.errors,
                agg.sum,
                agg.min,
                agg.max,
            )
            assert copy.quantiles() == agg.quantiles()
            assert copy.distinct_users() == agg.distinct_users()
