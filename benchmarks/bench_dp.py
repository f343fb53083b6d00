"""DP solve time: the Numba solver against the plain numpy reference, side by side in one process.

    .venv/bin/python benchmarks/bench_dp.py [--table tests/data/spdy_timings/rn50_unstr.txt] [--repeats 30]

JIT compilation (or loading it from numba's cache) is timed separately; solves are interleaved
(numba, numpy, numba, ...) so drift hits both alike. Prints medians with the interquartile range.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default=str(Path(__file__).parent.parent / "tests/data/spdy_timings/rn50_unstr.txt"))
    parser.add_argument("--target", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--buckets", type=int, default=10_000)
    args = parser.parse_args()

    started = time.perf_counter()
    from engine.search import dp  # noqa: E402  (import time is part of nothing we report)
    from engine.search.budget import make_problem, prior_costs
    from engine.timing.table import load_table

    table = load_table(args.table)
    problem = make_problem(table, args.target)
    costs = prior_costs(problem.levels, problem.times.shape[1])
    started = time.perf_counter()
    first = dp.solve(problem.times, costs, problem.budget, args.buckets)
    compile_seconds = time.perf_counter() - started

    rng = np.random.default_rng(0)
    fast, slow = [], []
    for _ in range(args.repeats):
        scaled = costs * rng.uniform(0, 1, (costs.shape[0], 1))  # SPDY's c_l * prior, fresh each solve
        for solver, sink in ((dp.solve, fast), (dp.solve_numpy, slow)):
            started = time.perf_counter()
            solution = solver(problem.times, scaled, problem.budget, args.buckets)
            sink.append(time.perf_counter() - started)
        assert solution.time <= problem.budget
    f, s = quartiles(fast), quartiles(slow)
    layers, width = problem.times.shape
    print(f"table {Path(args.table).name}: {layers} layers x {width} levels, B = {args.buckets}, target {args.target}x")
    print(f"first solve (JIT compile or cache load + solve): {compile_seconds * 1e3:.0f} ms")
    print()
    print("| solver | median (ms) | IQR (ms) |")
    print("|---|---|---|")
    print(f"| numba | {f[1] * 1e3:.2f} | {f[0] * 1e3:.2f} - {f[2] * 1e3:.2f} |")
    print(f"| numpy reference | {s[1] * 1e3:.2f} | {s[0] * 1e3:.2f} - {s[2] * 1e3:.2f} |")
    print(f"\nspeedup (ratio of medians): {s[1] / f[1]:.1f}x over {args.repeats} interleaved solves each")
    assert first.time <= problem.budget


if __name__ == "__main__":
    main()
