"""Does the timing table predict the pruned model's measured speed?  Layers timed alone or in the model.

    .venv/bin/python benchmarks/bench_profiler.py PROFILE.toml [--rounds 15] [--random 3] [--targets 1.25 1.5 2.0]
        [--tables DIR]

In one process, on the profile's model, timing batch and threads:

1. the timing table is measured twice, with ``hardware.layer_timing`` "alone" and "in-model"
   (or loaded from ``--tables``, where they are kept);
2. on each table, allocations are found at every target the table can meet: uniform, the prior
   DP solution, and ``--random`` DP solutions under per-layer coefficients c ~ U(0, 1), the
   candidates SPDY's search starts from (seeded by the profile's seed);
3. every allocation is built with sparse kernels (weights pruned by magnitude: a kernel's time
   depends on how many non-zeros it has and where, not on their values) and all of them are timed
   end to end with the dense model on the table's dense path, interleaved, in rotated rounds:

       measured speedup = median(dense seconds) / median(allocation seconds);

4. it prints each allocation's predicted speedup on both tables next to the measured one, and per
   table the ratio measured / predicted over the allocations found on it (median and worst):
   the speedup guarantee holds when that ratio is at least 1.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import time
from pathlib import Path


def main() -> None:
    import numpy as np
    import torch

    from engine.search.baselines import uniform
    from engine.search.budget import make_problem, prior_costs, scaled_costs
    from engine.core.profile import load_profile
    from engine.search.dp import InfeasibleTarget
    from engine.run.context import RunContext
    from engine.runtime.execution import dense_paths, set_threads
    from engine.timing.cpu import profile_cpu, stand_in_model
    from engine.core.measure import time_interleaved
    from engine.timing.table import load_table, save_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--rounds", type=int, default=15, help="end-to-end rounds (every allocation once per round)")
    parser.add_argument("--random", type=int, default=3, help="random-coefficient DP solutions per table and target")
    parser.add_argument("--targets", type=float, nargs="+", default=[1.25, 1.5, 2.0])
    parser.add_argument("--tables", type=Path, help="keep the two tables here (alone.json, in-model.json) and reuse them")
    args = parser.parse_args()

    profile = load_profile(args.profile)
    run = RunContext(profile, Path("."))
    loaded = run.loaded
    inputs, layers, levels = run.timing_inputs(), run.timed_layers, profile.levels()
    set_threads(profile.hardware.threads)
    names = [layer.name for layer in layers]

    tables, seconds = {}, {}
    for mode in ("alone", "in-model"):
        saved = args.tables / f"{mode}.json" if args.tables else None
        if saved is not None and saved.exists():
            tables[mode], seconds[mode] = load_table(saved), float("nan")
            continue
        hardware = dataclasses.replace(profile.hardware, layer_timing=mode)
        began = time.perf_counter()
        tables[mode] = profile_cpu(loaded, inputs, layers, levels, hardware, seed=profile.run.seed)
        seconds[mode] = time.perf_counter() - began
        if saved is not None:
            saved.parent.mkdir(parents=True, exist_ok=True)
            save_table(tables[mode], saved)

    rng = np.random.default_rng(profile.run.seed)
    found: dict[tuple[str, ...], list[str]] = {}  # allocation -> how it was found
    for mode, table in tables.items():
        for target in args.targets:
            problem = make_problem(table, target)
            try:
                candidates = {"uniform": uniform(problem), "prior": problem.solve()}
            except InfeasibleTarget:
                continue
            prior = prior_costs(problem.levels, problem.times.shape[1])
            for index in range(args.random):
                candidates[f"random {index + 1}"] = problem.solve(scaled_costs(prior, rng.uniform(0, 1, len(names))))
            for how, allocation in candidates.items():
                found.setdefault(tuple(allocation.levels), []).append(f"{mode} {target:g}x {how}")

    dense_name = tables["in-model"].dense_baseline
    dense_model = dense_paths(copy.deepcopy(loaded.model), names, only=dense_name)[dense_name].eval()
    models = {"dense": dense_model}
    for index, allocation in enumerate(found):
        models[index] = stand_in_model(dense_model, loaded.model, dict(zip(names, allocation)))

    def forward(model):
        with torch.no_grad():
            return loaded.run_model(model, inputs)

    stats = time_interleaved({key: (lambda m=model: forward(m)) for key, model in models.items()},
                             warmup=2, repeats=args.rounds, max_spread=profile.hardware.max_spread)
    dense = stats["dense"].median

    print(f"{args.profile}: {len(names)} layers x {len(levels)} levels, threads {profile.hardware.threads}, "
          f"dense path {dense_name}, end to end {args.rounds} rounds, dense {dense * 1e3:.1f} ms "
          f"(IQR {stats['dense'].q1 * 1e3:.1f}-{stats['dense'].q3 * 1e3:.1f})\n")
    for mode, table in tables.items():
        print(f"- table {mode}: measured in {seconds[mode]:.0f} s; base {table.base * 1e3:.1f} ms, prunable "
              f"{table.prunable * 1e3:.1f} ms, outside {(table.base - table.prunable) * 1e3:.1f} ms")
    print("\n| allocation | found as | predicted (alone) | predicted (in-model) | measured | measured IQR |")
    print("|---|---|---|---|---|---|")
    ratios: dict[str, list[float]] = {mode: [] for mode in tables}
    for index, (allocation, how) in enumerate(found.items()):
        s = stats[index]
        measured = dense / s.median
        predicted = {mode: table.base / table.predicted_time(list(allocation)) for mode, table in tables.items()}
        for mode in tables:
            if any(entry.startswith(mode + " ") for entry in how):
                ratios[mode].append(measured / predicted[mode])
        print(f"| {index} | {'; '.join(how)} | {predicted['alone']:.3f}x | {predicted['in-model']:.3f}x | "
              f"{measured:.3f}x | {stats['dense'].q1 / s.q3:.2f}-{stats['dense'].q3 / s.q1:.2f}x |")
    print("\n| table | allocations found on it | measured / predicted, median | worst | best |")
    print("|---|---|---|---|---|")
    for mode, values in ratios.items():
        print(f"| {mode} | {len(values)} | {statistics.median(values):.3f} | {min(values):.3f} | {max(values):.3f} |")


if __name__ == "__main__":
    main()
