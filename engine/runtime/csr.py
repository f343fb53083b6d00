"""Column-panelled CSR weights and Numba SpMM kernels for a sparse W (out x in), fp32, on the CPU.

Both kernels compute, with j over the non-zeros of output row r,

    token-major    Y[t, r] = b[r] + sum_j values[j] * X[t, indices[j]]      X: (tokens, in)
    feature-major  Y[r, t] = b[r] + sum_j values[j] * X[indices[j], t]      X: (in, tokens)

and vectorise over tokens: a non-zero scales 64 contiguous activations of one input feature into
64 accumulators, four non-zeros per pass.

Storage.  The input features are cut into panels of ``panel_width`` columns, and each panel is a
CSR matrix of its own: row r's non-zeros in panel p are ``indptr[p, r]:indptr[p, r + 1]`` (with
one panel, ``indptr[0]`` is plain CSR).  A panel's activations (width x 64 floats) stay in L1/L2
while every output row takes its share of them.  Panels are at least 128 features wide (32 KiB of
activations, the L1 cache) and otherwise hold ~20 non-zeros per row, enough to pay for re-loading
the row's accumulators once per panel.  Measured (768x3072, 2048 tokens, one thread): 1.3-1.5x
faster than plain CSR at 50-80% sparsity, 1.05x at 90%, one panel (plain CSR) from ~95% up.
Aiming at 20 rather than 32 non-zeros (panels of 192 instead of 384 features at 90% on 768
inputs) measured 1.06x faster at 90% on 768x3072 and 1.18x on 3072x768 (2 threads, 2048 tokens,
against oneDNN: 3.43x vs 3.25x and 2.64x vs 2.24x), and the same or better at 60-98% on the
MiniLM shapes, within the noise.

Tiles.  The tokens are cut into tiles of ``TILE_TOKENS`` = 64, copied into a contiguous
feature-major buffer: ``nn.Linear`` hands over token-major X, so the token-major kernel transposes
the tile and at the end writes each chunk of ``ROW_CHUNK`` output rows back transposed, both in
16 x 16 register blocks (``engine.runtime.transpose``); the feature-major kernel (convolutions
over im2col columns) copies the tile as is and writes rows.  While a row is computed its
accumulators (64 floats, four AVX-512 registers) live in a stack array inside ``_panel_rows``,
compiled on its own so LLVM can prove they alias nothing and keeps them in registers for the
whole row (1.3x over accumulating in a heap array; one call per panel and row chunk, not per row,
another 1.1x).  Work items (tile, row range) are shared out statically over
``numba.get_num_threads()`` workers; rows are split too when there are fewer tiles than threads.

The tile and block buffers are 64-byte aligned (``_aligned_empty``): with NumPy's 16-byte
alignment a call ran 1.1-1.3x slower whenever the allocator placed them off a cache line (an
earlier trial of aligned buffers saw "no gain" because it happened to be measured aligned).

Tried and dropped: tiles of 32 tokens (1.2-1.6x slower); tiles of 128 (0.88-1.2x: better on
small layers, worse on 768x3072 at 80-95%); 8 non-zeros per pass, two rows interleaved (no gain);
two accumulator sets per row (no gain); tile rows addressed by pre-shifted offsets into a flat
tile (1.5x slower: LLVM no longer keeps the four row loads as FMA operands).  Unsigned positions
(kernel version 4) are kept: see ``_panel_rows``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import torch
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.arrayobj import make_array, populate_array

from engine.runtime.transpose import transpose_into

TILE_TOKENS = 64  # tokens per tile: four AVX-512 registers of accumulators per output row
ROW_CHUNK = 512  # output rows computed per tile before writing out (512 x 64 floats = 128 KiB)
NONZEROS_PER_PANEL_ROW = 20  # panel sizing: aim at this many non-zeros of a row per panel ...
MIN_PANEL_WIDTH = 128  # ... in panels at least this wide (128 features x 64 tokens = 32 KiB, L1)
# Bumped whenever a change alters the kernels' speed: cached timing tables measured with an
# older version are then measured again (it is part of the CPU timing fingerprint).
KERNEL_VERSION = 4


@dataclass(frozen=True)
class CSRWeight:
    """A weight (out x in) as column panels of CSR: ``indptr`` (panels, out + 1) int64, ``indices``
    int32 (absolute input columns), ``values`` float32, ordered by panel, then row, then column."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    shape: tuple[int, int]
    panel_width: int

    @classmethod
    def from_dense(cls, weight: np.ndarray | torch.Tensor, panel_width: int | None = None) -> CSRWeight:
        """Keep the exact non-zeros of a dense (out x in) weight; by default panels are sized as above."""
        if isinstance(weight, torch.Tensor):
            weight = weight.detach().cpu().numpy()
        weight = np.asarray(weight, dtype=np.float32)
        if weight.ndim != 2:
            raise ValueError(f"weight must be 2-D (out x in), got shape {weight.shape}")
        rows, features = weight.shape
        row_of, column = np.nonzero(weight)
        if panel_width is None:
            density = row_of.size / max(1, rows * features)
            target_width = max(MIN_PANEL_WIDTH, NONZEROS_PER_PANEL_ROW / max(density, 1e-9))
            panel_width = -(-features // max(1, round(features / target_width)))
        panel_width = max(1, min(panel_width, features))
        panel_of = column // panel_width
        order = np.lexsort((column, row_of, panel_of))
        row_of, column, panel_of = row_of[order], column[order], panel_of[order]
        n_panels = max(1, -(-features // panel_width))
        counts = np.bincount(panel_of * rows + row_of, minlength=n_panels * rows).reshape(n_panels, rows)
        indptr = np.zeros((n_panels, rows + 1), dtype=np.int64)
        indptr[:, 1:] = np.cumsum(counts, axis=1)
        indptr += np.concatenate(([0], np.cumsum(counts.sum(axis=1))[:-1]))[:, None]
        return cls(indptr, column.astype(np.int32), weight[row_of, column], weight.shape, panel_width)

    @property
    def nnz(self) -> int:
        return int(self.values.size)

    @property
    def density(self) -> float:
        return self.nnz / max(1, self.shape[0] * self.shape[1])

    def to_dense(self) -> np.ndarray:
        dense = np.zeros(self.shape, dtype=np.float32)
        rows = np.tile(np.arange(self.shape[0]), self.indptr.shape[0])
        dense[np.repeat(rows, np.diff(self.indptr, axis=1).ravel()), self.indices] = self.values
        return dense


@intrinsic
def _stack_vector(typingctx, length):
    """An uninitialised float32 array of compile-time ``length`` on the caller's stack (no escape)."""
    if not isinstance(length, types.IntegerLiteral):
        return None
    array_type = types.Array(types.float32, 1, "C")

    def codegen(context, builder, signature, args):
        count = context.get_constant(types.intp, length.literal_value)
        data = cgutils.alloca_once(builder, context.get_value_type(types.float32), size=count)
        array = make_array(array_type)(context, builder)
        itemsize = context.get_constant(types.intp, 4)
        populate_array(array, data=data, shape=[count], strides=[itemsize], itemsize=itemsize, meminfo=None)
        return array._getvalue()

    return array_type(length), codegen


@njit(cache=True)
def _aligned_empty(rows, cols):
    """An uninitialised float32 (rows, cols) array whose data starts on a 64-byte boundary.

    Every row of a tile is 64 floats, four AVX-512 vectors; NumPy only promises 16-byte
    alignment, and a tile 16 bytes off a cache line splits every vector load across two lines:
    measured 1.1-1.3x slower than aligned (one thread; 768x3072 at 90%, 2048 tokens: 31.2 vs
    23.8 ms), and which one a call got depended on where the allocator put it."""
    buffer = np.empty(rows * cols + 16, dtype=np.float32)
    start = (16 - (buffer.ctypes.data % 64) // 4) % 16
    return buffer[start : start + rows * cols].reshape((rows, cols))


@njit(fastmath=True, cache=True)
def _panel_rows(indptr, indices, values, bias, first_panel, row_start, xt, block):
    """block[i, t] += sum_j values[j] * xt[indices[j], t] over row row_start + i's non-zeros j in
    this panel (``indptr``), starting from the bias on the first panel; all rows of the block.

    The positions j and the feature numbers are unsigned (``np.uint64``): with signed integers
    Numba wraps every negative index around, two compares and selects per array read, which in
    the inner loop cost more instructions than the 16 FMAs they feed (measured 1.06-1.18x faster
    unsigned, MiniLM shapes at 67-90%, one thread)."""
    acc = _stack_vector(TILE_TOKENS)
    one, two, three, four = np.uint64(1), np.uint64(2), np.uint64(3), np.uint64(4)
    for i in range(block.shape[0]):
        row = row_start + i
        out_row = block[i]
        for t in range(TILE_TOKENS):
            acc[t] = bias[row] if first_panel else out_row[t]
        j = np.uint64(indptr[row])
        end = np.uint64(indptr[row + 1])
        while j + four <= end:
            v0, v1, v2, v3 = values[j], values[j + one], values[j + two], values[j + three]
            x0 = xt[np.uint64(indices[j])]
            x1 = xt[np.uint64(indices[j + one])]
            x2 = xt[np.uint64(indices[j + two])]
            x3 = xt[np.uint64(indices[j + three])]
            for t in range(TILE_TOKENS):
                acc[t] += v0 * x0[t] + v1 * x1[t] + v2 * x2[t] + v3 * x3[t]
            j += four
        while j < end:
            v0 = values[j]
            x0 = xt[np.uint64(indices[j])]
            for t in range(TILE_TOKENS):
                acc[t] += v0 * x0[t]
            j += one
        for t in range(TILE_TOKENS):
            out_row[t] = acc[t]


@njit(fastmath=True, cache=True)
def _compute_block(indptr, indices, values, bias, xt, row_start, block):
    """block[i, t] = Y[row_start + i, t] for one feature-major tile xt, panel by panel."""
    for panel in range(indptr.shape[0]):
        _panel_rows(indptr[panel], indices, values, bias, panel == 0, row_start, xt, block)


@njit(fastmath=True, cache=True)
def _transpose_tile(x, t0, width, xt):
    """xt[k, t] = x[t0 + t, k] for t < width (``engine.runtime.transpose``, converting to xt's
    type: the int8 kernel's int8 -> int16 or float32 too); zeros past width."""
    if width < TILE_TOKENS:  # last, partial tile: keep the unused lanes finite
        xt[:, width:] = 0
    transpose_into(x[t0 : t0 + width], xt[:, :width])


@njit(fastmath=True, cache=True)
def _write_transposed(block, out):
    """out[t, i] = block[i, t]: the tile's results back in token-major order."""
    transpose_into(block[:, : out.shape[0]], out)


@njit(parallel=True, fastmath=True, cache=True)
def _spmm_token_major(indptr, indices, values, bias, x, out, row_split, n_workers):
    tokens, features = x.shape
    rows = out.shape[1]
    n_items = (tokens + TILE_TOKENS - 1) // TILE_TOKENS * row_split
    split_rows = (rows + row_split - 1) // row_split
    for worker in prange(n_workers):
        xt = _aligned_empty(features, TILE_TOKENS)
        block = _aligned_empty(ROW_CHUNK, TILE_TOKENS)
        for item in range(worker, n_items, n_workers):
            t0 = item // row_split * TILE_TOKENS
            width = min(TILE_TOKENS, tokens - t0)
            _transpose_tile(x, t0, width, xt)
            row_stop = min((item % row_split + 1) * split_rows, rows)
            for r0 in range(item % row_split * split_rows, row_stop, ROW_CHUNK):
                n_rows = min(ROW_CHUNK, row_stop - r0)
                _compute_block(indptr, indices, values, bias, xt, r0, block[:n_rows])
                _write_transposed(block[:n_rows], out[t0 : t0 + width, r0 : r0 + n_rows])


@njit(parallel=True, fastmath=True, cache=True)
def _spmm_feature_major(indptr, indices, values, bias, x, out, row_split, n_workers):
    batch, features, tokens = x.shape
    rows = out.shape[1]
    n_tiles = (tokens + TILE_TOKENS - 1) // TILE_TOKENS
    n_items = batch * n_tiles * row_split
    split_rows = (rows + row_split - 1) // row_split
    for worker in prange(n_workers):
        tile = _aligned_empty(features, TILE_TOKENS)
        tile[:] = 0.0
        block = _aligned_empty(ROW_CHUNK, TILE_TOKENS)
        for item in range(worker, n_items, n_workers):
            b = item // (n_tiles * row_split)
            t0 = item // row_split % n_tiles * TILE_TOKENS
            width = min(TILE_TOKENS, tokens - t0)
            # A contiguous copy: reading the tile in place, one page per feature, was 3.5-5.5x slower.
            if width < TILE_TOKENS:  # last, partial tile: keep the unused lanes finite
                tile[:, width:] = 0.0
            tile[:, :width] = x[b, :, t0 : t0 + width]
            row_stop = min((item % row_split + 1) * split_rows, rows)
            for r0 in range(item % row_split * split_rows, row_stop, ROW_CHUNK):
                n_rows = min(ROW_CHUNK, row_stop - r0)
                _compute_block(indptr, indices, values, bias, tile, r0, block[:n_rows])
                out[b, r0 : r0 + n_rows, t0 : t0 + width] = block[:n_rows, :width]


def _work_split(n_tiles: int, rows: int) -> tuple[int, int]:
    """(row_split, n_workers): split the rows of a tile too when tiles are fewer than threads."""
    threads = numba.get_num_threads()
    row_split = max(1, min(-(-threads // n_tiles), rows))
    return row_split, max(1, min(threads, n_tiles * row_split))


def _bias_or_zeros(bias: np.ndarray | None, rows: int) -> np.ndarray:
    if bias is None:
        return np.zeros(rows, dtype=np.float32)
    bias = np.ascontiguousarray(bias, dtype=np.float32)
    if bias.shape != (rows,):
        raise ValueError(f"bias must have shape ({rows},), got {bias.shape}")
    return bias


def _output(out: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype=np.float32)
    if out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous float32 of shape {shape}")
    return out


def spmm(weight: CSRWeight, x: np.ndarray, bias: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Y = X @ W^T + b for token-major X of shape (..., in); returns (..., out) float32.

    Leading dimensions are flattened into tokens (a 1-D X is one token).  ``out``, if given, must
    be a C-contiguous float32 array of the result's shape; it is filled and returned.
    """
    rows, features = weight.shape
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 0 or x.shape[-1] != features:
        raise ValueError(f"x must have {features} features in its last dimension, got shape {x.shape}")
    out = _output(out, x.shape[:-1] + (rows,))
    x2 = x.reshape(-1, features)
    if x2.shape[0] and rows:
        row_split, n_workers = _work_split(-(-x2.shape[0] // TILE_TOKENS), rows)
        out2 = out.reshape(x2.shape[0], rows)
        args = (weight.indptr, weight.indices, weight.values, _bias_or_zeros(bias, rows), x2, out2)
        _spmm_token_major(*args, row_split, n_workers)
    return out


def spmm_feature_major(
    weight: CSRWeight, x: np.ndarray, bias: np.ndarray | None = None, out: np.ndarray | None = None
) -> np.ndarray:
    """Y = W @ X + b[:, None] for feature-major X of shape (in, tokens) or (batch, in, tokens).

    Returns (out, tokens) or (batch, out, tokens) float32: the layout of a convolution over
    im2col columns (NCHW), which needs no transposes at all.
    """
    rows, features = weight.shape
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim not in (2, 3) or x.shape[-2] != features:
        raise ValueError(f"x must be ({features}, tokens) or (batch, {features}, tokens), got {x.shape}")
    out = _output(out, x.shape[:-2] + (rows, x.shape[-1]))
    x3 = x.reshape((-1,) + x.shape[-2:])
    if out.size:
        row_split, n_workers = _work_split(x3.shape[0] * -(-x.shape[-1] // TILE_TOKENS), rows)
        out3 = out.reshape(x3.shape[0], rows, x.shape[-1])
        args = (weight.indptr, weight.indices, weight.values, _bias_or_zeros(bias, rows), x3, out3)
        _spmm_feature_major(*args, row_split, n_workers)
    return out
