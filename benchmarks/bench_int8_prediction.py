"""How well a compiled-runtime table with int8 choices predicts mixed allocations, end to end.

    .venv/bin/python benchmarks/bench_int8_prediction.py RUN_DIR [--repeats 15]

For a finished run with ``grid.int8`` on the compiled runtime: a few allocations over the run's
timing table (uniform int8, the calibration anchor; int8 with the attention's query/key/value fp32;
int8 with the feed-forward layers fp32; every other layer fp32; the run's own allocation) are
built as the profiler builds its stand-ins (original weights, int8 rounded to nearest, magnitude
pruned), compiled whole like the run's model, and timed end to end interleaved with the compiled
dense model:

    measured speedup = reference seconds / (compiled dense seconds * allocation / dense ratio),

the reference the table's (its seconds per the profiler).  Prints a markdown table of predicted
and measured speedups per allocation.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def allocations(names: list[str], levels: list[str]) -> dict[str, list[str]]:
    int8 = "q8:0.0000"
    attention = ("attention.self.query", "attention.self.key", "attention.self.value")
    return {
        "uniform int8 (anchor)": [int8] * len(names),
        "int8, q/k/v fp32": ["0.0000" if name.endswith(attention) else int8 for name in names],
        "int8, feed-forward fp32": ["0.0000" if name.endswith(("intermediate.dense", "output.dense")) and "attention" not in name
                                    else int8 for name in names],
        "int8 and fp32 alternating": [int8 if index % 2 == 0 else "0.0000" for index in range(len(names))],
        "the run's allocation": levels,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    from engine.core.measure import time_interleaved
    from engine.export.result import read_result
    from engine.run.context import RunContext
    from engine.runtime.compiled import compile_model
    from engine.runtime.execution import set_threads
    from engine.timing.cpu import stand_in_model

    run = RunContext.from_dir(args.run_dir)
    set_threads(run.profile.hardware.threads)
    loaded, table, inputs = run.loaded, run.table, run.timing_inputs()
    names = loaded.layer_names
    chosen = [row["level"] for row in read_result(args.run_dir)["layers"]]
    dense = compile_model(loaded.model, inputs, loaded.run_model)
    runners = {"dense": lambda: dense(inputs)}
    predicted = {}
    for label, levels in allocations(names, chosen).items():
        model = compile_model(stand_in_model(loaded.model, loaded.model, dict(zip(names, levels))), inputs, loaded.run_model)
        runners[label] = lambda model=model: model(inputs)
        predicted[label] = table.reference_seconds / table.predicted_time(levels)
    stats = time_interleaved(runners, warmup=2, repeats=args.repeats, max_spread=0.5)
    print(f"{args.run_dir}: compiled dense {stats['dense'].median * 1e3:.1f} ms (table base {table.base * 1e3:.1f} ms, "
          f"reference {table.reference_seconds * 1e3:.1f} ms on {table.dense_baseline})\n")
    print("| allocation | int8 layers | predicted | measured | measured / predicted |")
    print("|---|---|---|---|---|")
    for label, levels in allocations(names, chosen).items():
        seconds = table.base * stats[label].median / stats["dense"].median
        measured = table.reference_seconds / seconds
        count = sum(level.startswith("q8:") for level in levels)
        print(f"| {label} | {count}/{len(levels)} | {predicted[label]:.3f}x | {measured:.3f}x | {measured / predicted[label]:.3f} |")


if __name__ == "__main__":
    main()
