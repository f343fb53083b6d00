"""int8 Linear kernels, dense and sparse, against the fp32 ones, on MiniLM's layer shapes.

    .venv/bin/python benchmarks/bench_int8_kernels.py [--threads 2] [--tokens 2048] [--repeats 15]
        [--shapes 384x1536 ...] [--sparsities 0.5 0.7 0.9] [--json PATH] [--quick]

For each layer shape (in x out) a random weight, and for each sparsity the same weight
magnitude-pruned, y = x @ W^T + b is timed on ``--tokens`` token-major float32 rows (every variant
takes float activations and returns float32, quantization included) by

    fp32 F.linear          dense, MKL sgemm
    fp32 oneDNN            dense, oneDNN, weight packed once (engine.runtime.dense)
    fp32 CSR s             our Numba CSR kernel (engine.runtime.csr) at sparsity s
    int8 _int_mm           Int8Linear: per-token quantization, torch._int_mm, rescale (eager)
    int8 _int_mm compiled  the same under torch.compile with freezing (quantization and rescale fused)
    int8 qlinear u8        onednn::qlinear_pointwise, uint8 activations, one scale per tensor
    int8 fbgemm dynamic    torch.ao dynamic quantized Linear (per-tensor activations, fbgemm)
    int8 CSR s             SparseInt8Linear (engine.runtime.csr_int8) at sparsity s: codes accumulated
                           in float32 (exact for these weights), the fp32 kernel's FMA loop
    int8 CSR s int16       the same layer forced onto the int16-products / int32-accumulators kernel

(oneDNN's qlinear with int8 activations is left out: it ran ~64 s per call here, a reference path.)
The per-token paths are checked against ``fake_quantized_linear`` (bit for bit) before timing.  All
variants of a shape run interleaved in rotated order (engine.core.measure) after a warm-up; each is
reported as its median in ms with the interquartile range.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPES = [(384, 384), (384, 1536), (1536, 384)]  # MiniLM's Linears (in, out)
SPARSITIES = [0.5, 0.7, 0.9]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=2048, help="32 sentences x 64 tokens")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--shapes", nargs="+", metavar="INxOUT")
    parser.add_argument("--sparsities", nargs="+", type=float, metavar="S")
    parser.add_argument("--quick", action="store_true", help="smoke run: one shape, 3 repeats")
    parser.add_argument("--json", type=Path)
    return parser.parse_args()


def magnitude_pruned(weight, sparsity: float):
    import torch

    flat = weight.flatten().clone()
    flat[torch.argsort(flat.abs())[: int(round(sparsity * flat.numel()))]] = 0.0
    return flat.reshape(weight.shape)


def qlinear_u8(weight, bias, tokens: int):
    """onednn::qlinear_pointwise with asymmetric uint8 activations (per tensor), int8 weights per channel."""
    import torch

    from engine.runtime.int8 import quantize_weight

    q, scale = quantize_weight(weight)
    packed = torch.ops.onednn.qlinear_prepack(q, [tokens, weight.shape[1]])
    zero_points = torch.zeros(weight.shape[0], dtype=torch.int64)

    def run(x):
        low, high = float(x.min().clamp(max=0)), float(x.max().clamp(min=0))
        x_scale = max(high - low, 1e-12) / 255
        x_zero = int(round(-low / x_scale))
        x_u8 = torch.clamp(torch.round(x / x_scale) + x_zero, 0, 255).to(torch.uint8)
        return torch.ops.onednn.qlinear_pointwise(
            x_u8, x_scale, x_zero, packed, scale, zero_points, bias, 1.0, 0, torch.float32, "none", [], ""
        )

    return run


def fbgemm_dynamic(linear):
    import torch

    torch.backends.quantized.engine = "fbgemm"
    return torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear}, dtype=torch.qint8)


def measure_shape(n_in: int, n_out: int, args: argparse.Namespace) -> dict:
    import copy

    import torch
    from torch import nn

    from engine.core.measure import time_interleaved
    from engine.runtime import SparseLinear, dense_linear_paths
    from engine.runtime.csr_int8 import SparseInt8Linear
    from engine.runtime.int8 import Int8Linear, fake_quantized_linear, quantize_weight

    generator = torch.Generator().manual_seed(n_in * 7919 + n_out)
    linear = nn.Linear(n_in, n_out)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(n_out, n_in, generator=generator) / n_in**0.5)
    x = torch.randn(args.tokens, n_in, generator=generator)
    weight, bias = linear.weight.detach(), linear.bias.detach()
    paths = dense_linear_paths(linear, batch_size=args.tokens)
    int8 = Int8Linear.from_linear(linear)
    with torch._inductor.config.patch(freezing=True):
        int8_compiled = torch.compile(copy.deepcopy(int8), fullgraph=True, dynamic=False)
        int8_compiled(x)
    variants = {
        "fp32 F.linear": lambda: paths["torch"](x),
        "fp32 oneDNN": lambda: paths["onednn"](x),
        "int8 _int_mm": lambda: int8(x),
        "int8 _int_mm compiled": lambda: int8_compiled(x),
        "int8 qlinear u8": (lambda run: lambda: run(x))(qlinear_u8(weight, bias, args.tokens)),
        "int8 fbgemm dynamic": (lambda model: lambda: model(x))(fbgemm_dynamic(copy.deepcopy(linear))),
    }
    references = {}
    for sparsity in args.sparsities:
        pruned = magnitude_pruned(weight, sparsity)
        fp32_csr = SparseLinear(pruned, bias, "numba")
        int8_csr = SparseInt8Linear.from_float(pruned, bias=bias)
        variants[f"fp32 CSR {sparsity:.0%}"] = (lambda layer: lambda: layer(x))(fp32_csr)
        int16_csr = SparseInt8Linear.from_float(pruned, bias=bias)
        int16_csr.float_values = torch.empty(0)  # forces the int16/int32 kernel
        variants[f"int8 CSR {sparsity:.0%}"] = (lambda layer: lambda: layer(x))(int8_csr)
        variants[f"int8 CSR {sparsity:.0%} int16 kernel"] = (lambda layer: lambda: layer(x))(int16_csr)
        references[f"int8 CSR {sparsity:.0%}"] = references[f"int8 CSR {sparsity:.0%} int16 kernel"] = quantize_weight(pruned)
    references["int8 _int_mm"] = references["int8 _int_mm compiled"] = (int8.weight_q, int8.weight_scale)
    with torch.no_grad():
        for name, (q, scale) in references.items():
            assert torch.equal(variants[name](), fake_quantized_linear(x, q, scale, bias)), name
        stats = time_interleaved(variants, warmup=args.warmup, repeats=args.repeats)
    return {"shape": [n_in, n_out], "stats": {name: s.to_json() for name, s in stats.items()}}


def markdown(rows: list[dict]) -> str:
    names = list(rows[0]["stats"])
    order = sorted(names, key=lambda name: (not name.startswith("fp32"), "CSR" in name, name))
    lines = ["| variant | " + " | ".join(f"{r['shape'][0]}x{r['shape'][1]} ms (IQR)" for r in rows) + " |"]
    lines.append("|---|" + "---|" * len(rows))
    for name in order:
        cells = []
        for row in rows:
            s = row["stats"][name]
            cells.append(f"{s['median'] * 1e3:.2f} ({s['q1'] * 1e3:.2f}-{s['q3'] * 1e3:.2f}){'' if s['stable'] else ' *'}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    import numba
    import torch

    from engine.core.environment import describe_environment

    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    shapes = [tuple(int(n) for n in shape.split("x")) for shape in args.shapes] if args.shapes else SHAPES
    args.sparsities = args.sparsities or SPARSITIES
    if args.quick:
        shapes, args.repeats, args.warmup = shapes[:1], 3, 1
    rows = [measure_shape(n_in, n_out, args) for n_in, n_out in shapes]
    environment = describe_environment()
    print(f"{args.tokens} tokens, {args.threads} threads (torch and numba), {environment['cpu']} ({environment['isa']}), "
          f"torch {environment['torch']}, numba {environment['numba']}; median ms (IQR) of {args.repeats} "
          f"interleaved repeats; * = IQR over 15% of the median\n")
    print(markdown(rows))
    if args.json:
        record = {"command": " ".join(sys.orig_argv), "date": datetime.datetime.now().isoformat(timespec="seconds"),
                  "tokens": args.tokens, "threads": args.threads, "environment": environment, "rows": rows}
        args.json.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
