"""End-to-end speedup of every method's allocation in a finished run, measured side by side.

    .venv/bin/python benchmarks/bench_end_to_end.py RUN_DIR [RUN_DIR ...] [--repeats 21]

For each run directory (a finished `spdy run`): the dense model on the run's dense baseline path
(the fastest dense path the profiler found), SPDY's final allocation and every baseline's
allocation (stitched from the run's database) are built with sparse kernels in their pruned
layers, each checked against its dense-with-zeros model, and all are timed end to end,
interleaved in one process, on the profile's timing batch and threads:

    measured speedup = median(dense seconds) / median(method seconds).

It also reports the share of the dense time spent outside the prunable layers,
(base - prunable) / base, from the run's timing table: no allocation can remove that part, so it
bounds the reachable speedup at base / (base - prunable).  Prints a markdown table per run.
With ``--magnitude`` each allocation is also built from the original weights pruned by magnitude,
the stand-in the profiler times, and measured in the same rounds (its held-out and loss columns
repeat the allocation's own).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path


def open_finished_run(run_dir: Path):
    """(run, result, loaded model, timing inputs) of a finished run, threads set as profiled."""
    from engine.export.result import read_result
    from engine.run.context import RunContext
    from engine.runtime.execution import set_threads

    run = RunContext.from_dir(run_dir)
    set_threads(run.profile.hardware.threads)
    return run, read_result(run_dir), run.loaded, run.timing_inputs()


def stitched_and_sparse(run, loaded, levels: dict[str, str]):
    """The model stitched at ``levels`` from the run's database, and its sparse-kernel build."""
    from engine.backends.cpu import build_sparse_model, layer_path

    stitched = run.stitcher.copy(levels)
    return stitched, build_sparse_model(stitched, levels, layer_path(run.table))


def measure(run_dir: Path, repeats: int, magnitude: bool = False) -> str:
    import torch

    from engine.backends.verify import VerifyError
    from engine.core.measure import time_interleaved
    from engine.runtime.execution import dense_paths
    from engine.timing.cpu import stand_in_model

    run, result, loaded, inputs = open_finished_run(run_dir)
    profile, table = run.profile, run.table
    names = loaded.layer_names
    allocations = {"SPDY": [row["level"] for row in result["layers"]]}
    predicted = {"SPDY": result["predicted_speedup"]}
    heldout = {"SPDY": result["loss"]["heldout"]}
    calibration = {"SPDY": result["loss"]["calibration"]}
    for name, record in result["baselines"].items():
        if record.get("levels"):
            allocations[name] = record["levels"]
            predicted[name] = record["predicted_speedup"]
            heldout[name] = record["loss"]["heldout"]
            calibration[name] = record["loss"]["calibration"]

    def run_model(model):
        with torch.no_grad():
            return loaded.run_model(model, inputs)

    dense_name = table.dense_baseline or "torch"
    models = {"dense": dense_paths(copy.deepcopy(loaded.model), names, only=dense_name)[dense_name].eval()}
    for method, levels in allocations.items():
        stitched, sparse = stitched_and_sparse(run, loaded, dict(zip(names, levels)))
        expected, got = run_model(stitched), run_model(sparse)
        if not torch.allclose(got, expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max())):
            raise VerifyError(f"{run_dir}: {method}: sparse kernels disagree with the stitched model")
        models[method] = sparse
        if magnitude:
            models[f"{method} (magnitude)"] = stand_in_model(models["dense"], loaded.model, dict(zip(names, levels)))
    stats = time_interleaved({method: (lambda m=model: run_model(m)) for method, model in models.items()},
                             warmup=3, repeats=repeats, max_spread=profile.hardware.max_spread)
    dense = stats["dense"]
    outside = (table.base - table.prunable) / table.base
    lines = [
        f"**{profile.run.name}** ({run_dir}): target {profile.search.target:g}x, dense baseline `{dense_name}` "
        f"{dense.median * 1e3:.1f} ms (IQR {dense.q1 * 1e3:.1f}-{dense.q3 * 1e3:.1f}); table base {table.base * 1e3:.1f} ms, "
        f"prunable {table.prunable * 1e3:.1f} ms, outside the prunable layers {outside:.0%} "
        f"(bound {table.base / (table.base - table.prunable):.2f}x)",
        "",
        "| method | predicted | measured (median) | measured IQR | sparse ms | held-out | calibration loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in [key for key in models if key != "dense"]:
        s = stats[method]
        source = method.removesuffix(" (magnitude)")
        lines.append(
            f"| {method} | {predicted[source]:.3f}x | {dense.median / s.median:.3f}x | "
            f"{dense.q1 / s.q3:.2f}-{dense.q3 / s.q1:.2f}x | {s.median * 1e3:.1f} | {heldout[source]:.4f} | {calibration[source]:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", type=Path, nargs="+")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--magnitude", action="store_true",
                        help="also time each allocation with the profiler's stand-in weights (magnitude-pruned originals)")
    args = parser.parse_args()
    for run_dir in args.run_dirs:
        print(measure(run_dir, args.repeats, args.magnitude), "\n", flush=True)


if __name__ == "__main__":
    main()
