"""Rollup writes with the sketches compressed by lz4 (what the writer sets) against pglz.

    . var/env.sh && .venv/bin/python bench/sink.py [--rows 10000] [--repeat 3]

Creates a database of its own (dropped at the end) and writes rollup rows with the pipeline's
own :class:`pipeline.sinks.RollupWriter` (binary COPY into a stage, one INSERT ... ON CONFLICT
per batch of 500 rows) for two kinds of rows of the pipeline benchmark's workload: 10 s windows
(400 values and 300 users: a ~4 KB sketch) and 1 min windows (2,400 values, 2,000 users: ~8 KB,
as are the hour windows). Sketches over 2 KB are compressed by TimescaleDB. The same rows are
written in turns with the session's ``default_toast_compression`` at lz4 (the writer's
setting) and at pglz (the server's default), ``--repeat`` times each, every run into windows
not written before. Printed: rows/s of each run, the medians and their ratio per kind (wall
time: the compression runs in the server).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import os

from _machine import machine
from _scratch import scratch_database

from pipeline.sinks import RollupWriter
from qesmon.series import Series, WindowResult
from qesmon.sketch import Agg

BATCH = 500


class PglzWriter(RollupWriter):
    """The pipeline's writer with the server's default compression (pglz) for its session."""

    def _connection(self) -> Any:
        conn = super()._connection()
        conn.execute("SET default_toast_compression = 'pglz'")
        conn.commit()
        return conn


def aggregates(rng: random.Random, values: int, users: int, n: int = 20) -> list[Agg]:
    out = []
    for _ in range(n):
        agg = Agg()
        for _ in range(values):
            agg.add(rng.lognormvariate(-2.5, 0.8), rng.random() > 0.02, f"u{rng.randrange(users)}")
        out.append(agg)
    return out


def write(writer: RollupWriter, rows: list[WindowResult]) -> float:
    started = time.perf_counter()
    for i in range(0, len(rows), BATCH):
        writer.write(rows[i : i + BATCH])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(1)
    kinds = {
        "10 s windows": (10, aggregates(rng, 400, 300)),
        "1 min windows": (60, aggregates(rng, 2400, 2000)),
    }
    series = [
        Series("http_request", "performance", f"tenant-{t}", (("endpoint", f"/api/v1/ep{e}"),))
        for t in range(25)
        for e in range(20)
    ]
    print(machine("wall time; Redis and TimescaleDB on the same box"))
    print(f"batches of {BATCH} rows, {args.rows:,} rows per run")
    with scratch_database(os.environ["DATABASE_URL"]) as url:
        writers = {"lz4": RollupWriter(url), "pglz": PglzWriter(url)}
        window = 0
        try:
            for kind, (width, pool) in kinds.items():
                size = statistics.mean(len(a.to_bytes()) for a in pool)
                print(f"{kind} ({size:,.0f}-byte sketches):")
                rates: dict[str, list[float]] = {"lz4": [], "pglz": []}
                for _ in range(args.repeat):
                    for name, writer in writers.items():
                        rows: list[WindowResult] = []
                        while len(rows) < args.rows:
                            start = 1_800_000_000.0 + width * window
                            window += 1
                            rows += [
                                WindowResult(s, width, start, rng.choice(pool)) for s in series
                            ]
                        seconds = write(writer, rows[: args.rows])
                        rates[name].append(args.rows / seconds)
                        print(f"  {name:5} {rates[name][-1]:10,.0f} rows/s")
                lz4, pglz = statistics.median(rates["lz4"]), statistics.median(rates["pglz"])
                print(
                    f"  median of {args.repeat}: lz4 {lz4:,.0f} rows/s, pglz {pglz:,.0f} rows/s: "
                    f"writes with pglz take {lz4 / pglz:.1f}x as long"
                )
        finally:
            for writer in writers.values():
                writer.close()


if __name__ == "__main__":
    main()
