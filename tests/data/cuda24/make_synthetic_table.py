"""Write ``minilm-synthetic.json``: a SYNTHETIC dense / 2:4 timing table for MiniLM (not a measurement).

No GPU was available when the cuda-2:4 backend was written, so the tests of the DP, the search
and the baselines over {dense, 2:4} run on this stand-in.  Replace it with a table measured on a
GPU (``spdy timings profiles/minilm-gpu-24.toml``, see docs/gpu.md) once one exists.

The model of the times (all-MiniLM-L6-v2 at the GPU profile's batch, 256 x 128 = 32768 tokens):

    flops(l)      = 2 * tokens * in_l * out_l
    dense(l)      = launch + flops(l) / rate                          launch = 5 us, rate = 350 TFLOP/s
    two_four(l)   = launch + flops(l) / (rate * gain(l))
    gain(l)       = 1.30 for the FFN shapes (384 -> 1536, 1536 -> 384), 0.90 for 384 x 384

each time then multiplied by its own factor in [0.97, 1.03] (seeded), so no two layers tie.
The gains follow the field notes: 2:4 is 1.1-1.3x faster on large GEMMs and at or below 1x on
small or skinny ones, so here the attention projections are slower at 2:4 and must stay dense.
``base`` = prunable / 0.75 (the Linear layers as 75 % of the model's time).

    .venv/bin/python tests/data/cuda24/make_synthetic_table.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from engine.timing.table import LayerTimes, TimingTable, save_table  # noqa: E402

TOKENS = 256 * 128
LAUNCH = 5e-6
RATE = 350e12
LINEAR_SHARE = 0.75
GAIN = {(384, 384): 0.90, (384, 1536): 1.30, (1536, 384): 1.30}  # (in, out) -> 2:4 speedup of the math
BLOCK = [  # execution order of one encoder block: (name, in, out)
    ("attention.self.query", 384, 384),
    ("attention.self.key", 384, 384),
    ("attention.self.value", 384, 384),
    ("attention.output.dense", 384, 384),
    ("intermediate.dense", 384, 1536),
    ("output.dense", 1536, 384),
]
LABEL = (
    "SYNTHETIC, not a measurement: dense and 2:4 times derived from MiniLM layer FLOPs by "
    "tests/data/cuda24/make_synthetic_table.py (2:4 faster on the FFN shapes, slower on 384x384); "
    "replace with a table measured on a GPU"
)


def synthetic_table(seed: int = 0) -> TimingTable:
    jitter = np.random.default_rng(seed).uniform(0.97, 1.03, size=(6 * len(BLOCK), 2))
    rows = []
    for block in range(6):
        for position, (suffix, inputs, outputs) in enumerate(BLOCK):
            flops = 2.0 * TOKENS * inputs * outputs
            dense = (LAUNCH + flops / RATE) * jitter[block * len(BLOCK) + position, 0]
            two_four = (LAUNCH + flops / (RATE * GAIN[inputs, outputs])) * jitter[block * len(BLOCK) + position, 1]
            rows.append(LayerTimes(f"encoder.layer.{block}.{suffix}", ("0.0000", "2:4"), (round(dense, 9), round(two_four, 9)), "synthetic"))
    prunable = sum(row.dense_seconds for row in rows)
    environment = {
        "source": LABEL, "synthetic": True, "model": "all-MiniLM-L6-v2", "tokens": TOKENS, "dtype": "float16",
        "assumptions": {"launch_seconds": LAUNCH, "dense_flops_per_second": RATE, "two_four_gain": {f"{i}x{o}": g for (i, o), g in GAIN.items()}, "linear_share": LINEAR_SHARE},
    }
    return TimingTable(
        base=round(prunable / LINEAR_SHARE, 9), prunable=prunable, layers=rows, backend="cuda-2:4",
        dense_baseline="synthetic (no GPU measured)", environment=environment, warnings=[LABEL],
    )


if __name__ == "__main__":
    save_table(synthetic_table(), Path(__file__).with_name("minilm-synthetic.json"))
