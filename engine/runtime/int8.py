"""int8 numerics in one place: weight and activation quantization, the exact reference, dense int8 Linear.

Weights, symmetric per output channel (row r of W, out x in):

    scale_r = max_k |W_rk| / 127        q_rk = clamp(round(W_rk / scale_r), -127, 127)

Activations, dynamic and symmetric per token (row t of X, tokens x in), the same formula:

    s_t = max_k |X_tk| / 127            p_tk = clamp(round(X_tk / s_t), -127, 127)

An all-zero row gets scale 1 (its codes are 0).  ``round`` is round-half-to-even (``torch.round``);
-128 is never used, so the grid is symmetric and -q is always a code.  A kernel then computes

    acc_tr = sum_k p_tk q_rk                       (int32, exact: |acc| <= 127^2 * in < 2^31)
    y_tr   = (float32(acc_tr) * s_t) * scale_r + b_r     (float32, in this order)

``fake_quantized_linear`` is that result computed by plain torch ops (the int32 sum through a
float64 matmul, exact since |acc| < 2^53); stitching and scoring use it, so the calibration loss is
the loss of what the kernels run.  Every kernel here and in ``engine.runtime.csr_int8`` matches it
bit for bit (tested).

The dense int8 path.  Candidates on this Zen 4 (AVX-512 VNNI), timed by
``benchmarks/bench_int8_kernels.py`` (docs/benchmarks.md, "int8 kernels"):

    torch._int_mm (int8 x int8 -> int32, oneDNN)     exact int32 sums; per-token scales applied after
    onednn::qlinear_pointwise, int8 activations      ~64 s per call: oneDNN's reference path
    onednn::qlinear_pointwise, uint8 activations     one activation scale per tensor only
    fbgemm quantized.linear_dynamic                  uint8 activations, one scale per tensor

``torch._int_mm`` is the only one that keeps per-token activation scales ("act scale/zp size should
be 1" from oneDNN's qlinear; fbgemm's dynamic path quantizes per tensor), on the CPU it is
oneDNN's s8s8s32 matmul (VNNI where the CPU has it, AVX2 otherwise), and dynamo traces it as an ordinary op (under
``torch.compile`` with freezing inductor fuses the quantization and the rescale around it, bit for
bit the eager result), so no custom op is needed.
"""

from __future__ import annotations

import torch
from torch import nn

QMAX = 127  # symmetric int8 grid: codes -127 .. 127


def _row_scales(matrix: torch.Tensor) -> torch.Tensor:
    """max_k |M_rk| / 127 per row, float32; 1 for an all-zero row."""
    scale = matrix.detach().float().abs().amax(dim=-1) / QMAX
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def quantize_rows(matrix: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """clamp(round(M_rk / scale_r), -127, 127) as int8, for given per-row scales."""
    # in place after the division: a second fresh 3 MB buffer cost 2.7 ms in page faults (2048 x 384)
    codes = (matrix.detach().float() / scale.unsqueeze(-1)).round_()
    return codes.clamp_(-QMAX, QMAX).to(torch.int8)


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 (out x in), scale float32 (out,)): symmetric per-output-channel quantization of W."""
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out x in), got shape {tuple(weight.shape)}")
    scale = _row_scales(weight)
    return quantize_rows(weight, scale), scale


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(p int8 (tokens x in), s float32 (tokens,)): dynamic symmetric per-token quantization of X (2-D)."""
    scale = _row_scales(x)
    return quantize_rows(x, scale), scale


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """q_rk * scale_r in float32: the weight an int8 layer effectively multiplies with."""
    return q.float() * scale.float().unsqueeze(-1)


def _check_weight(weight_q: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None) -> None:
    if weight_q.dtype != torch.int8 or weight_q.dim() != 2:
        raise TypeError(f"weight_q must be a 2-D int8 tensor, got {weight_q.dtype} {tuple(weight_q.shape)}")
    if weight_scale.shape != (weight_q.shape[0],):
        raise ValueError(f"weight_scale must have shape ({weight_q.shape[0]},), got {tuple(weight_scale.shape)}")
    if bias is not None and bias.shape != (weight_q.shape[0],):
        raise ValueError(f"bias must have shape ({weight_q.shape[0]},), got {tuple(bias.shape)}")


def rescale(acc: torch.Tensor, act_scale: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None):
    """y_tr = (float32(acc_tr) * s_t) * scale_r + b_r, float32, the epilogue every int8 path shares."""
    y = acc.float()  # in place from here: one buffer instead of three (eager; a compiled graph fuses them)
    y.mul_(act_scale.unsqueeze(1)).mul_(weight_scale.unsqueeze(0))
    return y if bias is None else y.add_(bias)


def fake_quantized_linear(
    x: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """The exact float result of an int8 Linear on x (..., in): what the kernels compute, in plain torch."""
    _check_weight(weight_q, weight_scale, bias)
    tokens = x.reshape(-1, weight_q.shape[1])
    p, s = quantize_activations(tokens)
    acc = (p.double() @ weight_q.double().t()).to(torch.int32)
    return rescale(acc, s, weight_scale.float(), bias).reshape(*x.shape[:-1], weight_q.shape[0])


def int8_linear(
    x: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Dense int8 Linear on ``torch._int_mm`` (int8 x int8 -> exact int32), q (out x in) passed transposed
    as a view (measured as fast as a contiguous (in x out) copy)."""
    p, s = quantize_activations(x.reshape(-1, weight_q.shape[1]))
    acc = torch._int_mm(p, weight_q.t())
    return rescale(acc, s, weight_scale, bias).reshape(*x.shape[:-1], weight_q.shape[0])


class Int8Linear(nn.Module):
    """``y = x @ W^T + b`` with W int8 per output channel and x quantized per token (dense, ``torch._int_mm``).

    Inference only, float32 in and out, CPU; traceable by ``torch.compile`` without graph breaks."""

    def __init__(self, weight_q: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        _check_weight(weight_q, weight_scale, bias)
        self.out_features, self.in_features = weight_q.shape
        self.register_buffer("weight_q", weight_q.detach().contiguous().clone())
        self.register_buffer("weight_scale", weight_scale.detach().float().contiguous().clone())
        bias = torch.zeros(self.out_features) if bias is None else bias.detach().float().contiguous().clone()
        self.register_buffer("bias", bias)

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Int8Linear:
        """Round-to-nearest per-channel quantization of a float weight (zeros stay zeros)."""
        return cls(*quantize_weight(weight), bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        return cls.from_float(linear.weight, linear.bias)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear(x.float(), self.weight_q, self.weight_scale, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


# ---------------------------------------------------------------------------- int8 layers of a float model
# A Linear of a float model (the stitched or final model) stands for an int8 layer when it carries a
# ``weight_scale`` buffer (its weight is then q * scale, row by row) and quantizes its input per token
# in a forward pre-hook: its float forward is the kernels' result up to float32 rounding, and its
# state dict carries the scales.
SCALE = "weight_scale"


def quantize_input(_module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: the input as the int8 kernels see it, x_tk -> p_tk * s_t (per token)."""
    x = args[0]
    p, s = quantize_activations(x.reshape(-1, x.shape[-1]))
    return (dequantize(p, s).reshape(x.shape).to(x.dtype), *args[1:])


def mark_int8(module: nn.Module, scale: torch.Tensor) -> None:
    """Make ``module`` (its weight already q * scale) an int8 layer of the float model."""
    unmark_int8(module)
    module.register_buffer(SCALE, scale.detach().float().to(module.weight.device))
    module.register_forward_pre_hook(quantize_input)


def unmark_int8(module: nn.Module) -> None:
    """Back to a plain float layer (nothing to do for one that is not marked)."""
    module._buffers.pop(SCALE, None)
    for key, hook in list(module._forward_pre_hooks.items()):
        if hook is quantize_input:  # found by identity: a deep copy's hooks are its own
            del module._forward_pre_hooks[key]


def int8_scale(module: nn.Module) -> torch.Tensor | None:
    """The scales of a marked int8 layer, None for a float one."""
    return module._buffers.get(SCALE)


def int8_codes(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8, scale) of a marked int8 Linear: q = round(W / scale), exact since W = q * scale."""
    scale = int8_scale(module)
    if scale is None:
        raise ValueError(f"{type(module).__name__} is not an int8 layer (no {SCALE} buffer)")
    return quantize_rows(module.weight.detach().float(), scale), scale
