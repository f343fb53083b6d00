"""Drop-in sparse modules: pruned ``nn.Linear`` / ``nn.Conv2d`` run on a sparse kernel (inference).

The hand-off from the accuracy side is a dense weight with exact zeros; the modules keep exactly
those non-zeros and compute the same function as the dense layer,

    SparseLinear:  y = x @ W^T + b            x: (..., in)   -> (..., out)
    SparseConv2d:  y = conv2d(x, W, b, stride, padding, dilation)   (groups = 1)

in fp32 on the CPU, without autograd.  A convolution is a matrix product over im2col columns,
Y[n] = W.reshape(out, -1) @ unfold(x)[n], which is feature-major (columns are pixels): it runs on
the feature-major kernel and lands in NCHW order without a transpose; a 1x1 stride-1 convolution
skips the unfold, since x[n].reshape(C, H*W) already is its column matrix.  The unfold is part
of the layer's time, as it would be in a real model.

Kernels plug in by name (``KERNELS``): "numba" (``engine.runtime.csr``), "numba-int8"
(``engine.runtime.csr_int8``: the weight rounded to int8 per row, activations per token) and "torch-csr"
(``torch.sparse_csr_tensor`` with ``torch.addmm``, for comparison; it needs feature-major input,
so token-major activations are transposed and the result transposed back, both counted).  A
kernel packs the pruned weight matrix W (out x in, exact zeros) once and then computes

    token_major(packed, X, b)   = X @ W^T + b        X: (tokens, in)         -> (tokens, out)
    feature_major(packed, C, b) = W @ C[n] + b       C: (batch, in, columns) -> (batch, out, columns)
"""

from __future__ import annotations

import copy
import functools
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from engine.runtime.csr import CSRWeight, spmm, spmm_feature_major
from engine.core.grid import level_sparsity
from engine.runtime.csr_int8 import CSRInt8Weight, SparseInt8Linear, sparse_int8_linear, sparse_int8_linear_numpy
from engine.runtime.int8 import Int8Linear, int8_linear


@dataclass(frozen=True)
class SparseKernel:
    """One sparse-kernel family: how it packs a weight and multiplies with it."""

    name: str
    pack: Callable[[torch.Tensor], Any]
    token_major: Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]
    feature_major: Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]
    nonzeros: Callable[[Any], int]


def _numba_token_major(packed: CSRWeight, tokens: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    out = torch.empty(tokens.shape[0], bias.shape[0])
    spmm(packed, tokens.numpy(), bias.numpy(), out.numpy())
    return out


def _numba_feature_major(packed: CSRWeight, columns: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    out = torch.empty(columns.shape[0], bias.shape[0], columns.shape[2])
    spmm_feature_major(packed, columns.contiguous().numpy(), bias.numpy(), out.numpy())
    return out


def _to_torch_csr(weight: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return weight.detach().float().contiguous().to_sparse_csr()


def _torch_csr_token_major(packed: torch.Tensor, tokens: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return torch.addmm(bias.unsqueeze(1), packed, tokens.t().contiguous()).t().contiguous()


def _torch_csr_feature_major(packed: torch.Tensor, columns: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    batch, depth, pixels = columns.shape
    stacked = columns.transpose(0, 1).reshape(depth, batch * pixels)
    out = torch.addmm(bias.unsqueeze(1), packed, stacked)
    return out.reshape(bias.shape[0], batch, pixels).transpose(0, 1).contiguous()


def _numba_int8_feature_major(packed: CSRInt8Weight, columns: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    batch, depth, pixels = columns.shape
    tokens = columns.transpose(1, 2).reshape(batch * pixels, depth)
    out = sparse_int8_linear_numpy(packed, tokens, bias)
    return out.reshape(batch, pixels, bias.shape[0]).transpose(1, 2).contiguous()


KERNELS: dict[str, SparseKernel] = {
    "numba": SparseKernel(
        "numba", CSRWeight.from_dense, _numba_token_major, _numba_feature_major, lambda packed: packed.nnz,
    ),
    "torch-csr": SparseKernel(
        "torch-csr", _to_torch_csr, _torch_csr_token_major, _torch_csr_feature_major,
        lambda packed: packed.values().numel(),
    ),
    # int8 weights (round-to-nearest per row) and per-token int8 activations: engine.runtime.csr_int8
    "numba-int8": SparseKernel(
        "numba-int8", CSRInt8Weight.from_float, sparse_int8_linear_numpy, _numba_int8_feature_major,
        lambda packed: packed.nnz,
    ),
}


def sparse_kernel(name: str) -> SparseKernel:
    if name not in KERNELS:
        raise ValueError(f"unknown sparse kernel {name!r}; choose one of {tuple(KERNELS)}")
    return KERNELS[name]


def _bias_vector(bias: torch.Tensor | None, rows: int) -> torch.Tensor:
    if bias is None:
        return torch.zeros(rows)
    return bias.detach().float().contiguous().clone()


class SharesOpaqueTensors:
    """``copy.deepcopy`` support for modules holding tensors torch cannot deep-copy (mkldnn, sparse
    CSR): the copy shares them, which is safe because these modules never modify them."""

    opaque_tensors: tuple[str, ...] = ()

    def __deepcopy__(self, memo: dict) -> SharesOpaqueTensors:
        for name in self.opaque_tensors:
            tensor = getattr(self, name, None)
            if tensor is not None:
                memo[id(tensor)] = tensor
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return clone


class SparseLinear(SharesOpaqueTensors, nn.Module):
    """``y = x @ W^T + b`` with W kept as its non-zeros; float32 in and out, CPU, no autograd."""

    opaque_tensors = ("packed",)

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kernel: str = "numba"):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.kernel = sparse_kernel(kernel).name
        self.register_buffer("bias", _bias_vector(bias, self.out_features))
        self.packed = KERNELS[self.kernel].pack(weight.detach())

    @classmethod
    def from_linear(cls, linear: nn.Linear, kernel: str = "numba") -> SparseLinear:
        return cls(linear.weight, linear.bias, kernel)

    @property
    def density(self) -> float:
        return KERNELS[self.kernel].nonzeros(self.packed) / (self.out_features * self.in_features)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        tokens = x.detach().reshape(-1, self.in_features).float().contiguous()
        out = KERNELS[self.kernel].token_major(self.packed, tokens, self.bias)
        return out.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"density={self.density:.3f}, kernel={self.kernel}"
        )


class SparseConv2d(SharesOpaqueTensors, nn.Module):
    """``conv2d(x, W, b)`` (groups = 1, zero padding) as a sparse product over im2col columns."""

    opaque_tensors = ("packed",)

    def __init__(self, conv: nn.Conv2d, kernel: str = "numba"):
        super().__init__()
        if conv.groups != 1:
            raise ValueError("SparseConv2d supports groups=1 only")
        if conv.padding_mode != "zeros":
            raise ValueError("SparseConv2d supports padding_mode='zeros' only")
        self.out_channels, self.in_channels = conv.out_channels, conv.in_channels
        self.kernel_size, self.stride, self.dilation = conv.kernel_size, conv.stride, conv.dilation
        self.padding = self._explicit_padding(conv)
        self.kernel = sparse_kernel(kernel).name
        self.register_buffer("bias", _bias_vector(conv.bias, self.out_channels))
        self.packed = KERNELS[self.kernel].pack(conv.weight.detach().reshape(self.out_channels, -1))

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, kernel: str = "numba") -> SparseConv2d:
        return cls(conv, kernel)

    @staticmethod
    def _explicit_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
        """(left, right, top, bottom); 'same' puts the odd pixel on the right/bottom, as torch does."""
        if conv.padding == "valid":
            return (0, 0, 0, 0)
        if conv.padding == "same":
            total_h, total_w = (d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size))
            return (total_w // 2, total_w - total_w // 2, total_h // 2, total_h - total_h // 2)
        pad_h, pad_w = conv.padding
        return (pad_w, pad_w, pad_h, pad_h)

    def _output_size(self, height: int, width: int) -> tuple[int, int]:
        left, right, top, bottom = self.padding
        sizes = []
        for size, pad, k, s, d in zip(
            (height, width), (top + bottom, left + right), self.kernel_size, self.stride, self.dilation
        ):
            sizes.append((size + pad - d * (k - 1) - 1) // s + 1)
        return sizes[0], sizes[1]

    def _columns(self, x: torch.Tensor) -> torch.Tensor:
        """im2col: (N, C*kh*kw, H_out*W_out), ordered like W.reshape(out, -1)."""
        pointwise = self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0, 0, 0)
        if pointwise:
            return x.reshape(x.shape[0], self.in_channels, -1).contiguous()
        left, right, top, bottom = self.padding
        if left == right and top == bottom:
            return F.unfold(x, self.kernel_size, self.dilation, (top, left), self.stride)
        return F.unfold(F.pad(x, self.padding), self.kernel_size, self.dilation, 0, self.stride)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unbatched = x.dim() == 3
        images = x.unsqueeze(0) if unbatched else x
        images = images.detach().float()
        height, width = self._output_size(*images.shape[-2:])
        out = KERNELS[self.kernel].feature_major(self.packed, self._columns(images), self.bias)
        out = out.reshape(images.shape[0], self.out_channels, height, width)
        return out[0] if unbatched else out

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, kernel={self.kernel}"
        )


def replace_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` where the qualified name (e.g. "encoder.layer.0.output.dense") points."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def sparse_module(layer: nn.Module, kernel: str = "numba") -> nn.Module:
    """The sparse-kernel module for a pruned ``nn.Linear`` or ``nn.Conv2d`` (its zeros are skipped)."""
    if isinstance(layer, nn.Linear):
        return SparseLinear.from_linear(layer, kernel)
    if isinstance(layer, nn.Conv2d):
        return SparseConv2d.from_conv(layer, kernel)
    raise TypeError(f"a {type(layer).__name__} cannot be sparsified; only nn.Linear and nn.Conv2d can")


def int8_module(weight_q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, level: str) -> nn.Module:
    """The module that runs an int8 Linear at ``level``: ``Int8Linear`` (dense, ``torch._int_mm``) at
    "q8:0.0000", our sparse int8 kernel (``SparseInt8Linear``) at a sparse int8 level."""
    if level_sparsity(level) == 0.0:
        return Int8Linear(weight_q, scale, bias)
    return SparseInt8Linear.from_int8(weight_q, scale, bias)


class CompiledInt8(nn.Module):
    """An int8 module's forward as inductor compiles it: its quantization fused around the product, as
    in a compiled model, but one shared compiled function per shape, its tensors passed as inputs
    (so timing every layer compiles once per shape, not once per layer).  For the profiler of the
    compiled runtime: the eager int8 modules time their quantization as separate passes."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        module = self.module
        # every shape compiled for itself (as in a compiled model), only the non-zero count left symbolic
        if isinstance(module, Int8Linear):
            with torch._dynamo.config.patch(automatic_dynamic_shapes=False):
                return _compiled(int8_linear)(x, module.weight_q, module.weight_scale, module.bias)
        operands = module.operands()
        for nonzeros in operands[1:4]:  # indices, values, float_values
            torch._dynamo.maybe_mark_dynamic(nonzeros, 0)
        torch._dynamo.mark_static(x)
        torch._dynamo.mark_static(operands[0])  # indptr: (panels, out + 1)
        with torch._dynamo.config.patch(recompile_limit=64):  # shapes x panel counts
            return _compiled(sparse_int8_linear)(x, *operands)


@functools.cache
def _compiled(function: Callable) -> Callable:
    return torch.compile(function, fullgraph=True)


def sparsify_module(model: nn.Module, names: list[str], kernel: str = "numba") -> nn.Module:
    """Replace the named ``nn.Linear`` / ``nn.Conv2d`` submodules in place by sparse ones; returns model."""
    sparse_kernel(kernel)
    for name in names:
        layer = model.get_submodule(name)
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            replace_submodule(model, name, sparse_module(layer, kernel))
        else:
            raise TypeError(f"{name} is a {type(layer).__name__}; only nn.Linear and nn.Conv2d can be sparsified")
    return model
