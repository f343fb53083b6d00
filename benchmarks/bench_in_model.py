"""Per-layer time inside the model versus the timing table (measured on the layer alone).

    .venv/bin/python benchmarks/bench_in_model.py RUN_DIR [--rounds 25] [--all]

The timing table times each layer alone on its captured input, so the layer's weights, input and
output buffers stay hot between repeats.  Inside the model the layer runs between other
operators.  This script runs the dense model and the run's final sparse model (sparse kernels in
the pruned layers) alternately, times every prunable layer inside them with forward hooks
(perf_counter before and after the module call), and prints, per layer, the median in-model time
next to the table's time for the same level, plus the sums and the time outside the layers:

    outside = median(end-to-end) - sum over layers of median(in-model layer time).

Where the sums differ, the table's additive prediction differs from the measured model, and the
difference is the profiler's (isolated, hot-cache) view, not the allocation's.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path


def main() -> None:
    import torch
    from bench_end_to_end import open_finished_run, stitched_and_sparse

    from engine.core.grid import DENSE
    from engine.runtime.execution import dense_paths

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--all", action="store_true", help="print every layer, not only those off by > 5%% and 0.1 ms")
    args = parser.parse_args()
    run, result, loaded, inputs = open_finished_run(args.run_dir)
    profile, table = run.profile, run.table
    levels = {row["name"]: row["level"] for row in result["layers"]}
    names = loaded.layer_names
    models = {
        "dense": dense_paths(copy.deepcopy(loaded.model), names, only=table.dense_baseline)[table.dense_baseline].eval(),
        "sparse": stitched_and_sparse(run, loaded, levels)[1],
    }
    layer_seconds = {kind: {name: [] for name in names} for kind in models}
    total_seconds = {kind: [] for kind in models}
    for kind, model in models.items():
        started = {}
        for name in names:
            module = model.get_submodule(name)
            module.register_forward_pre_hook(lambda _m, _a, name=name: started.__setitem__(name, time.perf_counter()))
            module.register_forward_hook(
                lambda _m, _a, _o, name=name, kind=kind: layer_seconds[kind][name].append(time.perf_counter() - started[name])
            )
    warmup = 3
    with torch.no_grad():
        for _ in range(warmup + args.rounds):
            for kind, model in models.items():
                began = time.perf_counter()
                loaded.run_model(model, inputs)
                total_seconds[kind].append(time.perf_counter() - began)

    def median(samples):
        return statistics.median(samples[warmup:])

    rows = {row.name: row for row in table.layers}
    print(f"{args.run_dir}: {args.rounds} rounds, threads {profile.hardware.threads}, dense path {table.dense_baseline}\n")
    print("| layer | level | dense in model ms | dense table ms | level in model ms | level table ms |")
    print("|---|---|---|---|---|---|")
    sums = dict.fromkeys(("dense_model", "dense_table", "level_model", "level_table"), 0.0)
    for name in names:
        row = rows[name]
        values = {
            "dense_model": median(layer_seconds["dense"][name]),
            "dense_table": row.seconds[row.levels.index(DENSE)],
            "level_model": median(layer_seconds["sparse"][name]),
            "level_table": row.seconds[row.levels.index(levels[name])],
        }
        for key, value in values.items():
            sums[key] += value
        gap = abs(values["level_model"] - values["level_table"])
        if args.all or (gap > 1e-4 and gap > 0.05 * values["level_table"]):
            print(f"| {name} | {levels[name]} | " + " | ".join(f"{values[key] * 1e3:.2f}" for key in sums) + " |")
    print("| **sum** | | " + " | ".join(f"**{value * 1e3:.2f}**" for value in sums.values()) + " |")
    dense_total, sparse_total = median(total_seconds["dense"]), median(total_seconds["sparse"])
    print(f"\nend to end: dense {dense_total * 1e3:.2f} ms (table base {table.base * 1e3:.2f}), sparse {sparse_total * 1e3:.2f} ms; "
          f"measured {dense_total / sparse_total:.3f}x, predicted {result['predicted_speedup']:.3f}x")
    print(f"outside the layers: dense model {(dense_total - sums['dense_model']) * 1e3:.2f} ms, "
          f"sparse model {(sparse_total - sums['level_model']) * 1e3:.2f} ms, table (base - prunable) {(table.base - table.prunable) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
