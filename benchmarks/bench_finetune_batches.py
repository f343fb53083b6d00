"""`spdy finetune`'s training steps on the real docstring training set: how the batches are formed
(``--group-by-length``) and where the dense block outputs come from (``hidden.DenseStates``).

    .venv/bin/python benchmarks/bench_finetune_batches.py [--threads 2] [--steps 6] [--repeats 6] [--precision fp32]

Three ways to run the recovery recipe's step (``--hidden-weight 1``: the student's forward with its
block outputs recorded, the cosine loss to the dense embedding, the hidden loss, backward, Adam):

    random     batches in a random order, each cut to its longest sentence; a dense forward per step
    grouped    batches of sentences of about one length (``training_data.epoch_batches``)
    cached     grouped, and the dense block outputs read from ``hidden.DenseStates`` (computed once)

Each variant trains its own copy of MiniLM on the first batches of its own epoch order (the profile's
11,000 training sentences, seed 0); one call runs ``--steps`` consecutive steps, and the variants are
timed interleaved (``engine.core.measure``): medians with the IQR, as seconds per epoch of 344 steps.
The one-time cost of the cached states is printed beside them.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="training steps per timed call")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--samples", type=int, default=11000)
    args = parser.parse_args()

    import torch

    from engine.core.environment import describe_environment
    from engine.core.measure import time_interleaved
    from engine.core.profile import load_profile
    from engine.model.losses import LOSSES
    from engine.model.sources import load
    from engine.recovery import hidden
    from engine.recovery.step import batch_loss, train_step
    from engine.recovery.settings import autocast
    from engine.recovery.training_data import epoch_batches, model_outputs, training_set

    torch.set_num_threads(args.threads)
    profile = load_profile(ROOT / "profiles" / "minilm-cpu.toml")
    loaded, data = load(profile)
    train = training_set(profile, {"train_samples": args.samples}, loaded, data)
    settings = {"precision": args.precision, "hidden_weight": 1.0}
    blocks = hidden.block_names(loaded.model, loaded.layer_names)
    started = time.perf_counter()
    cached = hidden.DenseStates.compute(loaded, train, blocks, 32, lambda: autocast(settings))
    compute_seconds = time.perf_counter() - started

    def variant(grouped: bool, use_cache: bool):
        student = copy.deepcopy(loaded.model).train()
        optimizer = torch.optim.Adam(student.parameters(), lr=1e-5, fused=True)  # as spdy finetune
        batches = iter(epoch_batches(train, 32, 0, grouped))

        def steps() -> None:
            for _ in range(args.steps):
                index = next(batches)
                inputs = train.batch(index)
                with torch.no_grad():
                    teacher = model_outputs(loaded, loaded.model, [inputs])  # outside the timed step in a run
                states = cached.batch(index, inputs["attention_mask"].shape[1]) if use_cache else None
                started = time.perf_counter()
                loss = batch_loss(loaded, student, inputs, teacher, None, LOSSES["cosine"], settings, blocks, states)
                train_step(optimizer, loss)
                spent[0] += time.perf_counter() - started

        return steps

    spent = [0.0]

    def timer(call) -> float:
        spent[0] = 0.0
        call()
        return spent[0]

    variants = {"random": variant(False, False), "grouped": variant(True, False), "cached": variant(True, True)}
    stats = time_interleaved(variants, warmup=1, repeats=args.repeats, max_spread=10.0, retries=0, timer=timer)
    environment = describe_environment()
    epoch = -(-len(train) // 32)
    print(f"{environment.get('cpu')} ({environment.get('isa')}), {args.threads} threads, {args.precision}, "
          f"MiniLM recovery steps (hidden weight 1), {len(train)} training sentences, batch 32")
    for name, stat in stats.items():
        per_step = stat.median / args.steps
        print(f"{name:8s} {per_step * 1e3:7.1f} ms/step (IQR {stat.q1 / args.steps * 1e3:.1f}-{stat.q3 / args.steps * 1e3:.1f})"
              f"  ~{per_step * epoch / 60:.1f} min per epoch of {epoch} steps")
    print(f"cached states: computed in {compute_seconds:.1f} s, "
          f"{sum(rows.numel() * rows.element_size() for rows in cached.rows) / 2**20:.0f} MiB")
    print(f"grouped {stats['random'].median / stats['grouped'].median:.2f}x, "
          f"cached {stats['random'].median / stats['cached'].median:.2f}x faster per step than random")


if __name__ == "__main__":
    main()
