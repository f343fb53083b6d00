"""A BERT-base-shaped encoder through timings, database and search scoring on a local Ray, 1 and 2 workers.

    .venv/bin/python benchmarks/bench_scale.py                    # 72 layers, 6 sparse levels + dense
    .venv/bin/python benchmarks/bench_scale.py --include 'encoder.layer.0.*' --samples 16 --evaluations 4   # a smoke test
    .venv/bin/python benchmarks/bench_scale.py --profile profiles/minilm-cpu.toml --timings runs/minilm-cpu/timings.json
                                                                  # the default profile instead

The model is ``model.source = "bert-base-random"`` (12 x 768, 72 Linear layers, seeded random
weights: the mechanics, not the accuracy).  Timings are measured once, inline and alone (timing
never runs on an executor).  Then, for 1 and 2 Ray workers (one thread each, on a local Ray
started with exactly that many CPUs), into a fresh run directory each:

* the database: wall time of the build, size on disk (format 2), each worker's peak RSS;
* search scoring: ``--evaluations`` random allocations scored in batches of ``workers`` (as the
  search batches them), evaluations per second after one warm-up batch, and each worker's peak RSS.

The two databases must be byte-identical (checked).  Run it on a quiet machine: on 2 cores, the
2-worker numbers need both cores to themselves.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

from engine.core.profile import RayConfig
from engine.database.store import Database
from engine.executors import open_executor
from engine.run import workers
from engine.run.context import RunContext
from engine.run.pipeline import execute, open_run
from engine.run.stages import database as database_stage

PROFILE = """
[run]
name = "bert-scale"
seed = 0
[model]
source = "bert-base-random"
include = {include}
[data]
calibration_samples = {samples}
heldout_samples = 8
batch_size = 16
seq_len = {seq_len}
[hardware]
runtime = "eager"
reference_paths = ["torch"]
threads = 1
batch_size = 8
warmup = 1
repeats = 3
[grid]
steps = {steps}
[database]
method = "{method}"
[search]
target = 1.0                      # scoring speed is measured, not an allocation: any target the table allows
"""


def build_database(run_dir: Path, count: int) -> dict:
    """Build the run's database on ``count`` Ray workers; seconds, bytes on disk, peak RSS per worker."""
    ctx = RunContext.from_dir(run_dir)
    executor = open_executor("ray", count, count, RayConfig(), shared=[str(run_dir)])
    started = time.perf_counter()
    database_stage.build(ctx, executor)  # H collected once here, then one layer per work item
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "disk_bytes": Database.open(run_dir / "db").disk_bytes(), "peak_rss": executor.peak_rss_bytes}


def score(run_dir: Path, count: int, evaluations: int, seed: int = 0) -> dict:
    """Score ``evaluations`` random allocations on ``count`` Ray workers; evaluations per second, peak RSS."""
    ctx = RunContext.from_dir(run_dir)
    database = Database.open(run_dir / "db")
    rng = random.Random(seed)
    allocations = [[rng.choice(database.levels(name)) for name in ctx.loaded.layer_names] for _ in range(evaluations + count)]
    executor = open_executor("ray", count, count, RayConfig(), shared=[str(run_dir)])
    with executor.scorer(workers.build_scorer, (str(run_dir),)) as scorer:
        scorer.score(allocations[:count], float("inf"))  # warm-up: every worker's reference pass
        started = time.perf_counter()
        for start in range(count, len(allocations), count):
            scorer.score(allocations[start:start + count], float("inf"))
        seconds = time.perf_counter() - started
    return {"evaluations_per_second": evaluations / seconds, "peak_rss": executor.peak_rss_bytes}


def digests(run_dir: Path) -> dict:
    return {name: entry["sha256"] for name, entry in json.loads((run_dir / "db" / "index.json").read_text())["layers"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/spdy-bench-scale"))
    parser.add_argument("--include", default="*", help="glob of the layers to prune (default: all 72)")
    parser.add_argument("--steps", type=int, default=5, help="grid.steps: steps + 1 sparse levels")
    parser.add_argument("--samples", type=int, default=64, help="calibration samples")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--method", default="obs", choices=["magnitude", "obs"])
    parser.add_argument("--evaluations", type=int, default=24)
    parser.add_argument("--profile", type=Path, help="run this profile instead of the BERT-base-shaped one "
                        "(e.g. profiles/minilm-cpu.toml; the layer and grid options then do not apply)")
    parser.add_argument("--timings", type=Path, help="a timings.json already measured for --profile (not measured again)")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    profile = args.profile or args.out / "profile.toml"
    if args.profile is None:
        profile.write_text(PROFILE.format(include=json.dumps([args.include]), samples=args.samples,
                                          seq_len=args.seq_len, steps=args.steps, method=args.method))
    timed = args.out / "timed"
    started = time.perf_counter()
    if args.timings:
        open_run(profile, timed)
        shutil.copy(args.timings, timed / "timings.json")
    else:
        execute(open_run(profile, timed), ("timings",))
        print(f"timings (inline, alone): {time.perf_counter() - started:.1f} s")
    results = {}
    for count in (1, 2):
        run_dir = args.out / f"workers-{count}"
        (run_dir / "db").mkdir(parents=True)
        for name in ("profile.toml", "timings.json"):
            shutil.copy(timed / name, run_dir / name)
        results[count] = {"database": build_database(run_dir, count), "search": score(run_dir, count, args.evaluations)}
        db, search = results[count]["database"], results[count]["search"]
        print(f"{count} Ray worker(s): database {db['seconds']:.1f} s, {db['disk_bytes'] / 2**20:.1f} MiB on disk, "
              f"peak RSS per worker {', '.join(f'{rss / 2**20:.0f}' for rss in db['peak_rss'])} MiB; "
              f"search {search['evaluations_per_second']:.2f} evaluations/s, peak RSS per worker "
              f"{', '.join(f'{rss / 2**20:.0f}' for rss in search['peak_rss'])} MiB")
    assert digests(args.out / "workers-1") == digests(args.out / "workers-2"), "the databases differ"
    print(f"2 vs 1 worker: database build {results[1]['database']['seconds'] / results[2]['database']['seconds']:.2f}x, "
          f"search {results[2]['search']['evaluations_per_second'] / results[1]['search']['evaluations_per_second']:.2f}x; "
          "databases byte-identical: yes")


if __name__ == "__main__":
    main()
