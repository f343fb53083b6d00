"""Search evaluations stitched from the compact database against a stitch that costs nothing.

    .venv/bin/python benchmarks/bench_stitch.py runs/minilm-cpu --evaluations 300 --rounds 3

Replays the first ``--evaluations`` evaluations of a finished run's search (its ``eval`` events:
the allocations in order, ``accept`` where the search accepted) through the run's own scorer,
in two ways, alternating block by block for ``--rounds`` rounds:

* ``compact``: the database as the search opens it (format 2, the default 256 MiB LRU of decoded
  levels; a miss decodes the level's non-zeros and bitmask);
* ``decoded``: every level the replay uses decoded in memory beforehand (an unbounded cache), so
  stitching is a pointer swap: a lower bound on the stitch cost of any storage, the dense float32
  format 1 included.

Prints per-evaluation wall time (median and IQR over the rounds' blocks), the time spent in
``Database.get`` and the losses of both (which must be equal).  If ``compact`` is within noise of
``decoded``, the compact format is no slower to stitch than any format could be.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from engine.core.events import read_events
from engine.database.store import Database
from engine.run.context import RunContext


class TimedDatabase(Database):
    """A Database that adds up the seconds spent in ``get`` (cache hits and misses)."""

    seconds = 0.0

    def get(self, layer: str, level: str) -> torch.Tensor:
        started = time.perf_counter()
        try:
            return super().get(layer, level)
        finally:
            self.seconds += time.perf_counter() - started


def replay(ctx: RunContext, scorer, database: TimedDatabase, events: list[dict]) -> tuple[float, float, list[float]]:
    """Score ``events``' allocations in order on ``database``: (seconds, seconds in get, losses)."""
    ctx.stitcher.restore()
    ctx.stitcher.database = database
    database.seconds = 0.0
    losses = []
    started = time.perf_counter()
    for event in events:
        losses.append(scorer.score([event["levels"]], float("inf"))[0])
        if event["accepted"]:
            scorer.accept(event["levels"])
    return time.perf_counter() - started, database.seconds, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--evaluations", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ctx = RunContext.from_dir(args.run_dir)
    torch.set_num_threads(ctx.profile.hardware.threads)
    events = [e for e in read_events(args.run_dir / "events.jsonl") if e["type"] == "eval"][: args.evaluations]
    names = ctx.loaded.layer_names
    decoded = TimedDatabase.open(args.run_dir / "db", cache_bytes=1 << 40)
    used = {(name, level) for event in events for name, level in zip(names, event["levels"])}
    for name, level in sorted(used):
        if level in decoded.levels(name):
            decoded.get(name, level)
    scorer = ctx.scorer()
    replay(ctx, scorer, decoded, events[:10])  # warm-up: the reference pass, the allocator, the caches
    results = {"compact": [], "decoded": []}
    losses = {}
    for _ in range(args.rounds):
        compact = TimedDatabase.open(args.run_dir / "db")  # every round starts from an empty LRU, as a search does
        for mode, database in (("compact", compact), ("decoded", decoded)):
            seconds, in_get, losses[mode] = replay(ctx, scorer, database, events)
            results[mode].append((seconds / len(events), in_get / len(events)))
    ctx.stitcher.restore()
    print(f"{args.run_dir}: {len(events)} evaluations of its search replayed, {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads")
    for mode, rounds in results.items():
        per_eval = [1000 * seconds for seconds, _ in rounds]
        in_get = [1000 * seconds for _, seconds in rounds]
        quartiles = statistics.quantiles(per_eval, n=4) if len(per_eval) > 1 else per_eval * 3
        print(f"  {mode:8s} {statistics.median(per_eval):7.1f} ms per evaluation (IQR {quartiles[0]:.1f}-"
              f"{quartiles[2]:.1f}; blocks {', '.join(f'{t:.1f}' for t in per_eval)}), of it in Database.get "
              f"{statistics.median(in_get):.2f} ms")
    ratio = statistics.median(t for t, _ in results["compact"]) / statistics.median(t for t, _ in results["decoded"])
    print(f"  compact / decoded: {ratio:.3f}; losses equal: {losses['compact'] == losses['decoded']}")


if __name__ == "__main__":
    main()
