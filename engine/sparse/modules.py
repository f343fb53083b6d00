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

Backends: "numba" (``engine.sparse.csr``) and "torch-csr" (``torch.sparse_csr_tensor`` with
``torch.addmm``, for comparison; it needs feature-major input, so token-major activations are
transposed and the result transposed back, both counted).
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from engine.sparse.csr import CSRWeight, spmm, spmm_feature_major

BACKENDS = ("numba", "torch-csr")


def _to_torch_csr(weight: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return weight.detach().float().contiguous().to_sparse_csr()


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")


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

    opaque_tensors = ("weight_csr",)

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, backend: str = "numba"):
        super().__init__()
        _check_backend(backend)
        self.out_features, self.in_features = weight.shape
        self.backend = backend
        self.register_buffer("bias", _bias_vector(bias, self.out_features))
        if backend == "numba":
            self.csr = CSRWeight.from_dense(weight)
        else:
            self.register_buffer("weight_csr", _to_torch_csr(weight))

    @classmethod
    def from_linear(cls, linear: nn.Linear, backend: str = "numba") -> SparseLinear:
        return cls(linear.weight, linear.bias, backend)

    @property
    def density(self) -> float:
        if self.backend == "numba":
            return self.csr.density
        return self.weight_csr.values().numel() / (self.out_features * self.in_features)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        tokens = x.detach().reshape(-1, self.in_features).float().contiguous()
        if self.backend == "numba":
            out = torch.empty(tokens.shape[0], self.out_features)
            spmm(self.csr, tokens.numpy(), self.bias.numpy(), out.numpy())
        else:
            out = torch.addmm(self.bias.unsqueeze(1), self.weight_csr, tokens.t().contiguous()).t().contiguous()
        return out.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"density={self.density:.3f}, backend={self.backend}"
        )


class SparseConv2d(SharesOpaqueTensors, nn.Module):
    """``conv2d(x, W, b)`` (groups = 1, zero padding) as a sparse product over im2col columns."""

    opaque_tensors = ("weight_csr",)

    def __init__(self, conv: nn.Conv2d, backend: str = "numba"):
        super().__init__()
        _check_backend(backend)
        if conv.groups != 1:
            raise ValueError("SparseConv2d supports groups=1 only")
        if conv.padding_mode != "zeros":
            raise ValueError("SparseConv2d supports padding_mode='zeros' only")
        self.out_channels, self.in_channels = conv.out_channels, conv.in_channels
        self.kernel_size, self.stride, self.dilation = conv.kernel_size, conv.stride, conv.dilation
        self.padding = self._explicit_padding(conv)
        self.backend = backend
        self.register_buffer("bias", _bias_vector(conv.bias, self.out_channels))
        matrix = conv.weight.detach().reshape(self.out_channels, -1)
        if backend == "numba":
            self.csr = CSRWeight.from_dense(matrix)
        else:
            self.register_buffer("weight_csr", _to_torch_csr(matrix))

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, backend: str = "numba") -> SparseConv2d:
        return cls(conv, backend)

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
        columns = self._columns(images)
        batch, depth, pixels = columns.shape
        if self.backend == "numba":
            out = torch.empty(batch, self.out_channels, pixels)
            spmm_feature_major(self.csr, columns.contiguous().numpy(), self.bias.numpy(), out.numpy())
        else:
            stacked = columns.transpose(0, 1).reshape(depth, batch * pixels)
            out = torch.addmm(self.bias.unsqueeze(1), self.weight_csr, stacked)
            out = out.reshape(self.out_channels, batch, pixels).transpose(0, 1).contiguous()
        out = out.reshape(batch, self.out_channels, height, width)
        return out[0] if unbatched else out

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, backend={self.backend}"
        )


def replace_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` where the qualified name (e.g. "encoder.layer.0.output.dense") points."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def sparsify_module(model: nn.Module, names: list[str], backend: str = "numba") -> nn.Module:
    """Replace the named ``nn.Linear`` / ``nn.Conv2d`` submodules in place by sparse ones; returns model."""
    _check_backend(backend)
    for name in names:
        layer = model.get_submodule(name)
        if isinstance(layer, nn.Linear):
            replace_submodule(model, name, SparseLinear.from_linear(layer, backend))
        elif isinstance(layer, nn.Conv2d):
            replace_submodule(model, name, SparseConv2d.from_conv(layer, backend))
        else:
            raise TypeError(f"{name} is a {type(layer).__name__}; only nn.Linear and nn.Conv2d can be sparsified")
    return model
