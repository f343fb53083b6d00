"""Our Numba CSR kernel as a PyTorch custom operator, so ``torch.compile`` can take a whole sparse model.

``SparseLinear`` (engine.runtime.modules) calls the Numba kernel from Python with NumPy views; dynamo
cannot trace that (``.numpy()`` and a Numba dispatcher are graph breaks), so a compiled model would
fall back to eager around every sparse layer and inductor could fuse nothing across them.  Here the
kernel is registered with ``torch.library.custom_op`` as

    spdy::csr_linear(Tensor x, Tensor indptr, Tensor indices, Tensor values, Tensor bias,
                     int panel_width) -> Tensor

an opaque operator: dynamo records one node for it, its fake (meta) implementation gives the output
shape ``x.shape[:-1] + (out_features,)`` without running anything, and inductor calls the real
implementation as an extern kernel between the kernels it generates for everything else.  The packed
weight travels as three ordinary tensors (the arrays of ``CSRWeight``: ``indptr`` (panels, out + 1)
int64, ``indices`` int32, ``values`` float32) held as buffers of ``OpSparseLinear``; with inductor's
``freezing`` they become constants of the compiled graph.  The real implementation views them as
NumPy arrays (no copies) and runs ``engine.runtime.csr.spmm``, the very call ``SparseLinear`` makes,
so the op's output equals ``SparseLinear``'s bit for bit (same arrays, same kernel, same threads).

The operator is inference-only: it has no autograd formula (call it under ``torch.no_grad()`` or
``torch.inference_mode()``), takes float32 CPU tensors and returns a new contiguous float32 tensor.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import nn

from engine.runtime.csr import CSRWeight, spmm
from engine.runtime.modules import SparseLinear, replace_submodule

OP_NAME = "spdy::csr_linear"


def _check(x: torch.Tensor, indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, bias: torch.Tensor) -> None:
    if x.dtype != torch.float32 or values.dtype != torch.float32 or bias.dtype != torch.float32:
        raise TypeError(f"{OP_NAME}: x, values and bias must be float32 (got {x.dtype}, {values.dtype}, {bias.dtype})")
    if indptr.dtype != torch.int64 or indices.dtype != torch.int32:
        raise TypeError(f"{OP_NAME}: indptr must be int64 and indices int32 (got {indptr.dtype}, {indices.dtype})")
    if indptr.dim() != 2:
        raise ValueError(f"{OP_NAME}: indptr must be (panels, out_features + 1), got shape {tuple(indptr.shape)}")
    if bias.shape != (indptr.shape[1] - 1,):
        raise ValueError(f"{OP_NAME}: bias must have shape ({indptr.shape[1] - 1},), got {tuple(bias.shape)}")


@torch.library.custom_op(OP_NAME, mutates_args=(), device_types="cpu")
def csr_linear(
    x: torch.Tensor,
    indptr: torch.Tensor,
    indices: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor,
    panel_width: int,
) -> torch.Tensor:
    """y = x @ W^T + bias for token-major x (..., in_features), W the CSR weight given by its arrays.

    ``in_features`` is ``x.shape[-1]``; ``out_features`` is ``indptr.shape[1] - 1``.  ``panel_width``
    is ``CSRWeight.panel_width`` (the kernel itself reads only the arrays; it is passed so that the
    weight can be rebuilt exactly and checked)."""
    _check(x, indptr, indices, values, bias)
    out_features = indptr.shape[1] - 1
    weight = CSRWeight(
        indptr.numpy(), indices.numpy(), values.numpy(), (out_features, x.shape[-1]), panel_width
    )
    out = torch.empty(*x.shape[:-1], out_features, dtype=torch.float32)
    spmm(weight, x.detach().contiguous().numpy(), bias.numpy(), out.numpy())
    return out


@csr_linear.register_fake
def _csr_linear_fake(x, indptr, indices, values, bias, panel_width):
    torch._check(indptr.dim() == 2, lambda: f"{OP_NAME}: indptr must be 2-D")
    return x.new_empty(*x.shape[:-1], indptr.shape[1] - 1, dtype=torch.float32)


class OpSparseLinear(nn.Module):
    """``SparseLinear`` on the ``spdy::csr_linear`` operator: the same kernel, traceable by dynamo.

    Holds the CSR arrays and the bias as buffers (so ``model.to``/``state_dict`` see them and
    inductor's freezing turns them into constants).  Inference only, float32, CPU."""

    def __init__(self, csr: CSRWeight, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = csr.shape
        self.panel_width = int(csr.panel_width)
        self.register_buffer("indptr", torch.from_numpy(csr.indptr))
        self.register_buffer("indices", torch.from_numpy(csr.indices))
        self.register_buffer("values", torch.from_numpy(csr.values))
        bias = torch.zeros(self.out_features) if bias is None else bias.detach().float().contiguous().clone()
        self.register_buffer("bias", bias)

    @classmethod
    def from_sparse_linear(cls, layer: SparseLinear) -> OpSparseLinear:
        csr = numba_csr(layer)
        if csr is None:
            raise ValueError("only a SparseLinear on the numba kernel (a CSRWeight) has a custom op")
        return cls(csr, layer.bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> OpSparseLinear:
        """Keep the exact non-zeros of ``linear.weight`` (panels sized as ``CSRWeight.from_dense`` does)."""
        return cls(CSRWeight.from_dense(linear.weight), linear.bias)

    @property
    def density(self) -> float:
        return self.values.numel() / max(1, self.out_features * self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.spdy.csr_linear(x.float(), self.indptr, self.indices, self.values, self.bias, self.panel_width)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, density={self.density:.3f}"


def numba_csr(layer: nn.Module) -> CSRWeight | None:
    """The ``CSRWeight`` a ``SparseLinear`` runs on, or None if it runs on another kernel."""
    value = getattr(layer, "packed", None)
    return value if isinstance(value, CSRWeight) else None


def use_custom_ops(model: nn.Module) -> nn.Module:
    """Swap every numba ``SparseLinear`` in ``model`` (in place) for an ``OpSparseLinear`` sharing its
    arrays; returns ``model``.  Other modules (dense layers, ``SparseConv2d``) are left as they are."""
    names = [
        name for name, module in model.named_modules() if isinstance(module, SparseLinear) and numba_csr(module) is not None
    ]
    for name in names:
        replace_submodule(model, name, OpSparseLinear.from_sparse_linear(model.get_submodule(name)))
    return model


def sparsify_with_ops(model: nn.Module, names: list[str]) -> nn.Module:
    """Replace the named ``nn.Linear`` submodules (in place) by ``OpSparseLinear``; returns ``model``."""
    for name in names:
        layer = model.get_submodule(name)
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"{name} is a {type(layer).__name__}, not an nn.Linear")
        replace_submodule(model, name, OpSparseLinear.from_linear(layer))
    return model


# ---------------------------------------------------------------------------- sibling fusion
FUSION_VERSION = 3  # part of the pass's uuid: bump when the pass changes (invalidates cached graphs)


def fuse_sibling_csr_linears(graph: torch.fx.Graph) -> int:
    """Stack ``spdy::csr_linear`` calls that share their input and have frozen weights (a transformer's
    Q, K and V projections) into one call on the rows stacked, followed by slices of its output;
    returns how many groups were fused.  An inductor post-grad pass: see ``sibling_fusion_pass``.

    The kernel transposes each 64-token tile of its input once per call; stacked, Q, K and V share
    one transpose and one pass over the tiles (measured 1.2-1.5x faster than three calls on MiniLM's
    3 x 384x384 at 67%, 2048 tokens, 2 threads).  The stacked weight keeps exactly the same non-zeros;
    its panels are re-sized for the taller matrix, which only reorders each row's sum (fp32
    rounding).  Weights are ``get_attr`` constants only with inductor's ``freezing``; without it the
    pass finds nothing to do."""

    def frozen(node: torch.fx.Node) -> bool:
        return node.args[0].meta.get("val") is not None and all(
            isinstance(arg, torch.fx.Node) and arg.op == "get_attr" for arg in node.args[1:5])

    return _fuse_siblings(graph, torch.ops.spdy.csr_linear.default, frozen, _stack_csr, "spdy_stacked_groups")


def fuse_sibling_int_mm(graph: torch.fx.Graph) -> int:
    """Join ``aten._int_mm`` calls that share their int8 input and have frozen weights (an int8 model's
    Q, K and V projections, whose input quantization inductor already shares) into one call on the
    weights side by side, followed by slices of its int32 output; returns how many groups were joined.

        [acc_Q | acc_K | acc_V] = p @ [Q^T | K^T | V^T]

    The int32 sums are exact, so every slice equals its own call's result bit for bit.  On MiniLM's
    shapes (2048 tokens, 3 x 384, 2 threads, oneDNN VNNI) it measured no faster than three calls on a
    quiet machine (``benchmarks/bench_int8_join.py``, docs/benchmarks.md).  Like
    ``fuse_sibling_csr_linears``, it needs ``freezing``."""

    def frozen(node: torch.fx.Node) -> bool:
        weight = node.args[1]
        return isinstance(weight, torch.fx.Node) and weight.op == "get_attr" and node.meta.get("val") is not None

    return _fuse_siblings(graph, torch.ops.aten._int_mm.default, frozen, _join_int_mm, "spdy_joined_int_mm")


def _fuse_siblings(graph: torch.fx.Graph, target, frozen: Callable, fuse: Callable, counter: str) -> int:
    """Group the calls of ``target`` that pass ``frozen`` by their first argument, ``fuse`` every group
    of two or more (gm, graph, input, nodes, index), count them in inductor's ``counter``."""
    groups: dict[torch.fx.Node, list[torch.fx.Node]] = {}
    for node in graph.find_nodes(op="call_function", target=target):
        if frozen(node):
            groups.setdefault(node.args[0], []).append(node)
    siblings = [(x, nodes) for x, nodes in groups.items() if len(nodes) > 1]
    for index, (x, nodes) in enumerate(siblings):
        order = {node: position for position, node in enumerate(graph.nodes)}
        with graph.inserting_before(min(nodes, key=order.__getitem__)):
            call = fuse(graph.owning_module, graph, x, nodes, index)
            _replace_by_slices(graph, call, nodes)
        for node in nodes:
            graph.erase_node(node)
    if siblings:
        graph.lint()
        from torch._dynamo.utils import counters

        counters["inductor"][counter] += len(siblings)
    return len(siblings)


def _constant(gm: torch.fx.GraphModule, graph: torch.fx.Graph, name: str, tensor: torch.Tensor, fake_mode) -> torch.fx.Node:
    """``tensor`` as a new buffer of ``gm`` (a free name from ``name``) and its ``get_attr`` node."""
    while hasattr(gm, name):
        name += "_"
    gm.register_buffer(name, tensor)
    attr = graph.get_attr(name)
    if fake_mode is not None:
        attr.meta["val"] = fake_mode.from_tensor(tensor, static_shapes=True)
    return attr


def _replace_by_slices(graph: torch.fx.Graph, call: torch.fx.Node, nodes: list) -> None:
    """Every use of each node reads its own columns of ``call``'s last dimension instead, in order."""
    joined = call.meta["val"]
    start, dim = 0, joined.dim() - 1
    for node in nodes:
        width = node.meta["val"].shape[-1]
        piece = graph.call_function(torch.ops.aten.slice.Tensor, (call, dim, start, start + width))
        piece.meta["val"] = joined[..., start : start + width]
        node.replace_all_uses_with(piece)
        start += width


def _stack_csr(gm: torch.fx.GraphModule, graph: torch.fx.Graph, x: torch.fx.Node, nodes: list, index: int) -> torch.fx.Node:
    import numpy as np

    x_val = x.meta["val"]
    dense, biases = [], []
    for node in nodes:
        indptr, indices, values, bias = (getattr(gm, arg.target) for arg in node.args[1:5])
        shape = (indptr.shape[1] - 1, x_val.shape[-1])
        dense.append(CSRWeight(indptr.numpy(), indices.numpy(), values.numpy(), shape, node.args[5]).to_dense())
        biases.append(bias)
    stacked = CSRWeight.from_dense(np.concatenate(dense))
    tensors = {
        "indptr": torch.from_numpy(stacked.indptr), "indices": torch.from_numpy(stacked.indices),
        "values": torch.from_numpy(stacked.values), "bias": torch.cat(biases).contiguous(),
    }
    fake_mode = getattr(x_val, "fake_mode", None)
    attrs = [_constant(gm, graph, f"_spdy_stacked{index}_{key}", tensor, fake_mode) for key, tensor in tensors.items()]
    call = graph.call_function(torch.ops.spdy.csr_linear.default, (x, *attrs, int(stacked.panel_width)))
    call.meta["val"] = x_val.new_empty(*x_val.shape[:-1], stacked.shape[0])
    return call


def _join_int_mm(gm: torch.fx.GraphModule, graph: torch.fx.Graph, p: torch.fx.Node, nodes: list, index: int) -> torch.fx.Node:
    joined = torch.cat([getattr(gm, node.args[1].target) for node in nodes], dim=1).contiguous()
    out = nodes[0].meta["val"]
    attr = _constant(gm, graph, f"_spdy_joined_int8_{index}", joined, getattr(out, "fake_mode", None))
    call = graph.call_function(torch.ops.aten._int_mm.default, (p, attr))
    call.meta["val"] = out.new_empty(out.shape[0], joined.shape[1])
    return call


@functools.lru_cache(maxsize=None)
def _fusion_pass_class() -> type:
    from torch._inductor.custom_graph_pass import CustomGraphPass  # imports inductor: only when compiling

    class FuseSiblingSparseLinears(CustomGraphPass):
        """``fuse_sibling_csr_linears`` and ``fuse_sibling_int_mm`` as an inductor pass whose uuid is
        stable for one set of weights (graphs stay cacheable) and differs for any other: the stacked
        weights it makes are constants of the cached graph, which a cache hit does not recompute."""

        def __init__(self, weights: str):
            self.weights = weights

        def __call__(self, graph: torch.fx.Graph) -> None:
            fuse_sibling_csr_linears(graph)
            fuse_sibling_int_mm(graph)

        def uuid(self) -> str:
            return f"spdy-fuse-sibling-csr-linear-{FUSION_VERSION}-{self.weights}"

    return FuseSiblingSparseLinears


def sibling_fusion_pass(weights: str):
    """A ``CustomGraphPass`` for ``torch._inductor.config.post_grad_custom_post_pass``; ``weights``: a
    digest of the compiled model's weights (``engine.runtime.compiled.weights_digest``), part of its uuid."""
    return _fusion_pass_class()(weights)
