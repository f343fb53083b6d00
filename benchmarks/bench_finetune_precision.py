"""One `spdy finetune` training step on MiniLM in fp32 and in bf16 autocast (``--precision``).

    .venv/bin/python benchmarks/bench_finetune_precision.py [--threads 2] [--batch 32] [--tokens 64] [--repeats 10]

The step of the recovery recipe (docs/finetune.md): the student's forward with its block outputs
recorded, the cosine loss to the dense embedding, the dense model's forward for the block
outputs (``--hidden-weight 1``), backward and an Adam step (``engine.recovery.step.batch_loss``), on a batch of random token ids with a
full attention mask (the run's batch shape, 32 x 64).  Each precision has its own student and
optimiser; the two are timed interleaved (``engine.core.measure``): medians with the IQR.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    import torch

    from engine.core.environment import describe_environment
    from engine.core.measure import time_interleaved
    from engine.model.losses import LOSSES
    from engine.model.sources import load_hf, minilm_path
    from engine.recovery import hidden
    from engine.recovery.step import batch_loss, train_step

    torch.set_num_threads(args.threads)
    loaded = load_hf(minilm_path())
    dense = loaded.model.eval()
    linears = [name for name, module in dense.named_modules() if isinstance(module, torch.nn.Linear)]
    blocks = hidden.block_names(dense, linears)
    ids = torch.randint(1000, 20000, (args.batch, args.tokens), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        teacher = loaded.run_model(dense, inputs)

    def training_step(precision: str):
        settings = {"precision": precision, "hidden_weight": 1.0}
        student = copy.deepcopy(dense).train()
        optimizer = torch.optim.Adam(student.parameters(), lr=1e-5)

        def step() -> None:
            loss = batch_loss(loaded, student, inputs, teacher, None, LOSSES["cosine"], settings, blocks)
            train_step(optimizer, loss)

        return step

    stats = time_interleaved({"fp32": training_step("fp32"), "bf16": training_step("bf16")},
                             warmup=2, repeats=args.repeats, max_spread=1.0)
    environment = describe_environment()
    print(f"{environment.get('cpu')} ({environment.get('isa')}), {args.threads} threads, "
          f"MiniLM training step, batch {args.batch} x {args.tokens} tokens, block outputs distilled")
    for name, stat in stats.items():
        print(f"{name:5s} {stat.median * 1e3:8.1f} ms  (IQR {stat.q1 * 1e3:.1f}-{stat.q3 * 1e3:.1f})")
    print(f"bf16: {stats['fp32'].median / stats['bf16'].median:.2f}x faster per step")


if __name__ == "__main__":
    main()
