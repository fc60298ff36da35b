"""Stored rows, read back and merged, against exact percentiles and distinct counts, at the
precision of each tier and within the error the README states for it.

Percentiles: the rank error of every percentile stays within the tier's bound (KLL's bound
for 99 % of sketches; what is measured stays well under it, ``bench/sketches.py``).
Distinct counts: the bound is a relative standard error, so the property is that no count is
beyond four of them, and a second test holds the root-mean-square error over many sets to
the stated figure. HLL is deterministic for given ids, so both tests use fixed examples
(``derandomize``): a bound in standard errors is, rarely, exceeded by some set, and a test
must not fail on one run in a hundred.
"""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from qesmon.sketch import COMPACT, EXACT_LIMIT, FULL, Agg, Precision, precision_for

QS = (0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 1.0)
#: the README's bounds: (rank error, distinct-count relative standard error)
STATED = {FULL: (0.015, 0.02), COMPACT: (0.03, 0.035)}


def exact_nearest_rank(values: list[float], q: float) -> float:
    """The smallest value with at least q of all values at or below it (by its definition)."""
    ordered = sorted(values)
    for rank, value in enumerate(ordered, start=1):
        if rank >= q * len(ordered):
            return value
    return ordered[-1]


def ranks(values: list[float], x: float) -> tuple[float, float]:
    """The normalised ranks ``x`` spans among ``values``: (share below it, share at or below)."""
    below = sum(1 for v in values if v < x)
    at_or_below = below + sum(1 for v in values if v == x)
    return below / len(values), at_or_below / len(values)


def draw(rng: random.Random, shape: str, n: int) -> list[float]:
    """n values as a monitoring system sees them, at most 6 significant digits."""
    if shape == "latency":  # log-normal seconds, a few ms to seconds
        return [float(f"{rng.lognormvariate(-3, 1.2):.4g}") for _ in range(n)]
    if shape == "amounts":  # money: cents from 1 to 100,000
        return [rng.randint(100, 10_000_000) / 100 for _ in range(n)]
    if shape == "few":  # a handful of distinct values: ties everywhere
        return [rng.choice((0.0, 1.0, 2.5, 100.0, 1e6)) for _ in range(n)]
    if shape == "rising":  # sorted input, the worst order for a compactor
        return [i / 1000 for i in range(n)]
    return [rng.randint(-500_000, 500_000) / 1000 for _ in range(n)]  # "wide", negatives too


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    magnitude=st.sampled_from(range(16)),  # n from 1 to 65,536, log-uniform
    shape=st.sampled_from(["latency", "amounts", "few", "rising", "wide"]),
    rows=st.integers(1, 12),
    user_share=st.sampled_from([0.0, 0.05, 0.5, 1.0]),
    width=st.sampled_from([10, 60, 3600, 86400]),
    seed=st.integers(0, 2**32 - 1),
)
def test_merged_rows_are_within_their_tiers_bounds(
    magnitude: int, shape: str, rows: int, user_share: float, width: int, seed: int
) -> None:
    rng = random.Random(seed)
    n = rng.randint(2**magnitude, 2 ** (magnitude + 1) - 1)
    values = draw(rng, shape, n)
    pool = max(1, int(n * user_share))
    users = [f"{seed}:{rng.randrange(pool)}" for _ in range(n)] if user_share else []
    precision = precision_for(width)
    # the events of one window split over rows written at the tier's precision, read back
    # and merged, as a report over several windows does
    cuts = sorted(rng.sample(range(1, n), min(rows - 1, n - 1))) if n > 1 else []
    merged = Agg(precision)
    for lo, hi in zip([0, *cuts], [*cuts, n], strict=True):
        row = Agg(precision)
        row.add_values(values[lo:hi], 0, users[lo:hi])
        merged.merge(Agg.from_bytes(row.to_bytes()))
    assert merged.count == n and (merged.min, merged.max) == (min(values), max(values))

    got = merged.quantiles(QS)
    if len(values) <= EXACT_LIMIT:
        assert merged.exact
        assert list(got) == [exact_nearest_rank(values, q) for q in QS]
    else:
        # the merged sketch has at least the tier's precision (datasketches' own bound;
        # rows that were exact merge into a full sketch) ...
        assert merged.kll is not None
        assert merged.kll.normalized_rank_error(False) <= precision.rank_error
        # ... and so is what it answers
        for q, x in zip(QS, got, strict=True):
            assert x is not None
            below, at_or_below = ranks(values, x)
            error = max(0.0, below - q, q - at_or_below)
            assert error <= precision.rank_error <= STATED[precision][0], (q, x, error)

    truth = len(set(users))
    estimate = merged.distinct_users()
    if merged.users is not None:
        assert estimate == truth
    else:
        assert abs(estimate - truth) <= 4 * precision.distinct_error * truth, (estimate, truth)


def test_distinct_counts_merged_from_rows_have_the_stated_relative_standard_error() -> None:
    for precision in (FULL, COMPACT):
        errors = []
        for trial in range(300):
            truth = 1000 + 37 * trial  # 1,000 to 12,000 users, over six rows
            row_aggs = [Agg(precision) for _ in range(6)]
            for i in range(truth):
                row_aggs[i % 6].add(1.0, True, f"set{trial}-user{i}")
            merged = Agg(precision)
            for row in row_aggs:
                merged.merge(Agg.from_bytes(row.to_bytes()))
            errors.append((merged.distinct_users() - truth) / truth)
        rms = math.sqrt(sum(e * e for e in errors) / len(errors))
        stated = STATED[precision][1]
        assert precision.distinct_error <= stated
        assert rms <= stated, (precision, rms)
        assert max(map(abs, errors)) <= 4 * precision.distinct_error


def test_a_precision_outside_the_stated_bounds_would_fail_here() -> None:
    """The bounds above are not vacuous: one step coarser breaks both of the README's."""
    coarser = Precision(COMPACT.kll_k // 2, COMPACT.hll_lg_k - 1)
    assert coarser.rank_error > STATED[COMPACT][0]
    assert coarser.distinct_error > STATED[COMPACT][1]
