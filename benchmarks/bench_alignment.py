"""What a tile buffer's alignment costs the sparse kernel: 64-byte aligned versus 16 or 32 bytes off.

    .venv/bin/python benchmarks/bench_alignment.py [--threads 1]

The token-major kernel of ``engine.runtime.csr`` is rebuilt here with its tile and block buffers
placed ``shift`` floats past a 64-byte boundary (0 = aligned, 4 = 16 bytes off, 8 = 32 bytes off)
and timed interleaved with the shipped kernel (which aligns them) on a few shapes (in x out,
sparsity, tokens), one process; prints the median ms of each.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CASES = [(2048, 512, 0.95, 256), (1024, 2048, 0.78, 256), (768, 3072, 0.9, 2048), (384, 1536, 0.8, 2048)]


def main() -> None:
    import numpy as np
    import torch
    from numba import njit, prange

    from engine.core.masks import magnitude_mask
    from engine.runtime import csr
    from engine.runtime.execution import set_threads
    from engine.core.measure import time_interleaved

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    set_threads(args.threads)

    @njit
    def shifted_empty(rows, cols, shift):
        buffer = np.empty(rows * cols + 32, dtype=np.float32)
        start = (16 - (buffer.ctypes.data % 64) // 4) % 16 + shift
        return buffer[start : start + rows * cols].reshape((rows, cols))

    @njit(parallel=True, fastmath=True)
    def spmm_shifted(indptr, indices, values, bias, x, out, row_split, n_workers, shift):
        tokens, features = x.shape
        rows = out.shape[1]
        tile = csr.TILE_TOKENS
        n_items = (tokens + tile - 1) // tile * row_split
        split_rows = (rows + row_split - 1) // row_split
        for worker in prange(n_workers):
            xt = shifted_empty(features, tile, shift)
            block = shifted_empty(csr.ROW_CHUNK, tile, shift)
            for item in range(worker, n_items, n_workers):
                t0 = item // row_split * tile
                width = min(tile, tokens - t0)
                csr._transpose_tile(x, t0, width, xt)
                row_stop = min((item % row_split + 1) * split_rows, rows)
                for r0 in range(item % row_split * split_rows, row_stop, csr.ROW_CHUNK):
                    n_rows = min(csr.ROW_CHUNK, row_stop - r0)
                    csr._compute_block(indptr, indices, values, bias, xt, r0, block[:n_rows])
                    csr._write_transposed(block[:n_rows], out[t0 : t0 + width, r0 : r0 + n_rows])

    torch.manual_seed(0)
    print(f"{args.threads} thread(s), {args.repeats} interleaved repeats, median ms\n")
    print("| in x out | sparsity | tokens | aligned | 16 B off | 32 B off | shipped kernel |")
    print("|---|---|---|---|---|---|---|")
    for features, rows, sparsity, tokens in CASES:
        linear = torch.nn.Linear(features, rows)
        weight = csr.CSRWeight.from_dense(linear.weight.detach() * magnitude_mask(linear.weight.detach(), sparsity))
        x = np.random.default_rng(0).standard_normal((tokens, features)).astype(np.float32)
        bias, out = linear.bias.detach().numpy(), np.empty((tokens, rows), np.float32)
        row_split, n_workers = csr._work_split(-(-tokens // csr.TILE_TOKENS), rows)
        args_ = (weight.indptr, weight.indices, weight.values, bias, x, out, row_split, n_workers)
        variants = {shift: (lambda shift=shift: spmm_shifted(*args_, shift)) for shift in (0, 4, 8)}
        variants["shipped"] = lambda: csr.spmm(weight, x, bias, out)
        stats = time_interleaved(variants, warmup=3, repeats=args.repeats)
        cells = " | ".join(f"{stats[key].median * 1e3:.2f}" for key in (0, 4, 8, "shipped"))
        print(f"| {features}x{rows} | {sparsity:.0%} | {tokens} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
