"""Figures derived from merged sketches and daily totals: pure functions, no I/O.

- :func:`count_at_most` — how many of an aggregate's values are <= x (exact below 256 values,
  from the KLL rank otherwise, rank error about 1.3 %); histogram buckets and slow-request
  counts come from it.
- :func:`overlap` — the size of the intersection of two distinct-user sets by
  inclusion–exclusion (exact for exact sets, an HLL estimate otherwise).
- :func:`linear_forecast` — ordinary least squares on daily totals, with its one-step-ahead
  backtest error on the past days.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

from datasketches import hll_sketch, hll_union, tgt_hll_type

from qesmon.sketch import EXACT_LIMIT, HLL_LG_K, Agg


def count_at_most(agg: Agg, x: float) -> float:
    """Number of values <= ``x`` in ``agg`` (exact, or count x KLL rank)."""
    if agg.count == 0:
        return 0.0
    if agg.values is not None:
        ordered = sorted(agg.values)
        return float(bisect.bisect_right(ordered, x))
    assert agg.kll is not None
    return agg.count * float(agg.kll.get_rank(x, True))


def cumulative_counts(agg: Agg, bounds: Sequence[float]) -> list[float]:
    """Cumulative counts at each upper bound (sorted ascending), monotone, capped at count."""
    out: list[float] = []
    previous = 0.0
    if agg.values is not None:
        ordered = sorted(agg.values)
        for bound in bounds:
            previous = max(previous, float(bisect.bisect_right(ordered, bound)))
            out.append(previous)
        return out
    for bound in bounds:
        previous = max(previous, min(float(agg.count), round(count_at_most(agg, bound))))
        out.append(previous)
    return out


def overlap(a: Agg, b: Agg) -> int:
    """|users(a) ∩ users(b)|: exact when both are exact sets, else |A| + |B| - |A ∪ B|."""
    if a.users is not None and b.users is not None:
        return len(a.users & b.users)
    union = a.copy()
    union.merge(b)
    return max(0, a.distinct_users() + b.distinct_users() - union.distinct_users())


@dataclass(frozen=True, slots=True)
class Forecast:
    """A forecast of the next ``len(predictions)`` days and how well the method did before.

    ``mae``/``mape`` are the mean absolute (percentage) errors of one-step-ahead predictions
    over the past days, each made from the days before it only; ``None`` when there were too
    few days to backtest (fewer than 4).
    """

    method: str
    predictions: list[float]
    total: float
    mae: float | None
    mape: float | None
    backtest_days: int


def _ols(ys: Sequence[float]) -> tuple[float, float]:
    """Intercept and slope of the least-squares line through (i, ys[i])."""
    n = len(ys)
    if n == 1:
        return ys[0], 0.0
    mean_x = (n - 1) / 2
    mean_y = sum(ys) / n
    sxx = sum((i - mean_x) ** 2 for i in range(n))
    sxy = sum((i - mean_x) * (y - mean_y) for i, y in enumerate(ys))
    slope = sxy / sxx
    return mean_y - slope * mean_x, slope


def linear_forecast(daily: Sequence[float], horizon: int, skip: int = 0) -> Forecast:
    """Forecast ``horizon`` days from a least-squares linear trend over ``daily`` totals.

    The first forecast day is ``skip`` days after the day following the last one given
    (``skip=1`` when today is still running and not part of ``daily``).
    Predictions are clipped at zero (revenue is not negative). The backtest predicts each day
    from at least 3 days before it.
    """
    if not daily:
        return Forecast("ols_linear_trend", [0.0] * horizon, 0.0, None, None, 0)
    intercept, slope = _ols(daily)
    n = len(daily)
    predictions = [max(0.0, intercept + slope * (n + skip + i)) for i in range(horizon)]
    errors: list[float] = []
    pct: list[float] = []
    for t in range(3, n):
        a, b = _ols(daily[:t])
        guess = max(0.0, a + b * t)
        errors.append(abs(guess - daily[t]))
        if daily[t] != 0:
            pct.append(abs(guess - daily[t]) / abs(daily[t]) * 100)
    mae = sum(errors) / len(errors) if errors else None
    mape = sum(pct) / len(pct) if pct else None
    return Forecast("ols_linear_trend", predictions, math.fsum(predictions), mae, mape, len(errors))


class UserUnion:
    """Distinct users of many aggregates, merged in one pass.

    ``Agg.merge`` builds a new HLL union per pair; counting users over hundreds of windows
    is several times cheaper with one exact set (while small) and one ``hll_union``.
    """

    def __init__(self) -> None:
        self.users: set[str] = set()
        self.union: hll_union | None = None

    def add(self, agg: Agg) -> None:
        if agg.users is not None:
            if self.union is None:
                self.users |= agg.users
                if len(self.users) > EXACT_LIMIT:
                    self._to_hll()
            else:
                for user in agg.users:
                    self._single.update(user)
        else:
            assert agg.hll is not None
            if self.union is None:
                self._to_hll()
            assert self.union is not None
            self.union.update(agg.hll)

    def _to_hll(self) -> None:
        self.union = hll_union(HLL_LG_K)
        self._single = hll_sketch(HLL_LG_K, tgt_hll_type.HLL_8)
        for user in self.users:
            self._single.update(user)
        self.users = set()

    def count(self) -> int:
        if self.union is None:
            return len(self.users)
        self.union.update(self._single)
        estimate: float = self.union.get_estimate()
        return round(estimate)
