"""Dense baselines for a Linear layer, y = x @ W^T + b: the paths a real model could run.

A sparse speedup is only honest against the fastest dense path a user could run instead, with
everything that path costs inside a model (dense tensors in, dense tensors out):

    "torch"           F.linear (MKL sgemm on x86)
    "onednn"          torch.ops.mkldnn._linear_pointwise with the weight pre-packed once by
                      torch.ops.mkldnn._reorder_linear_weight: oneDNN's GEMM that takes and returns
                      ordinary dense tensors (what inductor's CPU freezing uses); no conversion cost
    "onednn-convert"  torch.utils.mkldnn's MkldnnLinear: x.to_mkldnn(), mkldnn_linear, .to_dense();
                      the conversions are counted because a model with dense activations pays them

``onednn_compute_only`` is the same oneDNN product on an input converted beforehand and an output
left as an mkldnn tensor: a reference for the GEMM alone, not a path a model runs, so it is never a
candidate of ``fastest_dense_linear``.  ``OneDNNLinear`` and ``densify_fast`` put the "onednn"
path into a model, so an end-to-end dense baseline can run on it too.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from engine.runtime.modules import SharesOpaqueTensors, replace_submodule
from engine.core.measure import time_interleaved

LinearPath = Callable[[torch.Tensor], torch.Tensor]


def onednn_available() -> bool:
    """True if this torch build has oneDNN and its dense-in, dense-out linear op."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._linear_pointwise.default
        torch.ops.mkldnn._reorder_linear_weight.default
    except (AttributeError, RuntimeError):
        return False
    return True


def _flattened(path: Callable[[torch.Tensor], torch.Tensor], in_features: int) -> LinearPath:
    """Apply a 2-D path to (..., in) by flattening the leading dimensions into rows."""

    def run(x: torch.Tensor) -> torch.Tensor:
        y = path(x.reshape(-1, in_features))
        return y.reshape(*x.shape[:-1], y.shape[-1])

    return run


class OneDNNLinear(SharesOpaqueTensors, nn.Module):
    """Drop-in inference replacement of ``nn.Linear`` on oneDNN's GEMM (weight packed once)."""

    opaque_tensors = ("packed_weight",)

    def __init__(self, linear: nn.Linear, batch_size: int | None = None):
        super().__init__()
        if not onednn_available():
            raise RuntimeError("this torch build has no oneDNN linear (torch.ops.mkldnn._linear_pointwise)")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float().contiguous()
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight, batch_size)
        self.bias = None if linear.bias is None else linear.bias.detach().float().contiguous()

    @classmethod
    def from_linear(cls, linear: nn.Linear, batch_size: int | None = None) -> OneDNNLinear:
        return cls(linear, batch_size)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x.float(), self.packed_weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def dense_linear_paths(linear: nn.Linear, batch_size: int | None = None) -> dict[str, LinearPath]:
    """Every dense path available here, as callables x (..., in) -> (..., out), weights prepared once."""
    weight = linear.weight.detach().float().contiguous()
    bias = None if linear.bias is None else linear.bias.detach().float().contiguous()
    paths: dict[str, LinearPath] = {"torch": lambda x: F.linear(x, weight, bias)}
    if onednn_available():
        paths["onednn"] = OneDNNLinear(linear, batch_size)
        weight_mkldnn = weight.to_mkldnn()
        bias_mkldnn = None if bias is None else bias.to_mkldnn()

        def onednn_convert(x2: torch.Tensor) -> torch.Tensor:
            return torch._C._nn.mkldnn_linear(x2.to_mkldnn(), weight_mkldnn, bias_mkldnn).to_dense()

        paths["onednn-convert"] = _flattened(onednn_convert, linear.in_features)
    return paths


def onednn_compute_only(linear: nn.Linear, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """oneDNN's product alone: x converted to mkldnn beforehand, the output left in mkldnn layout."""
    x_mkldnn = x.reshape(-1, linear.in_features).float().contiguous().to_mkldnn()
    weight = linear.weight.detach().float().contiguous().to_mkldnn()
    bias = None if linear.bias is None else linear.bias.detach().float().contiguous().to_mkldnn()
    return lambda: torch._C._nn.mkldnn_linear(x_mkldnn, weight, bias)


def fastest_dense_linear(linear: nn.Linear, x: torch.Tensor, repeats: int = 10) -> tuple[str, LinearPath]:
    """Time the available dense paths on ``x`` (interleaved, median) and return the fastest (name, path)."""
    paths = dense_linear_paths(linear, batch_size=x.reshape(-1, linear.in_features).shape[0])
    with torch.no_grad():
        stats = time_interleaved({name: (lambda p=path: p(x)) for name, path in paths.items()}, repeats=repeats)
    name = min(stats, key=lambda n: stats[n].median)
    return name, paths[name]


def densify_fast(model: nn.Module, names: list[str], batch_size: int | None = None) -> nn.Module:
    """Swap the named ``nn.Linear`` submodules in place for ``OneDNNLinear``; returns model."""
    for name in names:
        layer = model.get_submodule(name)
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"{name} is a {type(layer).__name__}, not an nn.Linear")
        replace_submodule(model, name, OneDNNLinear.from_linear(layer, batch_size))
    return model
