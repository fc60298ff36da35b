"""Sketch rows per tier: bytes per row and the errors measured against exact values.

    .venv/bin/python bench/sketches.py [--sizes 100,10000,100000] [--trials 200] [--rows 6]

No servers. For each size n and each tier precision (10 s and 1 min rows: compact; hour and
day rows: full, ``qesmon.sketch.precision_for``), ``--trials`` times: n events with latency-like
values (log-normal seconds, 4 significant digits) and a user each, drawn from n user ids
(UUIDs, about 0.63 n distinct), then

* bytes per row: the stored size (``Agg.to_bytes``) of one row holding all n events, with
  users and without (a performance series has none); and what format version 1 (KLL doubles
  k=200 + HLL_8 lg_k=12, before the compact sketches) wrote for the same row;
* errors, of that row read back, and of the events split over ``--rows`` rows written at the
  tier's precision, read back and merged, as a report does: the rank error of every
  percentile p1 ... p99 (how far q lies from the ranks the answer holds among the exact
  values; the largest of the 99 per trial, which is what the bound is about) and the
  relative error of the distinct count against the exact count.

Printed per tier and size: median bytes; the stated bounds (rank: datasketches' bound for 99 %
of sketches; distinct: the relative standard error); for the row read back and for the merge
of ``--rows`` rows, the rank error's mean and max over the trials and the distinct count's
root-mean-square and max relative error.
Up to 256 values (users) a row is exact and both errors are 0.
"""

from __future__ import annotations

import argparse
import bisect
import math
import random
import statistics
import struct
import sys
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _machine import machine
from datasketches import hll_sketch, kll_doubles_sketch, tgt_hll_type

from qesmon.sketch import COMPACT, FULL, Agg, Precision

TIERS: list[tuple[str, Precision]] = [("10 s, 1 min", COMPACT), ("1 h, 1 day", FULL)]
QS = tuple(q / 100 for q in range(1, 100))  # p1 ... p99
V1_HEADER = struct.calcsize("<BqqdddII")


def events(rng: random.Random, n: int) -> tuple[list[float], list[str]]:
    values = [float(f"{rng.lognormvariate(-3, 1.2):.4g}") for _ in range(n)]
    ids = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(n)]
    return values, [ids[rng.randrange(n)] for _ in range(n)]


def v1_bytes(values: list[float], users: list[str]) -> int:
    """What format version 1 stored for these events (exact parts below 257, as it did)."""
    distinct = set(users)
    if len(values) <= 256:
        size = 8 * len(values)
    else:
        kll = kll_doubles_sketch(200)
        for value in values:
            kll.update(value)
        size = len(kll.serialize())
    if len(distinct) <= 256:
        size += len(str(sorted(distinct)).replace("'", '"').replace(", ", ",")) if distinct else 0
    else:
        hll = hll_sketch(12, tgt_hll_type.HLL_8)
        for user in distinct:
            hll.update(user)
        size += len(hll.serialize_compact())
    return V1_HEADER + size


def rank_error(ordered: list[float], q: float, x: float) -> float:
    below = bisect.bisect_left(ordered, x) / len(ordered)
    at_or_below = bisect.bisect_right(ordered, x) / len(ordered)
    return max(0.0, below - q, q - at_or_below)


def errors(agg: Agg, ordered: list[float], truth: int) -> tuple[float, float]:
    """(largest rank error over p1 ... p99, relative error of the distinct count)."""
    answers = agg.quantiles(QS)
    rank = max(rank_error(ordered, q, x or 0.0) for q, x in zip(QS, answers, strict=True))
    return rank, (agg.distinct_users() - truth) / truth


def measure(n: int, precision: Precision, trials: int, rows: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    sizes: dict[str, list[int]] = {"users": [], "none": [], "v1": []}
    found: dict[str, list[tuple[float, float]]] = {"row": [], "merged": []}
    for _ in range(trials):
        values, users = events(rng, n)
        ordered = sorted(values)
        truth = len(set(users))
        row = Agg(precision)
        row.add_values(values, 0, users)
        blob = row.to_bytes()
        sizes["users"].append(len(blob))
        bare = Agg(precision)
        bare.add_values(values, 0)
        sizes["none"].append(len(bare.to_bytes()))
        sizes["v1"].append(v1_bytes(values, users))
        found["row"].append(errors(Agg.from_bytes(blob), ordered, truth))
        merged = Agg(precision)
        step = math.ceil(n / rows)
        for lo in range(0, n, step):
            part = Agg(precision)
            part.add_values(values[lo : lo + step], 0, users[lo : lo + step])
            merged.merge(Agg.from_bytes(part.to_bytes()))
        found["merged"].append(errors(merged, ordered, truth))
    out: dict[str, Any] = {key: statistics.median(v) for key, v in sizes.items()}
    for how, pairs in found.items():
        ranks = [rank for rank, _ in pairs]
        relative = [distinct for _, distinct in pairs]
        out[how] = (
            f"{statistics.fmean(ranks):.2%}/{max(ranks):.2%} "
            f"{math.sqrt(statistics.fmean(e * e for e in relative)):.2%}/"
            f"{max(map(abs, relative)):.2%}"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,10000,100000", help="values per row")
    parser.add_argument("--trials", type=int, default=200, help="per size (a tenth past 20,000)")
    parser.add_argument("--rows", type=int, default=6, help="rows a window's events are split over")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(machine())
    print(
        "rank: mean/max over the trials of the largest rank error of p1 ... p99; distinct: "
        "root-mean-square/max relative error"
    )
    print(
        f"{'tier':<12} {'precision':<22} {'values':>7} {'trials':>6} {'bytes/row':>9} "
        f"{'no users':>8} {'v1':>6}  {'bounds':<13}  {'one row: rank, distinct':<26}  "
        f"merged from {args.rows} rows: rank, distinct"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        trials = args.trials if size <= 20_000 else max(3, args.trials // 10)
        for name, precision in TIERS:
            m = measure(size, precision, trials, args.rows, args.seed)
            about = f"KLL k={precision.kll_k}, HLL_4 lg_k={precision.hll_lg_k}"
            bounds = f"{precision.rank_error:.2%} {precision.distinct_error:.2%}"
            sizes = f"{m['users']:>9,.0f} {m['none']:>8,.0f} {m['v1']:>6,.0f}"
            print(
                f"{name:<12} {about:<22} {size:>7,} {trials:>6} {sizes}  {bounds:<13}  "
                f"{m['row']:<26}  {m['merged']}"
            )


if __name__ == "__main__":
    main()
