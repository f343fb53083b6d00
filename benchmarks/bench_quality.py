"""One-shot reconstruction ablation at a fixed allocation: where the held-out quality comes from.

Takes a finished run's allocation (search.json) and rebuilds its weights several ways, each scored
on the run's held-out set (mean and 10th-percentile cosine to the dense embeddings, neighbour
recall@10):

    dense-input OBS     every layer's Hessian from the dense model's inputs (the database's cells)
    sequential OBS      each layer's Hessian from the inputs of the model with earlier layers pruned
    + gAP               global AdaPrune on the result (export.gap)

each with Hessians from N calibration sentences (the first N of the run's seeded shuffle, so held-out
text is never among them).  Usage:

    .venv/bin/python benchmarks/bench_quality.py runs/minilm-cpu --samples 128,512,2048 [--gap]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from engine.core.grid import geometric_levels
from engine.core.learning_rate import LR_DECAYS
from engine.database.gap import global_adaprune
from engine.database.sequential import rebuild
from engine.model.data import build_data
from engine.run.context import RunContext


def calibration_inputs(ctx: RunContext, samples: int) -> list:
    profile = replace(ctx.profile, data=replace(ctx.profile.data, calibration_samples=samples))
    return [batch.inputs for batch in build_data(profile, ctx.loaded.tokenizer).calibration]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--samples", default="128,512,2048")
    parser.add_argument("--modes", default="dense-input,sequential")
    parser.add_argument("--gap", action="store_true", help="also score each variant after global AdaPrune")
    parser.add_argument("--gap-passes", type=int, default=2)
    parser.add_argument("--gap-lr", default="1e-5", help="comma-separated: each rate trained from the same start")
    parser.add_argument("--gap-decay", choices=LR_DECAYS, default="constant")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the run's hardware.threads)")
    parser.add_argument("--out", type=Path, default=None, help="append one JSON line per variant here")
    args = parser.parse_args()
    torch.manual_seed(0)
    ctx = RunContext.from_dir(args.run_dir)
    loaded, profile = ctx.loaded, ctx.profile
    torch.set_num_threads(args.threads or profile.hardware.threads)
    levels = dict(zip(loaded.layer_names, json.loads((args.run_dir / "search.json").read_text())["levels"]))
    grid = profile.grid
    grids = {name: geometric_levels(grid.min_sparsity, grid.max_sparsity, grid.steps, grid.include_dense) for name in levels}
    print(f"run {args.run_dir}: {len(levels)} layers; held-out {sum(len(b) for b in ctx.data.heldout)} samples", flush=True)
    for samples in (int(value) for value in args.samples.split(",")):
        inputs = calibration_inputs(ctx, samples)
        for mode in args.modes.split(","):
            started = time.perf_counter()
            weights = rebuild(loaded, inputs, levels, grids, profile.database, sequential=(mode == "sequential"))
            seconds = time.perf_counter() - started
            model = copy.deepcopy(loaded.model)
            with torch.no_grad():
                for name, weight in weights.items():
                    model.get_submodule(name).weight.copy_(weight)
            report(args.out, mode, samples, seconds, ctx.heldout_quality([], model=model))
            for lr in (float(value) for value in args.gap_lr.split(",") if args.gap):
                started = time.perf_counter()
                tuned = global_adaprune(loaded.model, copy.deepcopy(model), loaded.layer_names, inputs, loaded.run_model,
                                        passes=args.gap_passes, lr=lr, decay=args.gap_decay)
                report(args.out, f"{mode}+gap(p{args.gap_passes},lr{lr:g},{args.gap_decay})", samples,
                       time.perf_counter() - started, ctx.heldout_quality([], model=tuned.eval()))


def report(out: Path | None, mode: str, samples: int, seconds: float, quality: dict) -> None:
    line = {"mode": mode, "samples": samples, "seconds": round(seconds, 1), **quality}
    print(json.dumps(line), flush=True)
    if out is not None:
        with out.open("a") as handle:
            handle.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
