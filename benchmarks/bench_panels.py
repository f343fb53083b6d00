"""Panel sizing of the sparse kernel: how many non-zeros per row a column panel should aim at.

    .venv/bin/python benchmarks/bench_panels.py [--shapes 768x3072 3072x768 384x1536 1536x384]
        [--sparsities 0.6 0.8 0.9 0.95 0.98] [--aims 32 20 16] [--threads 2] [--tokens 2048]

For each shape (in x out) and sparsity, a random weight pruned by magnitude is stored as column
panels sized, for each aim a, by the rule of ``engine.runtime.csr.CSRWeight.from_dense``
(panel width ~ max(128, a / density), rounded to equal panels), plus fixed 192-wide panels; all run
interleaved with oneDNN's dense GEMM (``OneDNNLinear``), and each prints its speedup over oneDNN
(ratio of medians).  Aims that give the same panel width are timed once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def panel_width(features: int, density: float, aim: float) -> int:
    """The width CSRWeight.from_dense picks when aiming at ``aim`` non-zeros per row and panel."""
    from engine.runtime.csr import MIN_PANEL_WIDTH

    target = max(MIN_PANEL_WIDTH, aim / max(density, 1e-9))
    return -(-features // max(1, round(features / target)))


def main() -> None:
    import numpy as np
    import torch

    from engine.core.masks import magnitude_mask
    from engine.runtime.csr import CSRWeight, spmm
    from engine.runtime.dense import OneDNNLinear
    from engine.runtime.execution import set_threads
    from engine.core.measure import time_interleaved

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["768x3072", "3072x768", "384x1536", "1536x384"])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.6, 0.8, 0.9, 0.95, 0.98])
    parser.add_argument("--aims", nargs="+", type=float, default=[32, 20, 16])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    set_threads(args.threads)
    torch.manual_seed(0)
    print(f"{args.tokens} tokens, {args.threads} threads, {args.repeats} repeats; speedup over oneDNN (panel width)\n")
    print("| shape | sparsity | " + " | ".join(f"aim {a:g}" for a in args.aims) + " | fixed 192 |")
    print("|---|---|" + "---|" * (len(args.aims) + 1))
    for shape in args.shapes:
        features, rows = map(int, shape.split("x"))
        linear = torch.nn.Linear(features, rows)
        x = torch.randn(args.tokens, features)
        xn, bias = x.numpy(), linear.bias.detach().numpy()
        for sparsity in args.sparsities:
            weight = linear.weight.detach() * magnitude_mask(linear.weight.detach(), sparsity)
            widths = {f"aim {a:g}": panel_width(features, 1 - sparsity, a) for a in args.aims} | {"fixed 192": min(features, 192)}
            variants = {"oneDNN": (lambda m=OneDNNLinear.from_linear(linear): m(x))}
            for width in sorted(set(widths.values())):
                csr, out = CSRWeight.from_dense(weight, width), np.empty((args.tokens, rows), np.float32)
                variants[width] = lambda csr=csr, out=out: spmm(csr, xn, bias, out)
            with torch.no_grad():
                stats = time_interleaved(variants, warmup=3, repeats=args.repeats)
            dense = stats["oneDNN"].median
            cells = [f"{dense / stats[width].median:.2f}x ({width})" for width in widths.values()]
            print(f"| {shape} | {sparsity:.0%} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
