"""Database build time and mean relative layer output error per method, MiniLM on this CPU.

    .venv/bin/python benchmarks/bench_database.py [--methods magnitude obs adaprune] [--adaprune-blocks 1]
                                                  [--samples 256] [--seq-len 128] [--out docs/bench_database.md (a fragment; fold it into docs/benchmarks.md)]

The default profile's model, data source and database settings (profiles/minilm-cpu.toml: 36
encoder Linear layers, 42 levels, stdlib-docstring sentences), with the calibration size set
here (default 256 samples of 128 tokens, whatever the profile says).  magnitude and obs
build the whole database; adaprune (default settings: 10 passes, batch 32) builds the layers of
the first ``--adaprune-blocks`` transformer blocks at every level, and its full-database time is
extrapolated by the number of layers (every block has the same shapes).  Each build starts from
an empty directory.  Errors are ||W_s X - W X||^2 / ||W X||^2 on the calibration tokens, averaged
over layers and sparse levels.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "profiles" / "minilm-cpu.toml"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def mean_error(errors: dict[str, dict[str, float]], layers: list[str], levels: list[str]) -> float:
    return statistics.fmean(errors[layer][level] for layer in layers for level in levels)


def build(method: str, loaded, calibration, layers, levels, profile, scratch: Path) -> dict:
    from engine.database.store import build_database

    config = dataclasses.replace(profile.database, method=method)
    directory = scratch / method
    shutil.rmtree(directory, ignore_errors=True)
    first_progress: list[float] = []
    started, cpu_started = time.perf_counter(), time.process_time()

    def progress(layer, level, error, done, total):
        if not first_progress:
            first_progress.append(time.perf_counter() - started)
        if done % 200 == 0 or done == total:
            print(f"  {method}: {done}/{total} ({time.perf_counter() - started:.0f} s)", flush=True)

    db = build_database(loaded, calibration, layers, levels, config, directory, on_progress=progress, seed=profile.run.seed)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return {
        "db": db, "seconds": seconds, "cpu_seconds": cpu_seconds, "inputs_seconds": first_progress[0],
        "layers": list(layers), "disk": db.disk_bytes(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["magnitude", "obs", "adaprune"])
    parser.add_argument("--adaprune-blocks", type=int, default=1, help="transformer blocks built with adaprune")
    parser.add_argument("--samples", type=int, default=256, help="calibration samples")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sample (padded)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench_database.md"))
    args = parser.parse_args()

    from engine.core.profile import load_profile
    from engine.model.data import build_data
    from engine.core.grid import level_sparsity
    from engine.model.sources import load_model, trace_layers

    profile = load_profile(PROFILE)
    data_settings = dataclasses.replace(profile.data, calibration_samples=args.samples, seq_len=args.seq_len)
    profile = dataclasses.replace(profile, data=data_settings)
    torch.set_num_threads(profile.hardware.threads)
    loaded = load_model(profile)
    data = build_data(profile, loaded.tokenizer)
    calibration = [batch.inputs for batch in data.calibration]
    layers = [layer.name for layer in trace_layers(loaded, calibration[0], profile.model.include, profile.model.exclude)]
    levels = profile.levels()
    sparse = [level for level in levels if level_sparsity(level) > 0]
    samples = sum(len(batch) for batch in data.calibration)
    real_tokens = int(sum(batch.inputs["attention_mask"].sum() for batch in data.calibration))
    load_before = os.getloadavg()

    scratch = Path(tempfile.mkdtemp(prefix="bench_database_"))
    results = {}
    try:
        for method in args.methods:
            subset = layers
            if method == "adaprune":
                blocks = tuple(f"encoder.layer.{index}." for index in range(args.adaprune_blocks))
                subset = [name for name in layers if name.startswith(blocks)]
            results[method] = build(method, loaded, calibration, subset, levels, profile, scratch)
            print(f"{method}: {results[method]['seconds']:.1f} s for {len(subset)} layers", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    load_after = os.getloadavg()

    common = min((result["layers"] for result in results.values()), key=len)
    rows = []
    for method, result in results.items():
        errors = result["db"].errors()
        built = result["layers"]
        full_seconds = result["seconds"] * len(layers) / len(built)
        note = "" if len(built) == len(layers) else " (extrapolated)"
        spot = [mean_error(errors, built, [level]) for level in ("0.5111", "0.7069", "0.9049")]
        rows.append(
            f"| {method} | {len(built)} x {len(levels)} | {result['seconds']:.1f} | {result['cpu_seconds']:.1f} | "
            f"{result['inputs_seconds']:.1f} | "
            f"{full_seconds / 60:.1f}{note} | {mean_error(errors, common, sparse):.4f} | "
            f"{mean_error(errors, built, sparse):.4f} | {' / '.join(f'{value:.4f}' for value in spot)} | "
            f"{result['disk'] / 2**20:.0f} |"
        )
    settings = profile.database
    text = f"""# Database build benchmark (`benchmarks/bench_database.py`)

    .venv/bin/python benchmarks/bench_database.py --methods {' '.join(args.methods)} --adaprune-blocks {args.adaprune_blocks} --samples {args.samples} --seq-len {args.seq_len}

Measured {datetime.date.today().isoformat()} on {cpu_name()}, {torch.get_num_threads()} torch threads
({os.cpu_count()} CPUs), torch {torch.__version__}, Python {platform.python_version()}.  Load average
(1 min) {load_before[0]:.1f} before and {load_after[0]:.1f} after: when other jobs share the two cores, wall
times are upper bounds of an idle machine's; CPU time (all threads of this process) is the steadier figure.

Model: MiniLM (all-MiniLM-L6-v2), {len(layers)} encoder Linear layers (the pooler is not loaded),
{len(levels)} levels (dense + {len(sparse)} geometric 0.40 ... 0.99).  Calibration: {samples} samples of
{profile.data.seq_len} tokens from the Python stdlib docstrings (`engine.model.data`, source
`stdlib-docstrings`), {real_tokens} real tokens after dropping padding.  Settings: obs damp
{settings.damp}, block {settings.block_size}; adaprune {settings.passes} passes, batch {settings.batch_size},
lr {settings.lr}.  adaprune builds the layers of the first {args.adaprune_blocks} block(s) only; its
full time is extrapolated by layer count.

Error = ||W_s X - W X||^2 / ||W X||^2 on the calibration tokens, mean over layers and the
{len(sparse)} sparse levels ("common layers": the layers every method built).  "first level after":
seconds until the first (layer, level) was done (model passes for H or the first block's inputs).

| method | layers x levels built | build wall (s) | build CPU (s) | first level after (s) | full database (min) | mean error, common layers | mean error, built layers | mean error at 0.51 / 0.71 / 0.90 | disk (MiB) |
|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}
"""
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
