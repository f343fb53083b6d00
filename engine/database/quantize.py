"""Quantize and prune one layer in one sweep (GPTQ / OBQ-style) from the layer Hessian H = 2 X X^T.

W (out x d) is the layer's weight as a matrix (``weight_matrix``), M an optional mask (True = keep)
and H the Hessian the OBS database already computes (``engine.model.layer_inputs``).  As in
``engine.database.reconstruct``, H_d = H + damp * mean(diag H) * I (inputs that are always zero get
H_jj = 1 first) and U is the upper Cholesky factor of H_d^-1 (H_d^-1 = U^T U).

Every row gets one symmetric int8 grid from its kept weights (``engine.runtime.int8``):

    scale_i = max_{j: M_ij} |W_ij| / 127          (1 for a row with nothing kept)

Columns are visited left to right.  Column j's weights are set to their grid point, or to zero
where the mask prunes them,

    q_ij = M_ij * clamp(round(w_ij / scale_i), -127, 127),      w^_ij = q_ij * scale_i,

and each weight's error is pushed onto the columns not yet visited, the OBS update for the
constraint w_ij = w^_ij:

    e_ij = (w_ij - w^_ij) / U_jj,        W[i, k] -= e_ij * U_jk   for k > j.

The weights are updated in blocks of ``block_size`` columns (a column's update applied within its
block at once, the block's errors E pushed onto the later columns afterwards as W[:, b:] -= E U[a:b, b:]),
which computes the same thing in fewer, larger products.  Weights pushed past the row's grid are
clamped to +-127.  The layer loss this aims at is ||W X - W^ X||^2 = tr(D H D^T) / 2, D = W^ - W.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from engine.core.grid import DENSE, is_int8, mask_level
from engine.database.reconstruct import damped_hessian, inverse_factor, weight_matrix
from engine.runtime.int8 import QMAX, quantize_weight


@dataclass(frozen=True)
class QuantizedWeight:
    """``q`` int8 (out x d), ``scale`` float32 (out,), ``dequantized`` = q * scale shaped like the layer's weight."""

    q: torch.Tensor
    scale: torch.Tensor
    dequantized: torch.Tensor


def row_scales(weight: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """scale_i = max over kept j of |W_ij| / 127, float32; 1 for rows with nothing kept."""
    scale = (weight.abs() * keep).amax(dim=1).float() / QMAX
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def quantize_layer(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    mask: torch.Tensor | None = None,
    damp: float = 0.01,
    block_size: int = 128,
) -> QuantizedWeight:
    """Per-row int8 weights for one layer, pruned to ``mask`` and error-compensated through H (above)."""
    W = weight_matrix(weight).double().cpu().clone()
    rows, columns = W.shape
    if hessian.shape != (columns, columns):
        raise ValueError(f"hessian must be ({columns}, {columns}) for a weight with {columns} inputs, got {tuple(hessian.shape)}")
    keep = torch.ones_like(W, dtype=torch.bool) if mask is None else weight_matrix(mask).cpu().bool()
    if keep.shape != W.shape:
        raise ValueError(f"mask must have the weight's shape {tuple(weight.shape)}, got {tuple(mask.shape)}")
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    scale = row_scales(W, keep)
    step = scale.double()
    U = inverse_factor(damped_hessian(hessian, damp))
    q = torch.zeros(rows, columns, dtype=torch.int8)
    for a in range(0, columns, block_size):
        b = min(a + block_size, columns)
        block = W[:, a:b].clone()
        errors = torch.zeros_like(block)
        for j in range(b - a):
            codes = torch.round(block[:, j] / step).clamp_(-QMAX, QMAX) * keep[:, a + j]
            q[:, a + j] = codes.to(torch.int8)
            errors[:, j] = (block[:, j] - codes * step) / U[a + j, a + j]
            block[:, j:] -= errors[:, j : j + 1] * U[a + j, a + j : b].unsqueeze(0)
        W[:, b:] -= errors @ U[a:b, b:]
    dequantized = (q.float() * scale.unsqueeze(1)).reshape(weight.shape)
    return QuantizedWeight(q, scale, dequantized)


def round_to_nearest(weight: torch.Tensor, mask: torch.Tensor | None = None) -> QuantizedWeight:
    """The baseline without compensation: ``engine.runtime.int8.quantize_weight`` of W * M (same scales)."""
    W = weight_matrix(weight).float().cpu()
    if mask is not None:
        W = W * weight_matrix(mask).cpu().bool()
    q, scale = quantize_weight(W)
    return QuantizedWeight(q, scale, (q.float() * scale.unsqueeze(1)).reshape(weight.shape))


def int8_cells(
    levels: list[str], fp32_weights: dict[str, torch.Tensor], hessian: torch.Tensor, method: str, damp: float, block_size: int,
) -> Iterator[tuple[str, QuantizedWeight]]:
    """(level, quantized weight) for every int8 level "q8:L" of ``levels``: the weight of the fp32
    level L (``fp32_weights[L]``, the dense weight for L = DENSE) on the int8 grid, its zeros kept.

    obs and adaprune quantize through H (``quantize_layer``: each rounding error pushed onto the
    weights not yet visited); magnitude, which reconstructs nothing, rounds to nearest."""
    for level in levels:
        if not is_int8(level):
            continue
        start = fp32_weights[mask_level(level)]
        mask = None if mask_level(level) == DENSE else start != 0
        if method == "magnitude":
            yield level, round_to_nearest(start, mask)
        else:
            yield level, quantize_layer(start, hessian, mask, damp, block_size)
