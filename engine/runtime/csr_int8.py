"""Sparse int8 Linear: column-panelled CSR with int8 values, int32 accumulation, a Numba kernel.

With p, s the per-token int8 activations and scales and q, scale the per-row int8 weights and
scales (``engine.runtime.int8``), j over the non-zeros of output row r,

    acc[t, r] = sum_j q[j] * p[t, indices[j]]                   int32, exact
    Y[t, r]   = (float32(acc[t, r]) * s[t]) * scale[r] + b[r]    float32, in this order

which is ``fake_quantized_linear`` with the masked weight, bit for bit (tested).

Layout, as in ``engine.runtime.csr`` (same panels, tiles and work split): the input features are
cut into panels, each a CSR matrix; the tokens into tiles of 64, copied transposed into a
feature-major tile so a non-zero multiplies 64 contiguous activations of one feature.  Two inner
loops, giving the same bits:

* in float32 (the default where it is exact): codes and activations as float32, the fp32 kernel's
  FMA loop (``csr._compute_block``).  Exact when 127 * sum_j |q_rj| <= 2^24 for every row r: every
  partial sum, in any order, is then an integer float32 holds exactly.  Dense Gaussian rows
  average |code| 27-32 and reach 12% of the bound at 384 inputs, 41% at 1536, 77% at 3072; pruned
  rows (fewer codes) stay further below, so MiniLM's layers take this path.
  ``CSRInt8Weight.float_values`` is None where a row does not fit.
* in integers: an int16 tile (two cache lines per feature instead of four) and 64 int32
  accumulators in a stack array.  Four non-zeros per pass: two products of int16 fit in int16
  (|p q| <= 127^2, two of them <= 32258 < 2^15), so each pair is summed in int16 lanes and widened
  once to int32.  On Zen 4 LLVM turns it into vpmullw, vpaddw, vpmovsxwd and vpaddd (about 7
  vector ops per non-zero and 64 tokens, against 4 FMAs in float32); it emits no VNNI
  (vpdpbusd / vpdpwssd), whose 4- and 2-element dot products need features interleaved per token,
  which arbitrary non-zeros do not give.

The epilogue (scales and bias) runs without fastmath and adds the bias in a separate pass, so no
multiply-add is contracted and the float result is exactly the reference's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.arrayobj import make_array, populate_array
from torch import nn

from engine.runtime.csr import ROW_CHUNK, TILE_TOKENS, CSRWeight, _compute_block, _transpose_tile, _work_split
from engine.runtime.int8 import QMAX, quantize_activations, quantize_weight
from engine.runtime.transpose import transpose_into

INT8_KERNEL_VERSION = 2  # bump when a change alters the kernel's speed (timing fingerprints)
FLOAT_EXACT_BOUND = 2**24  # float32 holds every integer up to this magnitude exactly


@dataclass(frozen=True)
class CSRInt8Weight:
    """An int8 weight (out x in) as column panels of CSR, as ``CSRWeight``, plus per-row scales:
    ``indptr`` (panels, out + 1) int64, ``indices`` int32, ``values`` int8, ``scale`` (out,) float32."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    scale: np.ndarray
    shape: tuple[int, int]
    panel_width: int
    float_values: np.ndarray | None = None  # the codes as float32 when every row fits FLOAT_EXACT_BOUND

    @classmethod
    def from_int8(cls, weight_q: torch.Tensor, scale: torch.Tensor, panel_width: int | None = None) -> CSRInt8Weight:
        """Keep the non-zero codes of q (out x in, int8); panels sized as ``CSRWeight.from_dense`` does."""
        if weight_q.dtype != torch.int8 or weight_q.dim() != 2:
            raise TypeError(f"weight_q must be a 2-D int8 tensor, got {weight_q.dtype} {tuple(weight_q.shape)}")
        if tuple(scale.shape) != (weight_q.shape[0],):
            raise ValueError(f"scale must have shape ({weight_q.shape[0]},), got {tuple(scale.shape)}")
        csr = CSRWeight.from_dense(weight_q.float(), panel_width)
        scale = scale.detach().float().contiguous().numpy().copy()
        exact = bool((weight_q.abs().sum(dim=1, dtype=torch.int64) * QMAX <= FLOAT_EXACT_BOUND).all())
        return cls(
            csr.indptr, csr.indices, csr.values.astype(np.int8), scale, csr.shape, csr.panel_width,
            csr.values if exact else None,
        )

    @classmethod
    def from_float(cls, weight: torch.Tensor, panel_width: int | None = None) -> CSRInt8Weight:
        """Round-to-nearest per-row quantization of a pruned float weight (its zeros stay zeros)."""
        return cls.from_int8(*quantize_weight(weight.detach()), panel_width)

    @property
    def nnz(self) -> int:
        return int(self.values.size)

    def to_int8(self) -> torch.Tensor:
        """q as a dense int8 (out x in) tensor."""
        csr = CSRWeight(self.indptr, self.indices, self.values.astype(np.float32), self.shape, self.panel_width)
        return torch.from_numpy(csr.to_dense()).to(torch.int8)


@intrinsic
def _stack_int32(typingctx, length):
    """An uninitialised int32 array of compile-time ``length`` on the caller's stack (no escape)."""
    if not isinstance(length, types.IntegerLiteral):
        return None
    array_type = types.Array(types.int32, 1, "C")

    def codegen(context, builder, signature, args):
        count = context.get_constant(types.intp, length.literal_value)
        data = cgutils.alloca_once(builder, context.get_value_type(types.int32), size=count)
        array = make_array(array_type)(context, builder)
        itemsize = context.get_constant(types.intp, 4)
        populate_array(array, data=data, shape=[count], strides=[itemsize], itemsize=itemsize, meminfo=None)
        return array._getvalue()

    return array_type(length), codegen


@njit(cache=True)
def _aligned_empty(rows, cols, dtype):
    """An uninitialised (rows, cols) array of ``dtype`` whose data starts on a 64-byte boundary."""
    itemsize = np.empty(1, dtype=dtype).itemsize
    per_line = 64 // itemsize
    buffer = np.empty(rows * cols + per_line, dtype=dtype)
    start = (per_line - (buffer.ctypes.data % 64) // itemsize) % per_line
    return buffer[start : start + rows * cols].reshape((rows, cols))


@njit(fastmath=True, cache=True)
def _panel_rows(indptr, indices, values, first_panel, row_start, xt, block):
    """block[i, t] += sum_j values[j] * xt[indices[j], t] (int32) over row row_start + i's non-zeros
    in this panel, starting from zero on the first panel.  Positions unsigned, as in the float
    kernel (``csr._panel_rows``): no index wraparound in the inner loop."""
    acc = _stack_int32(TILE_TOKENS)
    one, two, three, four = np.uint64(1), np.uint64(2), np.uint64(3), np.uint64(4)
    for i in range(block.shape[0]):
        row = row_start + i
        out_row = block[i]
        for t in range(TILE_TOKENS):
            acc[t] = 0 if first_panel else out_row[t]
        j = np.uint64(indptr[row])
        end = np.uint64(indptr[row + 1])
        while j + four <= end:
            v0, v1 = np.int16(values[j]), np.int16(values[j + one])
            v2, v3 = np.int16(values[j + two]), np.int16(values[j + three])
            x0 = xt[np.uint64(indices[j])]
            x1 = xt[np.uint64(indices[j + one])]
            x2 = xt[np.uint64(indices[j + two])]
            x3 = xt[np.uint64(indices[j + three])]
            for t in range(TILE_TOKENS):
                low = np.int16(v0 * x0[t] + v1 * x1[t])
                high = np.int16(v2 * x2[t] + v3 * x3[t])
                acc[t] += np.int32(low) + np.int32(high)
            j += four
        while j < end:
            v0 = np.int16(values[j])
            x0 = xt[np.uint64(indices[j])]
            for t in range(TILE_TOKENS):
                acc[t] += np.int32(np.int16(v0 * x0[t]))
            j += one
        for t in range(TILE_TOKENS):
            out_row[t] = acc[t]


@njit(cache=True)
def _write_scaled(block, act_scale, weight_scale, bias, r0, out):
    """out[t, i] = (float32(block[i, t]) * act_scale[t]) * weight_scale[r0 + i] + bias[r0 + i].

    The int32 sums are first transposed into ``out`` as float32 (``engine.runtime.transpose``), then
    scaled in place; the bias is added in a second pass over the row: in one expression LLVM
    contracts the last multiply and the add into an FMA (even without fastmath), one rounding fewer
    than the reference."""
    n_rows = block.shape[0]
    transpose_into(block[:, : out.shape[0]], out)
    for t in range(out.shape[0]):
        row = out[t]
        s = act_scale[t]
        for i in range(n_rows):
            row[i] = row[i] * s * weight_scale[r0 + i]
        for i in range(n_rows):
            row[i] += bias[r0 + i]


@njit(parallel=True, fastmath=True, cache=True)
def _spmm_int8(indptr, indices, values, weight_scale, bias, x, act_scale, out, row_split, n_workers):
    tokens, features = x.shape
    rows = out.shape[1]
    n_items = (tokens + TILE_TOKENS - 1) // TILE_TOKENS * row_split
    split_rows = (rows + row_split - 1) // row_split
    for worker in prange(n_workers):
        xt = _aligned_empty(features, TILE_TOKENS, np.int16)
        block = _aligned_empty(ROW_CHUNK, TILE_TOKENS, np.int32)
        for item in range(worker, n_items, n_workers):
            t0 = item // row_split * TILE_TOKENS
            width = min(TILE_TOKENS, tokens - t0)
            _transpose_tile(x, t0, width, xt)
            row_stop = min((item % row_split + 1) * split_rows, rows)
            for r0 in range(item % row_split * split_rows, row_stop, ROW_CHUNK):
                n_rows = min(ROW_CHUNK, row_stop - r0)
                sub = block[:n_rows]
                for panel in range(indptr.shape[0]):
                    _panel_rows(indptr[panel], indices, values, panel == 0, r0, xt, sub)
                _write_scaled(sub, act_scale[t0 : t0 + width], weight_scale, bias, r0, out[t0 : t0 + width, r0 : r0 + n_rows])


@njit(parallel=True, fastmath=True, cache=True)
def _spmm_int8_in_float(indptr, indices, float_values, weight_scale, bias, x, act_scale, out, row_split, n_workers):
    """The same product with codes and activations held as float32 (the fp32 kernel's inner loop, FMA):
    exact when 127 * sum_j |q_rj| <= 2^24 for every row, since every partial sum, in any order, is
    then an integer float32 represents exactly."""
    tokens, features = x.shape
    rows = out.shape[1]
    n_items = (tokens + TILE_TOKENS - 1) // TILE_TOKENS * row_split
    split_rows = (rows + row_split - 1) // row_split
    zeros = np.zeros(rows, dtype=np.float32)
    for worker in prange(n_workers):
        xt = _aligned_empty(features, TILE_TOKENS, np.float32)
        block = _aligned_empty(ROW_CHUNK, TILE_TOKENS, np.float32)
        for item in range(worker, n_items, n_workers):
            t0 = item // row_split * TILE_TOKENS
            width = min(TILE_TOKENS, tokens - t0)
            _transpose_tile(x, t0, width, xt)
            row_stop = min((item % row_split + 1) * split_rows, rows)
            for r0 in range(item % row_split * split_rows, row_stop, ROW_CHUNK):
                n_rows = min(ROW_CHUNK, row_stop - r0)
                sub = block[:n_rows]
                _compute_block(indptr, indices, float_values, zeros, xt, r0, sub)
                _write_scaled(sub, act_scale[t0 : t0 + width], weight_scale, bias, r0, out[t0 : t0 + width, r0 : r0 + n_rows])


def spmm_int8(
    weight: CSRInt8Weight, x_q: np.ndarray, act_scale: np.ndarray, bias: np.ndarray | None = None,
    out: np.ndarray | None = None, int16: bool = False,
) -> np.ndarray:
    """Y = the int8 product above for token-major int8 activations ``x_q`` (tokens, in) with their
    per-token scales ``act_scale`` (tokens,); returns (tokens, out) float32 (filled into ``out`` if given).

    Runs in float32 where that is exact (``weight.float_values``), otherwise (or with ``int16``) on
    the int16/int32 kernel; both give the same bits."""
    rows, features = weight.shape
    if x_q.dtype != np.int8 or x_q.ndim != 2 or x_q.shape[1] != features:
        raise ValueError(f"x_q must be int8 (tokens, {features}), got {x_q.dtype} {x_q.shape}")
    tokens = x_q.shape[0]
    act_scale = np.ascontiguousarray(act_scale, dtype=np.float32)
    if act_scale.shape != (tokens,):
        raise ValueError(f"act_scale must have shape ({tokens},), got {act_scale.shape}")
    bias = np.zeros(rows, dtype=np.float32) if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
    if bias.shape != (rows,):
        raise ValueError(f"bias must have shape ({rows},), got {bias.shape}")
    if out is None:
        out = np.empty((tokens, rows), dtype=np.float32)
    elif out.shape != (tokens, rows) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous float32 of shape {(tokens, rows)}")
    if tokens and rows:
        row_split, n_workers = _work_split(-(-tokens // TILE_TOKENS), rows)
        x_q = np.ascontiguousarray(x_q)
        if weight.float_values is not None and not int16:
            args = (weight.indptr, weight.indices, weight.float_values, weight.scale, bias, x_q, act_scale, out)
            _spmm_int8_in_float(*args, row_split, n_workers)
            return out
        _spmm_int8(weight.indptr, weight.indices, weight.values, weight.scale, bias, x_q, act_scale, out, row_split, n_workers)
    return out


def sparse_int8_linear_numpy(weight: CSRInt8Weight, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """y for float x (..., in): per-token quantization in torch, then the kernel (no autograd)."""
    rows, features = weight.shape
    p, s = quantize_activations(x.detach().reshape(-1, features).float())
    out = torch.empty(p.shape[0], rows)
    spmm_int8(weight, p.numpy(), s.numpy(), None if bias is None else bias.detach().float().numpy(), out.numpy())
    return out.reshape(*x.shape[:-1], rows)


# ------------------------------------------------------------------ the custom op and the module
OP_NAME = "spdy::csr_int8_linear"


@torch.library.custom_op(OP_NAME, mutates_args=(), device_types="cpu")
def csr_int8_linear(
    x_q: torch.Tensor, x_scale: torch.Tensor, indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor,
    float_values: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor, panel_width: int,
) -> torch.Tensor:
    """Y (tokens, out) float32 from int8 activations x_q (tokens, in) and their scales x_scale (tokens,),
    W the int8 CSR weight given by its arrays (as ``spdy::csr_linear``) and its per-row scales.

    The activations are quantized outside the op, in ordinary torch ops, so inductor fuses that into
    the kernel that produced x (a LayerNorm, a GELU).  ``float_values`` is ``CSRInt8Weight.float_values``
    (the codes as float32), or an empty tensor where the weight needs the int32 kernel."""
    if x_q.dtype != torch.int8 or values.dtype != torch.int8:
        raise TypeError(f"{OP_NAME}: x_q and values must be int8 (got {x_q.dtype}, {values.dtype})")
    if indptr.dtype != torch.int64 or indices.dtype != torch.int32 or indptr.dim() != 2:
        raise TypeError(f"{OP_NAME}: indptr must be 2-D int64 and indices int32 (got {indptr.dtype}, {indices.dtype})")
    rows = indptr.shape[1] - 1
    in_float = float_values.numel() == values.numel() and float_values.dtype == torch.float32
    weight = CSRInt8Weight(
        indptr.numpy(), indices.numpy(), values.numpy(), weight_scale.float().contiguous().numpy(), (rows, x_q.shape[1]),
        panel_width, float_values.numpy() if in_float else None,
    )
    out = torch.empty(x_q.shape[0], rows, dtype=torch.float32)
    spmm_int8(weight, x_q.contiguous().numpy(), x_scale.float().numpy(), bias.float().contiguous().numpy(), out.numpy())
    return out


@csr_int8_linear.register_fake
def _csr_int8_linear_fake(x_q, x_scale, indptr, indices, values, float_values, weight_scale, bias, panel_width):
    torch._check(indptr.dim() == 2, lambda: f"{OP_NAME}: indptr must be 2-D")
    return x_q.new_empty(x_q.shape[0], indptr.shape[1] - 1, dtype=torch.float32)


def sparse_int8_linear(x, indptr, indices, values, float_values, weight_scale, bias, panel_width: int) -> torch.Tensor:
    """x (..., in) quantized per token, times the sparse int8 weight, on ``spdy::csr_int8_linear``."""
    x_q, x_scale = quantize_activations(x.reshape(-1, x.shape[-1]).float())
    y = torch.ops.spdy.csr_int8_linear(x_q, x_scale, indptr, indices, values, float_values, weight_scale, bias, panel_width)
    return y.reshape(*x.shape[:-1], indptr.shape[1] - 1)


class SparseInt8Linear(nn.Module):
    """``y = x @ W^T + b`` with W sparse int8 per output channel, x quantized per token, on
    ``spdy::csr_int8_linear`` (traceable by dynamo).  Inference only, float32 in and out, CPU.

    Buffers: the CSR arrays (``indptr``, ``indices``, ``values`` int8), ``float_values`` (the codes as
    float32 where that path is exact, else empty), ``weight_scale`` and ``bias``."""

    def __init__(self, weight: CSRInt8Weight, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.panel_width = int(weight.panel_width)
        self.register_buffer("indptr", torch.from_numpy(weight.indptr))
        self.register_buffer("indices", torch.from_numpy(weight.indices))
        self.register_buffer("values", torch.from_numpy(weight.values))
        exact_in_float = weight.float_values is not None
        self.register_buffer("float_values", torch.from_numpy(weight.float_values) if exact_in_float else torch.empty(0))
        self.register_buffer("weight_scale", torch.from_numpy(weight.scale))
        bias = torch.zeros(self.out_features) if bias is None else bias.detach().float().contiguous().clone()
        if bias.shape != (self.out_features,):
            raise ValueError(f"bias must have shape ({self.out_features},), got {tuple(bias.shape)}")
        self.register_buffer("bias", bias)

    @classmethod
    def from_int8(cls, weight_q: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None):
        """From a stored int8 weight (out x in, zeros where pruned) and its per-row scales."""
        return cls(CSRInt8Weight.from_int8(weight_q, weight_scale), bias)

    @classmethod
    def from_float(cls, weight: torch.Tensor, mask: torch.Tensor | None = None, bias: torch.Tensor | None = None):
        """Round-to-nearest quantization of ``weight * mask`` (mask: True = keep; default: the non-zeros)."""
        masked = weight.detach() if mask is None else weight.detach() * mask
        return cls(CSRInt8Weight.from_float(masked), bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> SparseInt8Linear:
        return cls.from_float(linear.weight, bias=linear.bias)

    @property
    def density(self) -> float:
        return self.values.numel() / max(1, self.out_features * self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sparse_int8_linear(x, *self.operands())

    def operands(self) -> tuple:
        """The tensors (and panel width) ``sparse_int8_linear`` takes after x."""
        return (self.indptr, self.indices, self.values, self.float_values, self.weight_scale, self.bias, self.panel_width)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, density={self.density:.3f}, int8"
