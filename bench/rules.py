"""Rule evaluation cost per closed window: 10,000 series, 200 rules.

    .venv/bin/python bench/rules.py [--series 10000] [--rules 200] [--events-per-series 20]
                                    [--windows 6]

Builds 50 metrics x 200 series (labels service x endpoint) and 200 rules, four per metric,
mixing the group_by shapes rule authors write (per series, per service, overall, per endpoint
behind a regex matcher) and conditions over error_rate, p95, avg/count and throughput. Each
round feeds one closed 10 s window of every series to the evaluator (``add``) and advances
the watermark past it (``advance``): that is what the pipeline does once per window.

Printed: time per closed window (median of the rounds after a warm-up), per window result,
per condition evaluation; the same with 200 rules on metrics nobody sends (the index makes
it nearly free); and the rule evaluation time per event at ``--events-per-series`` events
per series per window. The rules' share of the pipeline's time is measured where the
pipeline runs, in one run with and without the rules: ``bench/pipeline.py --rules-share``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _machine import machine

from qesmon.series import Series, WindowResult
from qesmon.sketch import Agg
from rules.engine import Evaluator
from rules.loader import parse_text
from rules.model import RuleSet

T0 = 1_800_000_000.0
SERVICES = 10


def make_series(n: int, metrics: int) -> list[Series]:
    per_metric = n // metrics
    endpoints = max(1, per_metric // SERVICES)
    out = []
    for m in range(metrics):
        for i in range(per_metric):
            labels = (("endpoint", f"/api/e{i % endpoints}"), ("service", f"s{i // endpoints}"))
            out.append(Series(f"m{m}", "performance", f"t{i % 7}", labels))
    return out


def make_rules(n: int, metrics: int, *, offset: int = 0) -> RuleSet:
    shapes = [
        ("[service, endpoint]", "error_rate > 5 and count >= 5"),
        ("[service]", "p95 > 1.5"),
        ("[]", "avg > 0.9 and count > 100"),
        ("[endpoint]", "throughput > 1000"),
    ]
    docs = []
    for r in range(n):
        group_by, condition = shapes[r % len(shapes)]
        metric = f"m{(r // len(shapes)) % metrics + offset}"
        selector = metric
        if r % len(shapes) == 3:
            selector = f"{{name: {metric}, labels: {{endpoint: {{regex: '/api/e1.*'}}}}}}"
        docs.append(
            f"- id: r{r}\n  severity: warning\n  metric: {selector}\n"
            f"  group_by: {group_by}\n  condition: {condition}\n"
            f"  annotations: {{summary: '{{{{ value }}}} on {{{{ tenant }}}}'}}\n"
        )
    result = parse_text("".join(docs), Path("bench.yaml"))
    assert not result.errors, result.errors[:3]
    return RuleSet(result.rules)


def make_windows(
    series: list[Series], start: float, events: int, rng: random.Random, churn: bool
) -> list[WindowResult]:
    out = []
    for n, s in enumerate(series):
        agg = Agg()
        # 2 % of the series misbehave for the whole run (their alerts fire once and stay
        # firing); with churn a random 5 % per window (alerts go pending and back constantly)
        bad = rng.random() < 0.05 if churn else n % 50 == 0
        for i in range(events):
            agg.add(rng.uniform(0.05, 2.5 if bad else 0.5), not (bad and i % 4 == 0), None)
        out.append(WindowResult(s, 10, start, agg))
    return out


def run(rules: RuleSet, rounds: list[list[WindowResult]]) -> tuple[list[float], Evaluator, int]:
    """CPU seconds of add + advance per round (CPU time, since the box is shared)."""
    ev = Evaluator(rules)
    times = []
    transitions = 0
    for windows in rounds:
        t = time.process_time()
        ev.add(windows)
        transitions += len(ev.advance(windows[0].end))
        times.append(time.process_time() - t)
    assert not ev.drain_errors()
    return times, ev, transitions


def _median(times: list[float]) -> float:
    return statistics.median(times[1:]) if len(times) > 1 else times[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--rules", type=int, default=200)
    parser.add_argument("--metrics", type=int, default=50)
    parser.add_argument("--events-per-series", type=int, default=20)
    parser.add_argument("--windows", type=int, default=6)
    args = parser.parse_args()

    print(machine("figures are indicative; times are CPU time"))
    rng = random.Random(7)
    series = make_series(args.series, args.metrics)
    rules = make_rules(args.rules, args.metrics)
    print(
        f"workload: {len(series)} series, {len(rules)} rules on {args.metrics} metrics, "
        f"{args.events_per_series} events per series per 10 s window, {args.windows} windows"
    )
    steady = 0.0
    rounds: list[list[WindowResult]] = []
    for churn in (False, True):
        rounds = [
            make_windows(series, T0 + i * 10, args.events_per_series, rng, churn)
            for i in range(args.windows)
        ]
        times, ev, transitions = run(rules, rounds)
        median = _median(times)
        evals = ev.stats.evaluations / len(rounds)
        print(
            "with churn (random 5 % bad series per window):"
            if churn
            else "steady (the same 2 % of series bad throughout):"
        )
        print(f"  first window (cold caches): {times[0] * 1e3:7.1f} ms")
        print(
            f"  per closed window (median): {median * 1e3:7.1f} ms "
            f"= {median / len(series) * 1e6:.1f} µs per window result; "
            f"{evals:.0f} condition evaluations, {median / evals * 1e6:.1f} µs each "
            "(merge + fields + rule-engine + state)"
        )
        print(
            f"  transitions: {transitions} in {len(rounds)} windows, "
            f"{ev.open_alerts} alerts open at the end"
        )
        if not churn:
            steady = median

    idle_rules = make_rules(args.rules, args.metrics, offset=args.metrics)  # unsent metrics
    idle = _median(run(idle_rules, rounds)[0])
    print(
        f"the same 200 rules on metrics nobody sends: {idle * 1e3:.2f} ms per window "
        "(the metric index skips them)"
    )
    events = len(series) * args.events_per_series
    print(
        f"per event (steady, {args.events_per_series} events per series per window): "
        f"{steady / events * 1e6:.3f} µs of rule evaluation (its share of the pipeline's "
        "time: bench/pipeline.py --rules-share)"
    )


if __name__ == "__main__":
    main()
