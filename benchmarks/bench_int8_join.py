"""Q, K and V as int8 layers, compiled with their GEMMs joined into one and as three.

    .venv/bin/python benchmarks/bench_int8_join.py [--threads 2] [--tokens 2048] [--width 384] [--repeats 30]

Three ``Int8Linear`` (width x width, random weights) read one input, as a transformer's query, key
and value projections do.  Compiled by ``engine.runtime.compiled.compile_model`` (inductor, freezing)
once with ``stack_siblings=True`` (the post-grad pass joins the three ``_int_mm`` calls into one on
the weights side by side, ``engine.runtime.ops.fuse_sibling_int_mm``) and once without; inductor
shares the input quantization either way.  Both outputs are checked equal bit for bit, then timed
interleaved (``engine.core.measure``): medians in ms with the interquartile range.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=2048, help="32 sentences x 64 tokens")
    parser.add_argument("--width", type=int, default=384, help="MiniLM's hidden size")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    import torch
    from torch import nn

    from engine.core.environment import describe_environment
    from engine.core.measure import time_interleaved
    from engine.runtime.compiled import compile_model
    from engine.runtime.int8 import Int8Linear

    torch.set_num_threads(args.threads)

    class QKV(nn.Module):
        def __init__(self):
            super().__init__()
            generator = torch.Generator().manual_seed(0)
            self.q, self.k, self.v = (
                Int8Linear.from_float(torch.randn(args.width, args.width, generator=generator), torch.randn(args.width))
                for _ in range(3)
            )

        def forward(self, x):
            return self.q(x), self.k(x), self.v(x)

    model = QKV().eval()
    x = torch.randn(args.tokens, args.width)
    joined = compile_model(model, x, stack_siblings=True)
    three = compile_model(model, x, stack_siblings=False)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(joined(x), three(x))), "joined and separate GEMMs differ"
        stats = time_interleaved({"three _int_mm": lambda: three(x), "one joined _int_mm": lambda: joined(x)},
                                 warmup=3, repeats=args.repeats)
    environment = describe_environment()
    print(f"{environment.get('cpu')} ({environment.get('isa')}), {args.threads} threads, "
          f"{args.tokens} tokens x {args.width}, 3 projections")
    for name, stat in stats.items():
        print(f"{name:20s} {stat.median * 1e3:7.3f} ms  (IQR {stat.q1 * 1e3:.3f}-{stat.q3 * 1e3:.3f})")
    ratio = stats["three _int_mm"].median / stats["one joined _int_mm"].median
    print(f"joined: {ratio:.2f}x faster")


if __name__ == "__main__":
    main()
