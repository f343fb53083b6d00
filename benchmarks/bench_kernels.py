"""Unstructured-sparse Linear kernels against the dense paths a real model could run instead.

    .venv/bin/python benchmarks/bench_kernels.py [--quick] [--threads 2] [--tokens 2048] [--json PATH]
        [--shapes 768x3072 ...] [--sparsities 0.9 ...]

For each layer shape (in x out) and sparsity, a random weight is magnitude-pruned to exactly that
sparsity and y = x @ W^T + b is timed, fp32, on ``--tokens`` token-major rows, by

    F.linear         dense, MKL sgemm
    oneDNN           dense, oneDNN GEMM on dense tensors, weight packed once (engine.runtime.dense)
    oneDNN+convert   dense, torch.utils.mkldnn style: x.to_mkldnn(), mkldnn_linear, .to_dense()
    oneDNN GEMM only dense, input converted beforehand, output left in mkldnn layout: a reference
                     for the GEMM alone, which no model with dense activations gets (never "best")
    Numba CSR        engine.runtime.SparseLinear(kernel="numba"), the tiled token-major kernel
    torch CSR        engine.runtime.SparseLinear(kernel="torch-csr"), torch.addmm on a CSR tensor

All six run interleaved in rotated order (engine.core.measure), after a warm-up, and each is
reported as its median with the relative interquartile range.  Speedups are ratios of medians
against oneDNN and against the best dense path a model could run (min of the first three).  The
CPU time other processes took during a row is recorded; before each attempt the benchmark waits
(up to ``--wait-quiet`` seconds) for them to take at most ``--max-foreign`` of the machine, and a
row measured above that, or with an unsteady variant, is measured again (``--retries``) and the
quietest attempt kept; rows still noisy are marked with "*".
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPES = [(384, 384), (384, 1536), (1536, 384), (768, 3072), (3072, 768)]  # MiniLM, BERT-base (in, out)
SPARSITIES = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98]
DENSE = ("F.linear", "oneDNN", "oneDNN+convert")
VARIANTS = DENSE + ("oneDNN GEMM only", "Numba CSR", "torch CSR")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--retries", type=int, default=2, help="re-measurements of a noisy row")
    parser.add_argument("--max-foreign", type=float, default=0.1, help="share of the machine other processes may use")
    parser.add_argument("--wait-quiet", type=float, default=30.0, help="seconds to wait for that before a row")
    parser.add_argument("--shapes", nargs="+", metavar="INxOUT", help="only these layer shapes, e.g. 768x3072")
    parser.add_argument("--sparsities", nargs="+", type=float, metavar="S", help="only these sparsities")
    parser.add_argument("--quick", action="store_true", help="smoke run: two shapes, three sparsities, few repeats")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    return parser.parse_args()


class ForeignLoad:
    """Share of the machine's CPU time spent by other processes between start() and share()."""

    def start(self) -> None:
        self._machine, self._own = self._machine_busy(), self._own_busy()

    def share(self) -> float:
        machine, own = self._machine_busy(), self._own_busy()
        elapsed = (machine[1] - self._machine[1]) or 1
        foreign = (machine[0] - self._machine[0]) - (own - self._own) * os.sysconf("SC_CLK_TCK")
        return max(0.0, foreign / elapsed)

    def wait_until_below(self, max_share: float, timeout: float) -> float:
        """Sample half-second windows until other processes use at most max_share; seconds waited."""
        started = time.perf_counter()
        while time.perf_counter() - started < timeout:
            self.start()
            time.sleep(0.5)
            if self.share() <= max_share:
                break
        return time.perf_counter() - started

    @staticmethod
    def _machine_busy() -> tuple[int, int]:
        """(busy, total) clock ticks of all CPUs since boot; (0, 0) where /proc/stat is missing."""
        try:
            with open("/proc/stat") as handle:
                ticks = [int(value) for value in handle.readline().split()[1:9]]
        except OSError:
            return 0, 0
        return sum(ticks) - ticks[3] - ticks[4], sum(ticks)

    @staticmethod
    def _own_busy() -> float:
        times = os.times()
        return times.user + times.system


def magnitude_pruned(weight, sparsity: float):
    """Zero exactly round(sparsity * size) of the smallest-magnitude entries."""
    import torch

    flat = weight.flatten().clone()
    flat[torch.argsort(flat.abs())[: int(round(sparsity * flat.numel()))]] = 0.0
    return flat.reshape(weight.shape)


def measure_row(n_in: int, n_out: int, sparsity: float, args: argparse.Namespace) -> dict:
    import torch
    from torch import nn

    from engine.runtime import SparseLinear, dense_linear_paths
    from engine.runtime.dense import onednn_compute_only
    from engine.core.measure import time_interleaved

    generator = torch.Generator().manual_seed(n_in * 7919 + n_out)
    layer = nn.Linear(n_in, n_out)
    with torch.no_grad():
        layer.weight.copy_(magnitude_pruned(torch.randn(n_out, n_in, generator=generator) / n_in**0.5, sparsity))
    x = torch.randn(args.tokens, n_in, generator=generator)
    paths = dense_linear_paths(layer, batch_size=args.tokens)
    numba_layer = SparseLinear.from_linear(layer, "numba")
    torch_csr_layer = SparseLinear.from_linear(layer, "torch-csr")
    variants = {
        "F.linear": lambda: paths["torch"](x),
        "oneDNN": lambda: paths["onednn"](x),
        "oneDNN+convert": lambda: paths["onednn-convert"](x),
        "oneDNN GEMM only": onednn_compute_only(layer, x),
        "Numba CSR": lambda: numba_layer(x),
        "torch CSR": lambda: torch_csr_layer(x),
    }
    with torch.no_grad():
        expected = layer(x)
        for name in ("oneDNN", "Numba CSR", "torch CSR"):
            assert torch.allclose(variants[name](), expected, rtol=1e-4, atol=1e-4), name
        attempts, waited = [], 0.0
        for _ in range(args.retries + 1):
            load = ForeignLoad()
            waited += load.wait_until_below(args.max_foreign, args.wait_quiet)
            load.start()
            stats = time_interleaved(variants, warmup=args.warmup, repeats=args.repeats)
            attempts.append((load.share(), stats))
            if attempts[-1][0] <= args.max_foreign and all(s.stable for s in stats.values()):
                break
    foreign, stats = min(attempts, key=lambda attempt: attempt[0])
    best_dense = min(DENSE, key=lambda name: stats[name].median)
    return {
        "shape": [n_in, n_out],
        "sparsity": sparsity,
        "foreign_load": foreign,
        "attempts": len(attempts),
        "waited_for_quiet_s": waited,
        "noisy": foreign > args.max_foreign or not all(s.stable for s in stats.values()),
        "best_dense": best_dense,
        "stats": {name: s.to_json() for name, s in stats.items()},
    }


def cell(stats: dict) -> str:
    spread = (stats["q3"] - stats["q1"]) / stats["median"]
    return f"{stats['median'] * 1e3:.2f} ({spread * 100:.0f}%)"


def markdown(rows: list[dict]) -> str:
    header = "| layer (in x out) | sparsity | " + " | ".join(f"{name} ms" for name in VARIANTS)
    header += " | Numba vs oneDNN | Numba vs best dense | torch CSR vs best dense |"
    lines = [header, "|" + "---|" * (len(VARIANTS) + 5)]
    for row in rows:
        stats = row["stats"]
        best = stats[row["best_dense"]]["median"]
        numba, torch_csr = stats["Numba CSR"]["median"], stats["torch CSR"]["median"]
        mark = " *" if row["noisy"] else ""
        lines.append(
            f"| {row['shape'][0]}x{row['shape'][1]} | {row['sparsity']:.0%}{mark} | "
            + " | ".join(cell(stats[name]) for name in VARIANTS)
            + f" | {stats['oneDNN']['median'] / numba:.2f}x | {best / numba:.2f}x ({row['best_dense']})"
            + f" | {best / torch_csr:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    import numba
    import torch

    from engine.core.environment import describe_environment
    from engine.runtime.dense import onednn_available

    if not onednn_available():
        sys.exit("this torch build has no oneDNN linear; the baseline would be incomplete")
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    shapes = [tuple(int(n) for n in shape.split("x")) for shape in args.shapes] if args.shapes else SHAPES
    sparsities = args.sparsities or SPARSITIES
    if args.quick:
        shapes, sparsities = [SHAPES[0], SHAPES[3]], [0.5, 0.9, 0.98]
        args.repeats, args.warmup, args.retries, args.wait_quiet = 5, 1, 0, 0.0
    started = time.perf_counter()
    rows = []
    for n_in, n_out in shapes:
        for sparsity in sparsities:
            rows.append(measure_row(n_in, n_out, sparsity, args))
            print(f"{n_in}x{n_out} {sparsity:.0%}: done after {time.perf_counter() - started:.0f} s", file=sys.stderr)
    environment = describe_environment()
    print(f"{args.tokens} tokens, fp32, {args.threads} threads (torch and numba), {environment['cpu']} "
          f"({environment['isa']}), torch {environment['torch']}, numba {environment['numba']}; "
          f"median ms (relative IQR) of {args.repeats} interleaved repeats; "
          f"other processes took up to {max(r['foreign_load'] for r in rows):.0%} of the machine during a row\n")
    print(markdown(rows))
    if args.json:
        record = {
            "command": " ".join(sys.orig_argv),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "tokens": args.tokens,
            "threads": args.threads,
            "environment": environment,
            "rows": rows,
        }
        args.json.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
