"""The deployed model as a user runs it: `engine.deploy.load(RUN_DIR)` in fresh processes, against the
dense reference paths in fresh processes of their own, alternated.

    .venv/bin/python benchmarks/bench_deploy.py RUN_DIR [--alternations 5] [--calls 10]

Unlike `spdy bench` (one long-lived worker per runtime, interleaved rounds), every measurement here
is a new interpreter that imports, loads (compiles, or reads the compile cache) and times
``--calls`` forward passes of the run's timing batch after one warm-up call; the runtimes take
turns, ``--alternations`` times.  Prints the median per runtime over all calls, the spread of the
per-process medians, and the deployed model's speedup over each dense path.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

RUNTIMES = ("deployed", "onednn", "compiled", "onnxruntime")

CHILD = r"""
import json, sys, time
from pathlib import Path
run_dir, name, calls = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
from engine.run.context import RunContext
from engine.runtime.execution import set_threads, forward
ctx = RunContext.from_dir(run_dir)
set_threads(ctx.profile.hardware.threads)
inputs = ctx.timing_inputs()
if name == "deployed":
    from engine.deploy import load
    model = load(run_dir)
    run = lambda: forward(ctx.loaded, model, inputs)
else:
    from engine.runtime.paths import dense_path
    path = dense_path(name, ctx.loaded.model, ctx.loaded.layer_names, inputs, ctx.loaded.run_model,
                      ctx.profile.hardware.threads, run_dir / "bench")
    run = lambda: path(inputs)
import torch
with torch.no_grad():
    run()
    samples = []
    for _ in range(calls):
        started = time.perf_counter(); run(); samples.append(time.perf_counter() - started)
print("RESULT " + json.dumps(samples))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--alternations", type=int, default=5)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--runtimes", default=",".join(RUNTIMES))
    args = parser.parse_args()
    names = args.runtimes.split(",")
    samples = {name: [] for name in names}
    medians = {name: [] for name in names}
    for alternation in range(args.alternations):
        order = names[alternation % len(names):] + names[: alternation % len(names)]
        for name in order:
            done = subprocess.run([sys.executable, "-c", CHILD, str(args.run_dir), name, str(args.calls)],
                                  capture_output=True, text=True, check=True)
            line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
            values = json.loads(line[len("RESULT "):])
            samples[name].extend(values)
            medians[name].append(statistics.median(values))
            print(f"alternation {alternation + 1} {name}: {statistics.median(values) * 1e3:.1f} ms", file=sys.stderr)
    result = {name: statistics.median(values) for name, values in samples.items()}
    print("| runtime | ms (median of all calls) | per-process medians ms | deployed speedup over it |")
    print("|---|---|---|---|")
    for name in names:
        spread = f"{min(medians[name]) * 1e3:.1f}-{max(medians[name]) * 1e3:.1f}"
        speedup = result[name] / result["deployed"] if "deployed" in result else float("nan")
        print(f"| {name} | {result[name] * 1e3:.1f} | {spread} | {speedup:.3f}x |")


if __name__ == "__main__":
    main()
