"""Prototype, not shipped: a sparse int8 kernel on AVX-512 VNNI (vpdpbusd) over 1x4 groups of the weight.

    .venv/bin/python benchmarks/bench_int8_vnni_prototype.py [--threads 1] [--repeats 11]

numba/LLVM never emits vpdpbusd for the CSR kernels (engine.runtime.csr_int8): its 4-byte dot
products need four features of a token side by side.  Here the weight is stored in groups of four
consecutive input features (a group is kept where any of its four codes is non-zero, the others
stored as zeros) and the activations in a tile interleaved by four features, shifted to uint8:

    tile[m, t] = the 4 bytes p[t, 4m .. 4m+3] + 128         (tokens in tiles of 64)
    acc[t, r]  = sum over groups g of row r  dpbusd(tile[m_g, t], codes_g)  -  128 * sum_k q[r, k]

which is the exact int32 sum (checked against a matmul).  One vpdpbusd covers 16 tokens x 4
features; the call is an llvmlite intrinsic.  At unstructured sparsity s a row keeps a fraction
1 - s^4 of its groups, so against the fp32 kernel's 4 FMAs per non-zero the vector work is
4 (1 - s) / (1 - s^4) times smaller (2.1x at 50%, 1.6x at 70%, 1.2x at 90%).  The prototype has no
panels and writes int32 sums without the scales; it times the product alone, against our fp32
and int8 CSR kernels and dense ``torch._int_mm``, on MiniLM's shapes.  Needs avx512vnni.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from llvmlite import ir  # noqa: E402
from numba import njit, prange, types  # noqa: E402
from numba.core import cgutils  # noqa: E402
from numba.extending import intrinsic  # noqa: E402
from numba.np.arrayobj import make_array  # noqa: E402


@intrinsic
def _group_row(typingctx, acc_out, tile, groups, words, start, end):
    """acc_out[0:64] = sum over g in [start, end) of vpdpbusd(tile[groups[g], 0:64], broadcast(words[g]))."""
    signature = types.void(acc_out, tile, groups, words, start, end)

    def codegen(context, builder, sig, args):
        acc, tile_array, group_array, word_array = (
            make_array(sig.args[i])(context, builder, args[i]) for i in range(4)
        )
        first = context.cast(builder, args[4], sig.args[4], types.intp)
        last = context.cast(builder, args[5], sig.args[5], types.intp)
        i32, i64 = ir.IntType(32), ir.IntType(64)
        vector = ir.VectorType(i32, 16)
        dpbusd = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vector, [vector, vector, vector]), "llvm.x86.avx512.vpdpbusd.512"
        )
        sums = [cgutils.alloca_once(builder, vector) for _ in range(4)]  # promoted to registers by LLVM
        for slot in sums:
            builder.store(ir.Constant(vector, None), slot)
        row_stride = cgutils.unpack_tuple(builder, tile_array.strides, 2)[0]
        base = builder.ptrtoint(tile_array.data, i64)
        with cgutils.for_range(builder, builder.sub(last, first)) as loop:
            g = builder.add(loop.index, first)
            m = builder.sext(builder.load(builder.gep(group_array.data, [g])), i64)
            word = builder.load(builder.gep(word_array.data, [g]))
            splat = builder.shuffle_vector(
                builder.insert_element(ir.Constant(vector, ir.Undefined), word, ir.Constant(i32, 0)),
                ir.Constant(vector, ir.Undefined), ir.Constant(vector, None),
            )
            row = builder.inttoptr(builder.add(base, builder.mul(m, row_stride)), vector.as_pointer())
            for k in range(4):
                x = builder.load(builder.gep(row, [ir.Constant(i64, k)]), align=4)
                builder.store(builder.call(dpbusd, [builder.load(sums[k]), x, splat]), sums[k])
        out = builder.bitcast(acc.data, vector.as_pointer())
        for k in range(4):
            builder.store(builder.load(sums[k]), builder.gep(out, [ir.Constant(i64, k)]), align=4)
        return context.get_dummy_value()

    return signature, codegen


def pack_groups(q: np.ndarray):
    """(row_ptr (out + 1), group index m int32, codes of the group as one int32, 128 * row sums of q)."""
    rows, features = q.shape
    padded = np.zeros((rows, -(-features // 4) * 4), np.int8)
    padded[:, :features] = q
    quads = padded.reshape(rows, -1, 4)
    kept = (quads != 0).any(axis=2)
    row, group = np.nonzero(kept)
    row_ptr = np.zeros(rows + 1, np.int64)
    row_ptr[1:] = np.cumsum(kept.sum(axis=1))
    words = np.ascontiguousarray(quads[row, group]).view(np.int32).reshape(-1)
    return row_ptr, group.astype(np.int32), words, (128 * q.astype(np.int32).sum(axis=1)).astype(np.int32)


def interleave_tiles(p: np.ndarray) -> np.ndarray:
    """(tiles, features / 4, 64) int32: four features' uint8 codes (+128) of a token in one int32."""
    tokens, features = p.shape
    padded = np.full((tokens, -(-features // 4) * 4), 128, np.uint8)
    padded[:, :features] = (p.astype(np.int16) + 128).astype(np.uint8)
    tiles = padded.reshape(tokens // 64, 64, -1, 4).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(tiles).view(np.int32).reshape(tokens // 64, -1, 64)


@njit(parallel=True, fastmath=True)
def spmm_groups(row_ptr, groups, words, correction, tiles, out):
    """out[t, r] = exact int32 sum_k p[t, k] q[r, k] (tokens a multiple of 64)."""
    for tile_index in prange(tiles.shape[0]):
        acc = np.empty(64, dtype=np.int32)
        for r in range(out.shape[1]):
            _group_row(acc, tiles[tile_index], groups, words, row_ptr[r], row_ptr[r + 1])
            for t in range(64):
                out[tile_index * 64 + t, r] = acc[t] - correction[r]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--tokens", type=int, default=2048)
    args = parser.parse_args()
    import llvmlite.binding
    import numba
    import torch

    from engine.runtime.csr import CSRWeight, spmm
    from engine.runtime.csr_int8 import CSRInt8Weight, spmm_int8
    from engine.runtime.int8 import quantize_activations, quantize_weight

    if not llvmlite.binding.get_host_cpu_features().get("avx512vnni"):
        sys.exit("this CPU has no AVX-512 VNNI: the prototype needs vpdpbusd")
    numba.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    print("| in x out | sparsity | groups per non-zero | fp32 CSR ms | int8 CSR ms | VNNI groups ms | dense _int_mm ms |")
    print("|---|---|---|---|---|---|---|")
    for n_in, n_out in ((384, 384), (384, 1536), (1536, 384)):
        x = torch.randn(args.tokens, n_in, generator=generator)
        weight = torch.randn(n_out, n_in, generator=generator)
        p, s = quantize_activations(x)
        tiles = interleave_tiles(p.numpy())
        for sparsity in (0.5, 0.7, 0.9):
            pruned = weight * (torch.rand(n_out, n_in, generator=generator) >= sparsity)
            q, scale = quantize_weight(pruned)
            packed = pack_groups(q.numpy())
            acc = np.empty((args.tokens, n_out), np.int32)
            spmm_groups(*packed, tiles, acc)
            assert np.array_equal(acc, p.numpy().astype(np.int64) @ q.numpy().astype(np.int64).T)
            fp32, int8 = CSRWeight.from_dense(pruned), CSRInt8Weight.from_int8(q, scale)
            x_np, p_np, s_np = x.numpy(), p.numpy(), s.numpy()
            out = np.empty((args.tokens, n_out), np.float32)
            variants = {
                "fp32": lambda: spmm(fp32, x_np, None, out),
                "int8": lambda: spmm_int8(int8, p_np, s_np, None, out),
                "vnni": lambda: spmm_groups(*packed, tiles, acc),
                "dense": lambda: torch._int_mm(p, q.t()),
            }
            samples = {name: [] for name in variants}
            for call in variants.values():
                call()
            for _ in range(args.repeats):
                for name, call in variants.items():
                    started = time.perf_counter()
                    call()
                    samples[name].append(time.perf_counter() - started)
            medians = {name: sorted(times)[len(times) // 2] * 1e3 for name, times in samples.items()}
            print(f"| {n_in}x{n_out} | {sparsity:.0%} | {packed[1].size / max(1, int((q != 0).sum())):.2f} | "
                  + " | ".join(f"{medians[name]:.2f}" for name in variants) + " |", flush=True)


if __name__ == "__main__":
    main()
