"""DP: cost, slack and solve time of ``dp.solve`` against the previous, rounded-up solver.

    .venv/bin/python benchmarks/bench_dp.py                  # every original table, 1.5x 2x 3x, with and without the CLI skip
    .venv/bin/python benchmarks/bench_dp.py --exact          # also the true optimum (integer-microsecond DP; slower)
    .venv/bin/python benchmarks/bench_dp.py --numpy [--table tests/data/spdy_timings/rn50_unstr.txt]  # Numba vs numpy

For each (table, target, skip) the costs are the SPDY prior and ``--random`` vectors c ~ U(0, 1)^L
(seed 0) times the prior, as the search calls the DP.  Reported per row, worst over the cost
vectors:

* cost vs ref: the cost over that of the guaranteed reference, ``solve_rounded_up`` at 100,000
  buckets (times rounded up), in %, for the previous solver at B buckets ("before") and ``solve``
  at B ("after"); negative = cheaper than the reference;
* slack: (budget - unrounded time of the allocation) / budget, in %, median over the vectors;
* ms: median solve time, before and after, interleaved (before, after, before, ...) over
  ``--repeats`` passes of the cost vectors, after a warm-up solve (JIT load).

The CLI skip lists: ``conv1`` and ``fc`` for the ResNets, ``model.0.conv`` for YOLO (rn50_4block
has neither layer, so it runs without).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).parent.parent
TABLES = ROOT / "tests/data/spdy_timings"
CLI_SKIP = {"yolov5s_unstr": ["model.0.conv"], "yolov5m_unstr": ["model.0.conv"], "rn50_4block": []}


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def exact_optimum(dp_reference, times: np.ndarray, costs: np.ndarray, budget: float) -> float:
    """The true optimum on a table whose times are whole microseconds (the original release's are):
    the rounded-up DP with 1-microsecond buckets over the slack has no rounding error at all."""
    usable = np.isfinite(times) & np.isfinite(costs)
    micro = np.where(usable, times * 1e6, np.inf)
    whole = np.round(micro)
    assert np.allclose(micro[usable], whole[usable], atol=1e-6), "times are not whole microseconds"
    fastest = whole.min(axis=1)
    shifted = whole - fastest[:, None]
    slack = math.floor((budget - math.fsum(times[np.arange(len(times)), np.argmin(micro, axis=1)])) * 1e6 + 1e-6)
    while True:
        solution = dp_reference.solve_rounded_up(shifted, costs, float(slack), slack)  # delta = 1 us exactly
        rows = np.arange(len(times))
        if math.fsum(times[rows, solution.choice]) <= budget:
            return solution.cost
        slack -= 1


def sweep(args) -> None:
    from engine.search import dp, dp_reference
    from engine.search.budget import make_problem, prior_costs, scaled_costs
    from engine.timing.table import load_table

    print(f"B = {args.buckets}, reference: solve_rounded_up at 100,000 buckets; cost vectors: prior + {args.random} random")
    print()
    head = "| table | target | skip | L | cost vs ref before (%) | cost vs ref after (%) |"
    head += " vs exact before / after (%) |" if args.exact else ""
    print(head + " slack before (%) | slack after (%) | ms before | ms after |")
    print("|---" * (head.count("|") + 3) + "|")
    worst_before = worst_after = -math.inf
    worst_exact = -math.inf
    ratios = []
    for path in sorted(TABLES.glob("*.txt")):
        table = load_table(path)
        for target in args.targets:
            skips = [[], CLI_SKIP.get(path.stem, ["conv1", "fc"])]
            for skip in skips if skips[1] else skips[:1]:
                problem = make_problem(table, target, skip)
                if target >= problem.max_speedup:
                    print(f"| {path.stem} | {target:g}x | {'CLI' if skip else '-'} | infeasible: max {problem.max_speedup:.3f}x |")
                    continue
                prior = prior_costs(problem.levels, problem.times.shape[1])
                rng = np.random.default_rng(0)
                vectors = [prior] + [scaled_costs(prior, rng.uniform(0, 1, len(problem.levels))) for _ in range(args.random)]
                budget = problem.budget
                gaps_before, gaps_after, slack_before, slack_after, exact_gaps = [], [], [], [], []
                for costs in vectors:
                    reference = dp_reference.solve_rounded_up(problem.times, costs, budget, 100_000).cost
                    before = dp_reference.solve_rounded_up(problem.times, costs, budget, args.buckets)
                    after = dp.solve(problem.times, costs, budget, args.buckets)
                    allocation = problem.allocation(after.choice)
                    assert allocation.predicted_time <= table.base / target and allocation.predicted_speedup >= target
                    gaps_before.append(before.cost / reference - 1)
                    gaps_after.append(after.cost / reference - 1)
                    slack_before.append((budget - before.time) / budget)
                    slack_after.append((budget - after.time) / budget)
                    if args.exact:
                        best = exact_optimum(dp_reference, problem.times, costs, budget)
                        exact_gaps.append((before.cost / best - 1, after.cost / best - 1))
                times = {"before": [], "after": []}
                for _ in range(args.repeats):
                    for costs in vectors:
                        for label, solver in (("before", dp_reference.solve_rounded_up), ("after", dp.solve)):
                            started = time.perf_counter()
                            solver(problem.times, costs, budget, args.buckets)
                            times[label].append(time.perf_counter() - started)
                ms_before, ms_after = (statistics.median(times[k]) * 1e3 for k in ("before", "after"))
                ratios.append(ms_after / ms_before)
                worst_before, worst_after = max(worst_before, *gaps_before), max(worst_after, *gaps_after)
                row = f"| {path.stem} | {target:g}x | {'CLI' if skip else '-'} | {len(problem.searchable)} |"
                row += f" {max(gaps_before) * 100:+.3f} | {max(gaps_after) * 100:+.3f} |"
                if args.exact:
                    eb, ea = max(g[0] for g in exact_gaps), max(g[1] for g in exact_gaps)
                    worst_exact = max(worst_exact, ea)
                    row += f" {eb * 100:+.3f} / {ea * 100:+.3f} |"
                row += f" {statistics.median(slack_before) * 100:.4f} | {statistics.median(slack_after) * 100:.5f} |"
                row += f" {ms_before:.2f} | {ms_after:.2f} |"
                print(row, flush=True)
    print()
    print(f"worst cost vs the 100k rounded-up reference: before {worst_before * 100:+.3f}%, after {worst_after * 100:+.4f}%")
    if args.exact:
        print(f"worst cost vs the true optimum, after: {worst_exact * 100:+.4f}%")
    print(f"solve time after / before: geometric mean {statistics.geometric_mean(ratios):.2f}, "
          f"range {min(ratios):.2f} - {max(ratios):.2f}")


def skip_vs_subset(args) -> None:
    """The CLI skip against the same table without the skipped layers (their dense time in the overhead)."""
    from engine.search import dp, dp_reference
    from engine.search.budget import make_problem, prior_costs, scaled_costs
    from engine.timing.table import load_table

    print()
    print(f"--skip conv1 fc against the table without them, 2x, B = {args.buckets} (cost vectors: prior + {args.random} random)")
    print()
    print("| table | skipped dense time / budget | buckets the rounded-up DP gives them | its searchable layers' buckets |"
          " rounded-up: skip vs subset cost (%) | rounded-up skip = subset at that many buckets | new: skip = subset |")
    print("|---|---|---|---|---|---|---|")
    for name in ("rn18_unstr", "rn50_unstr"):
        table = load_table(TABLES / f"{name}.txt")
        kept = [n for n in table.names if n not in ("conv1", "fc")]
        skipped, subset = make_problem(table, 2.0, ["conv1", "fc"]), make_problem(table.subset(kept), 2.0)
        prior = prior_costs(skipped.levels, skipped.times.shape[1])
        rng = np.random.default_rng(0)
        vectors = [prior] + [scaled_costs(prior, rng.uniform(0, 1, len(skipped.levels))) for _ in range(args.random)]
        dense = [table.layer(n).dense_seconds for n in ("conv1", "fc")]
        delta = skipped.budget / args.buckets
        taken = sum(math.ceil(t / delta) for t in dense)
        left = args.buckets - taken
        diffs, same_old, same_new = [], True, True
        for costs in vectors:
            old_skip = dp_reference.solve_rounded_up(skipped.times, costs, skipped.budget, args.buckets)
            old_subset = dp_reference.solve_rounded_up(subset.times, costs[1:-1], subset.budget, args.buckets)
            narrow = dp_reference.solve_rounded_up(subset.times, costs[1:-1], left * delta, left)  # same delta, what skip leaves
            diffs.append(old_skip.cost / old_subset.cost - 1)
            same_old &= bool(np.array_equal(old_skip.choice[1:-1], narrow.choice))
            new_skip = dp.solve(skipped.times, costs, skipped.budget, args.buckets)
            new_subset = dp.solve(subset.times, costs[1:-1], subset.budget, args.buckets)
            same_new &= bool(np.array_equal(new_skip.choice[1:-1], new_subset.choice))
        print(f"| {name} | {sum(dense) / skipped.budget * 100:.1f}% | {taken} | {left} |"
              f" {min(diffs) * 100:+.3f} to {max(diffs) * 100:+.3f} | {same_old} | {same_new} |")


def numba_vs_numpy(args) -> None:
    from engine.search import dp, dp_reference
    from engine.search.budget import make_problem, prior_costs
    from engine.timing.table import load_table

    table = load_table(args.table)
    problem = make_problem(table, args.targets[0])
    costs = prior_costs(problem.levels, problem.times.shape[1])
    started = time.perf_counter()
    first = dp.solve(problem.times, costs, problem.budget, args.buckets)
    compile_seconds = time.perf_counter() - started

    rng = np.random.default_rng(0)
    fast, slow = [], []
    for _ in range(args.repeats):
        scaled = costs * rng.uniform(0, 1, (costs.shape[0], 1))  # SPDY's c_l * prior, fresh each solve
        for solver, sink in ((dp.solve, fast), (dp_reference.solve_numpy, slow)):
            started = time.perf_counter()
            solution = solver(problem.times, scaled, problem.budget, args.buckets)
            sink.append(time.perf_counter() - started)
        assert solution.time <= problem.budget
    f, s = quartiles(fast), quartiles(slow)
    layers, width = problem.times.shape
    print(f"table {Path(args.table).name}: {layers} layers x {width} levels, B = {args.buckets}, target {args.targets[0]}x")
    print(f"first solve (JIT compile or cache load + solve): {compile_seconds * 1e3:.0f} ms")
    print()
    print("| solver | median (ms) | IQR (ms) |")
    print("|---|---|---|")
    print(f"| numba | {f[1] * 1e3:.2f} | {f[0] * 1e3:.2f} - {f[2] * 1e3:.2f} |")
    print(f"| numpy reference | {s[1] * 1e3:.2f} | {s[0] * 1e3:.2f} - {s[2] * 1e3:.2f} |")
    print(f"\nspeedup (ratio of medians): {s[1] / f[1]:.1f}x over {args.repeats} interleaved solves each")
    assert first.time <= problem.budget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buckets", type=int, default=10_000)
    parser.add_argument("--targets", type=float, nargs="+", default=[1.5, 2.0, 3.0])
    parser.add_argument("--random", type=int, default=3, help="random cost vectors per row, besides the prior")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes over the cost vectors per row")
    parser.add_argument("--exact", action="store_true", help="also the gap to the true optimum")
    parser.add_argument("--numpy", action="store_true", help="time Numba against the numpy reference on --table")
    parser.add_argument("--table", default=str(TABLES / "rn50_unstr.txt"))
    args = parser.parse_args()
    if args.numpy:
        args.repeats = max(args.repeats, 30)
        numba_vs_numpy(args)
    else:
        sweep(args)
        skip_vs_subset(args)


if __name__ == "__main__":
    main()
