"""2:4 sparse against dense Linear layers on an NVIDIA GPU, per shape, and MiniLM end to end.

    .venv/bin/python benchmarks/bench_cuda24.py [--out DIR] [--dtype float16] [--tokens 512 2048 8192]
        [--shapes 384x1536 ...] [--repeats 30] [--warmup 5] [--batch 256] [--seq-len 128] [--no-e2e] [--quick]
        [--graphs]

Part 1, for each layer shape (in x out) and token count: y = x W^T + b with W magnitude-pruned to
2:4, in ``--dtype``, timed with CUDA events in rotated interleaved rounds (engine.core.measure
with engine.timing.cuda_events), after a warm-up:

    dense              F.linear (cuBLAS)
    cusparselt alg 0   cuSPARSELt at its default algorithm
    cusparselt alg k   cuSPARSELt at the alg_id torch._cslt_sparse_mm_search picks (when k != 0)
    cutlass            CUTLASS (SparseSemiStructuredTensor._FORCE_CUTLASS)

each reported as its median with the relative interquartile range, and as speedup = dense / 2:4.
A backend that does not run on this GPU is listed with its error instead.  With ``--graphs`` every
variant is replayed from a CUDA graph (GPU time without the CPU's launch and cuSPARSELt plan set-up),
and the end-to-end part below profiles and verifies with ``hardware.cuda_graphs``.

Part 2, MiniLM (all-MiniLM-L6-v2) at ``--batch`` x ``--seq-len`` tokens: the timing table of the
cuda-2:4 profiler, then, for two allocations,

    faster-only   2:4 in every layer whose measured 2:4 time beats its dense time (what the DP
                  picks at the largest feasible target),
    uniform       2:4 in every layer the kernels can run,

the predicted speedup base / (base - prunable + sum_l t[l][level_l]) and the speedup measured end to
end by verify_cuda24 (dense and 2:4 model interleaved, CUDA events).

Without CUDA, or on a GPU without 2:4 sparse tensor cores, it exits with status 2 and says why.
Writes DIR/bench_cuda24.md, DIR/bench_cuda24.json and DIR/minilm_timings.json (default DIR:
bench-cuda24/).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MINILM_SHAPES = [(384, 384), (384, 1536), (1536, 384)]
BERT_BASE_SHAPES = [(768, 768), (768, 3072), (3072, 768)]
TOKENS = [512, 2048, 8192]
KERNEL_COLUMNS = ("cusparselt alg 0", "cusparselt searched", "cutlass")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-cuda24"), help="folder for the results")
    parser.add_argument("--dtype", choices=["float16", "bfloat16"], default="float16")
    parser.add_argument("--tokens", nargs="+", type=int, default=TOKENS)
    parser.add_argument("--shapes", nargs="+", metavar="INxOUT", help="only these layer shapes, e.g. 768x3072")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--max-spread", type=float, default=0.1)
    parser.add_argument("--batch", type=int, default=256, help="MiniLM end to end: sentences per batch")
    parser.add_argument("--seq-len", type=int, default=128, help="MiniLM end to end: tokens per sentence")
    parser.add_argument("--no-e2e", action="store_true", help="skip the MiniLM end-to-end part")
    parser.add_argument("--quick", action="store_true", help="smoke run: two shapes, one token count, few repeats")
    parser.add_argument("--graphs", action="store_true", help="replay every timed call from a CUDA graph")
    return parser.parse_args()


def shapes_from(args: argparse.Namespace) -> list[tuple[int, int]]:
    if args.shapes:
        return [tuple(int(part) for part in text.lower().split("x")) for text in args.shapes]
    if args.quick:
        return [(384, 1536), (768, 3072)]
    return MINILM_SHAPES + BERT_BASE_SHAPES


def two_four_linear(n_in: int, n_out: int, dtype):
    import torch
    from torch import nn

    from engine.core.grid import NM
    from engine.core.masks import nm_mask

    generator = torch.Generator().manual_seed(n_in * 7919 + n_out)
    layer = nn.Linear(n_in, n_out)
    with torch.no_grad():
        weight = torch.randn(n_out, n_in, generator=generator) / n_in**0.5
        layer.weight.copy_(weight * nm_mask(weight, NM(2, 4)))
        layer.bias.copy_(torch.randn(n_out, generator=generator) * 0.1)
    return layer.to(device="cuda", dtype=dtype).eval()


def measure_shape(n_in: int, n_out: int, tokens: int, dtype, args: argparse.Namespace) -> dict:
    import torch

    from engine.runtime.semi24 import Semi24Kernels
    from engine.timing.cuda_events import CudaEventTimer, calls_for, estimate_seconds
    from engine.timing.cuda24 import graphed_variants
    from engine.core.measure import time_interleaved

    layer = two_four_linear(n_in, n_out, dtype)
    x = torch.randn(tokens, n_in, device="cuda", dtype=dtype)
    with torch.no_grad():
        candidates, notes = Semi24Kernels(dtype).candidates(layer, x)
        variants = {"dense": lambda: layer(x)} | {label: (lambda k=kernel: k(x)) for label, kernel in candidates.items()}
        calls = calls_for(estimate_seconds(variants["dense"]))
        graph_note = ""
        if args.graphs:
            variants, graph_note = graphed_variants(variants)
        stats = time_interleaved(variants, args.warmup, args.repeats, args.max_spread, timer=CudaEventTimer(calls))
    dense = stats["dense"].median
    searched = notes.get("searched_alg_id")
    columns = {
        "cusparselt alg 0": "cusparselt alg 0",
        "cusparselt searched": f"cusparselt alg {searched}" if searched not in (None, 0) else None,
        "cutlass": "cutlass",
    }
    return {
        "shape": [n_in, n_out], "tokens": tokens, "calls_per_sample": calls, "searched_alg_id": searched,
        "failed": notes.get("failed", {}), "search_error": notes.get("search_error"), "graph_note": graph_note,
        "columns": columns, "stats": {label: s.to_json() for label, s in stats.items()},
        "speedup": {column: (dense / stats[label].median if label in stats else None) for column, label in columns.items()},
        "best": max((label for label in candidates), key=lambda label: dense / stats[label].median, default=None),
    }


def shape_markdown(rows: list[dict], dtype: str) -> str:
    lines = [
        f"| layer (in x out) | tokens | dense {dtype} us | " + " | ".join(f"{c} (speedup)" for c in KERNEL_COLUMNS) + " | searched alg |",
        "|---|---|---|" + "---|" * len(KERNEL_COLUMNS) + "---|",
    ]
    for row in rows:
        dense = row["stats"]["dense"]
        cells = []
        for column in KERNEL_COLUMNS:
            speedup, label = row["speedup"][column], row["columns"][column]
            if speedup is None:
                cells.append("failed" if label in row["failed"] else "-")
            else:
                stats = row["stats"][label]
                spread = (stats["q3"] - stats["q1"]) / stats["median"]
                cells.append(f"{stats['median'] * 1e6:.1f} ±{spread:.0%} ({speedup:.2f}x)")
        dense_spread = (dense["q3"] - dense["q1"]) / dense["median"]
        lines.append(
            f"| {row['shape'][0]}x{row['shape'][1]} | {row['tokens']} | {dense['median'] * 1e6:.1f} ±{dense_spread:.0%} | "
            + " | ".join(cells) + f" | {row['searched_alg_id']} |"
        )
    return "\n".join(lines)


def minilm_end_to_end(args: argparse.Namespace, out: Path) -> dict:
    import torch

    from engine.core.profile import HardwareConfig, from_dict
    from engine.core.grid import DENSE, NM
    from engine.core.masks import nm_mask
    from engine.model.sources import load_model, trace_layers
    from engine.backends.cuda24 import verify_cuda24
    from engine.timing.cuda24 import profile_cuda24
    from engine.timing.table import save_table

    loaded = load_model(from_dict({}))
    text = ["the function reads the file and returns the number of lines it has seen " * 16] * args.batch
    inputs = dict(loaded.tokenizer(text, padding="max_length", max_length=args.seq_len, truncation=True, return_tensors="pt"))
    loaded.layers = trace_layers(loaded, inputs)
    hardware = HardwareConfig(
        backend="cuda-2:4", dtype=args.dtype, batch_size=args.batch, warmup=args.warmup, repeats=args.repeats,
        max_spread=args.max_spread, cuda_graphs=args.graphs,
    )
    table = profile_cuda24(loaded, inputs, loaded.layers, hardware)
    save_table(table, out / "minilm_timings.json")
    allocations = {
        "faster-only": {layer.name: "2:4" if "2:4" in layer.levels and layer.seconds_at("2:4") < layer.dense_seconds else DENSE for layer in table.layers},
        "uniform": {layer.name: "2:4" if "2:4" in layer.levels else DENSE for layer in table.layers},
    }
    results = {}
    for name, levels in allocations.items():
        final = copy.deepcopy(loaded.model)
        with torch.no_grad():
            for layer, level in levels.items():
                if level != DENSE:
                    weight = final.get_submodule(layer).weight
                    weight.mul_(nm_mask(weight, NM(2, 4)))
        predicted = table.base / table.predicted_time([levels[layer] for layer in table.names])
        outcome = verify_cuda24(loaded, final, levels, inputs, table, hardware, predicted)
        results[name] = {"layers_at_24": sum(level != DENSE for level in levels.values()), **outcome}
    return {
        "batch": args.batch, "seq_len": args.seq_len, "base": table.base, "prunable": table.prunable,
        "layers": {layer.name: {"levels": dict(zip(layer.levels, layer.seconds)), "note": layer.note} for layer in table.layers},
        "allocations": results,
    }


def end_to_end_markdown(e2e: dict, dtype: str) -> str:
    lines = [
        f"MiniLM, {e2e['batch']} x {e2e['seq_len']} tokens, {dtype}: dense end to end {e2e['base'] * 1e3:.3f} ms, "
        f"Linear layers {e2e['prunable'] / e2e['base']:.0%} of it.",
        "",
        "| allocation | layers at 2:4 | predicted | measured | dense ms | 2:4 ms | max abs difference |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in e2e["allocations"].items():
        lines.append(
            f"| {name} | {row['layers_at_24']} | {row['predicted']:.3f}x | {row['measured']:.3f}x | "
            f"{row['dense_seconds'] * 1e3:.3f} ±{row['dense_spread']:.0%} | {row['sparse_seconds'] * 1e3:.3f} ±{row['sparse_spread']:.0%} | "
            f"{row['max_abs_difference']:.2g} |"
        )
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    from engine.runtime.semi24 import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        print(f"bench_cuda24: needs an NVIDIA GPU with 2:4 sparse tensor cores (compute capability >= 8.0): {reason}", file=sys.stderr)
        return 2
    import torch

    from engine.core.environment import describe_environment
    from engine.runtime.semi24 import DTYPES, Semi24Kernels

    if args.quick:
        args.tokens, args.repeats, args.warmup, args.batch = [2048], 10, 2, 32
    dtype = DTYPES[args.dtype]
    args.out.mkdir(parents=True, exist_ok=True)
    environment = describe_environment()
    backends = Semi24Kernels(dtype).library_report()
    print(f"{environment.get('gpu')} (cc {environment.get('compute_capability')}), torch {torch.__version__}, "
          f"cuSPARSELt {environment.get('cusparselt')}; backends: {backends}", file=sys.stderr)
    rows = []
    for n_in, n_out in shapes_from(args):
        for tokens in args.tokens:
            rows.append(measure_shape(n_in, n_out, tokens, dtype, args))
            best = rows[-1]["best"]
            best_speedup = max((v for v in rows[-1]["speedup"].values() if v is not None), default=float("nan"))
            print(f"{n_in}x{n_out} tokens {tokens}: best {best} {best_speedup:.2f}x", file=sys.stderr)
    e2e = None if args.no_e2e else minilm_end_to_end(args, args.out)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report = [
        f"# 2:4 vs dense on {environment.get('gpu')} ({stamp})",
        "",
        f"`benchmarks/bench_cuda24.py{' --quick' if args.quick else ''}{' --graphs' if args.graphs else ''}`, {args.dtype}, "
        f"CUDA events{', every call replayed from a CUDA graph' if args.graphs else ', eager calls'}, "
        f"{args.repeats} interleaved repeats, median ±relative IQR. Backends: {backends}.",
        "",
        shape_markdown(rows, args.dtype),
    ]
    if e2e is not None:
        report += ["", end_to_end_markdown(e2e, args.dtype)]
    text = "\n".join(report) + "\n"
    (args.out / "bench_cuda24.md").write_text(text)
    record = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "environment": environment,
              "backends": backends, "shapes": rows, "minilm": e2e, "when": stamp}
    (args.out / "bench_cuda24.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
