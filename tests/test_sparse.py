"""Sparse kernels and modules compute exactly what the dense layer with the same zeros computes."""

import copy

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.runtime import (
    CSRWeight,
    OneDNNLinear,
    SparseConv2d,
    SparseLinear,
    dense_linear_paths,
    densify_fast,
    fastest_dense_linear,
    sparsify_module,
    spmm,
    spmm_feature_major,
)
from engine.runtime.csr import ROW_CHUNK, TILE_TOKENS
from engine.runtime.dense import onednn_available

TOLERANCE = dict(rtol=1e-4, atol=1e-5)


def pruned(weight: torch.Tensor, sparsity: float, seed: int = 0) -> torch.Tensor:
    """Zero the given fraction of the smallest-magnitude weights (ties broken by a random order)."""
    flat = weight.flatten().clone()
    k = int(round(sparsity * flat.numel()))
    order = torch.argsort(flat.abs() + 1e-9 * torch.rand(flat.numel(), generator=torch.Generator().manual_seed(seed)))
    flat[order[:k]] = 0.0
    return flat.reshape(weight.shape)


def pruned_linear(n_in: int, n_out: int, sparsity: float, bias: bool = True, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(n_in, n_out, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(pruned(layer.weight, sparsity, seed))
    return layer


def dense_reference(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> torch.Tensor:
    return F.linear(torch.from_numpy(x), torch.from_numpy(weight), None if bias is None else torch.from_numpy(bias))


def random_sparse(rows: int, cols: int, sparsity: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((rows, cols)).astype(np.float32)
    weight[rng.random((rows, cols)) < sparsity] = 0.0
    return weight


@pytest.mark.parametrize("panel_width", [None, 1, 5, 23, 100])
def test_csr_round_trip_keeps_exact_nonzeros(panel_width):
    weight = random_sparse(37, 23, 0.7, seed=1)
    csr = CSRWeight.from_dense(torch.from_numpy(weight), panel_width)
    assert csr.indices.dtype == np.int32 and csr.values.dtype == np.float32
    assert csr.nnz == np.count_nonzero(weight)
    assert csr.density == pytest.approx(np.count_nonzero(weight) / weight.size)
    assert csr.indptr.shape == (-(-23 // csr.panel_width), 38)
    assert np.array_equal(csr.to_dense(), weight)


def test_default_panels_hold_about_20_nonzeros_per_row_and_128_features():
    def with_nonzeros_per_row(count: int) -> np.ndarray:
        weight = np.zeros((8, 768), np.float32)
        weight[:, :count] = 1.0
        return weight

    assert CSRWeight.from_dense(with_nonzeros_per_row(15)).indptr.shape[0] == 1  # 98%
    assert CSRWeight.from_dense(with_nonzeros_per_row(77)).panel_width == 192  # 90%: 4 panels
    assert CSRWeight.from_dense(with_nonzeros_per_row(384)).panel_width == 128  # 50%: 128 wide
    assert CSRWeight.from_dense(np.zeros((4, 9), np.float32)).indptr.shape == (1, 5)


@pytest.mark.parametrize(
    "rows, cols, tokens, sparsity, panel_width",
    [
        (96, 80, 2 * TILE_TOKENS, 0.9, None),  # whole tiles
        (50, 33, TILE_TOKENS + 7, 0.5, 8),  # partial last tile, several panels
        (ROW_CHUNK + 17, 9, 1, 0.3, 4),  # one token: rows split over threads, two row chunks
        (64, 48, 200, 0.0, None),  # all dense: default panels
        (40, 30, 70, 1.0, None),  # fully zero: bias only
        (3, 5, 3, 0.98, 2),  # mostly empty rows and panels
    ],
)
def test_token_major_kernel_equals_dense(rows, cols, tokens, sparsity, panel_width):
    weight = random_sparse(rows, cols, sparsity, seed=rows)
    rng = np.random.default_rng(tokens)
    x = rng.standard_normal((tokens, cols)).astype(np.float32)
    bias = rng.standard_normal(rows).astype(np.float32)
    csr = CSRWeight.from_dense(weight, panel_width)
    for b in (bias, None):
        y = spmm(csr, x, b)
        assert y.shape == (tokens, rows)
        assert torch.allclose(torch.from_numpy(y), dense_reference(x, weight, b), **TOLERANCE)


def test_token_major_kernel_empty_rows_give_bias_and_fills_out():
    weight = random_sparse(20, 12, 0.5, seed=3)
    weight[[0, 7, 19]] = 0.0
    x = np.random.default_rng(0).standard_normal((5, 12)).astype(np.float32)
    bias = np.arange(20, dtype=np.float32)
    out = np.full((5, 20), np.nan, dtype=np.float32)
    assert spmm(CSRWeight.from_dense(weight), x, bias, out) is out
    assert np.array_equal(out[:, [0, 7, 19]], np.broadcast_to(bias[[0, 7, 19]], (5, 3)))
    assert torch.allclose(torch.from_numpy(out), dense_reference(x, weight, bias), **TOLERANCE)


def test_token_major_kernel_flattens_leading_dims_and_handles_no_tokens():
    weight = random_sparse(24, 16, 0.6, seed=4)
    csr = CSRWeight.from_dense(weight)
    x = np.random.default_rng(1).standard_normal((2, 3, 16)).astype(np.float32)
    assert torch.allclose(torch.from_numpy(spmm(csr, x)), dense_reference(x, weight, None), **TOLERANCE)
    assert spmm(csr, x[0, 0]).shape == (24,)
    assert spmm(csr, np.zeros((0, 16), np.float32)).shape == (0, 24)
    with pytest.raises(ValueError):
        spmm(csr, np.zeros((4, 15), np.float32))


@pytest.mark.parametrize("threads", [1, numba.config.NUMBA_NUM_THREADS])
def test_kernels_agree_for_any_thread_count(threads):
    weight = random_sparse(70, 40, 0.8, seed=6)
    csr = CSRWeight.from_dense(weight, panel_width=16)
    x = np.random.default_rng(3).standard_normal((3 * TILE_TOKENS + 1, 40)).astype(np.float32)
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        token_major = spmm(csr, x)
        feature_major = spmm_feature_major(csr, np.ascontiguousarray(x.T))
    finally:
        numba.set_num_threads(previous)
    reference = dense_reference(x, weight, None)
    assert torch.allclose(torch.from_numpy(token_major), reference, **TOLERANCE)
    assert torch.allclose(torch.from_numpy(feature_major.T), reference, **TOLERANCE)


@pytest.mark.parametrize("tokens, panel_width", [(1, None), (50, None), (2 * TILE_TOKENS + 3, 6)])
def test_feature_major_kernel_equals_dense(tokens, panel_width):
    weight = random_sparse(33, 27, 0.8, seed=5)
    x = np.random.default_rng(2).standard_normal((3, 27, tokens)).astype(np.float32)
    bias = np.linspace(-1, 1, 33, dtype=np.float32)
    csr = CSRWeight.from_dense(weight, panel_width)
    y = spmm_feature_major(csr, x, bias)
    reference = torch.from_numpy(weight) @ torch.from_numpy(x) + torch.from_numpy(bias)[:, None]
    assert y.shape == (3, 33, tokens)
    assert torch.allclose(torch.from_numpy(y), reference, **TOLERANCE)
    assert torch.allclose(torch.from_numpy(spmm_feature_major(csr, x[1], bias)), reference[1], **TOLERANCE)


@pytest.mark.parametrize("kernel", ["numba", "torch-csr"])
@pytest.mark.parametrize("shape", [(7,), (2, 5, 7), (130, 7)])
def test_sparse_linear_equals_dense_linear(kernel, shape):
    layer = pruned_linear(shape[-1], 11, 0.6)
    x = torch.randn(*shape)
    sparse = SparseLinear.from_linear(layer, kernel)
    y = sparse(x)
    assert y.shape == shape[:-1] + (11,) and y.dtype == torch.float32
    assert torch.allclose(y, layer(x).detach(), **TOLERANCE)


def test_sparse_linear_without_bias_and_with_grad_input():
    layer = pruned_linear(16, 12, 0.75, bias=False)
    x = torch.randn(9, 16, requires_grad=True)
    assert torch.allclose(SparseLinear.from_linear(layer)(x), layer(x).detach(), **TOLERANCE)


CONVS = [
    dict(kernel_size=1),
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(3, 2), stride=(2, 1), padding=(0, 1), dilation=(1, 2)),
    dict(kernel_size=1, stride=2),
    dict(kernel_size=4, padding="same", bias=False),
    dict(kernel_size=3, padding="valid"),
]


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("kernel", ["numba", "torch-csr"])
@pytest.mark.parametrize("options", CONVS, ids=[str(c) for c in CONVS])
def test_sparse_conv_equals_dense_conv(kernel, options):
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 8, **options)
    with torch.no_grad():
        conv.weight.copy_(pruned(conv.weight, 0.7))
    sparse = SparseConv2d.from_conv(conv, kernel)
    x = torch.randn(2, 5, 9, 11)
    expected = conv(x).detach()
    y = sparse(x)
    assert y.shape == expected.shape
    assert torch.allclose(y, expected, **TOLERANCE)
    assert torch.allclose(sparse(x[0]), expected[0], **TOLERANCE)


def test_sparse_conv_rejects_grouped():
    with pytest.raises(ValueError):
        SparseConv2d.from_conv(nn.Conv2d(4, 4, 3, groups=2))


class TinyBlock(nn.Module):
    """A transformer-ish block: single-head attention and an MLP, with residuals and LayerNorm."""

    def __init__(self, width: int = 32, hidden: int = 64):
        super().__init__()
        self.query, self.key, self.value = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)
        self.attention_out = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x):
        q, k, v = self.query(x), self.key(x).view(*x.shape), self.value(x)
        attention = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1) @ v
        x = self.norm(x + self.attention_out(attention))
        return x + self.mlp(x)


def prune_all_linears(model: nn.Module, sparsity: float) -> list[str]:
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    with torch.no_grad():
        for index, name in enumerate(names):
            weight = model.get_submodule(name).weight
            weight.copy_(pruned(weight, sparsity, seed=index))
    return names


@pytest.mark.parametrize("kernel", ["numba", "torch-csr"])
def test_sparsify_module_swaps_in_place_and_keeps_outputs(kernel):
    torch.manual_seed(0)
    model = nn.Sequential(TinyBlock(), TinyBlock()).eval()
    names = prune_all_linears(model, 0.8)
    x = torch.randn(3, 10, 32)
    with torch.no_grad():
        expected = model(x)
    assert sparsify_module(model, names, kernel) is model
    assert all(isinstance(model.get_submodule(name), SparseLinear) for name in names)
    with torch.no_grad():
        assert torch.allclose(model(x), expected, rtol=1e-4, atol=1e-4)


def test_sparsify_module_handles_convs_and_rejects_other_modules():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 16, 4)).eval()
    with torch.no_grad():
        model[0].weight.copy_(pruned(model[0].weight, 0.5))
        model[3].weight.copy_(pruned(model[3].weight, 0.5))
        x = torch.randn(2, 3, 4, 4)
        expected = model(x)
        sparsify_module(model, ["0", "3"])
        assert isinstance(model[0], SparseConv2d) and isinstance(model[3], SparseLinear)
        assert torch.allclose(model(x), expected, **TOLERANCE)
    with pytest.raises(TypeError):
        sparsify_module(model, ["1"])


def test_dense_paths_and_fast_densify_equal_torch():
    layer = pruned_linear(24, 40, 0.0)
    x = torch.randn(2, 6, 24)
    with torch.no_grad():
        expected = layer(x)
        paths = dense_linear_paths(layer)
        assert "torch" in paths
        for name, path in paths.items():
            assert torch.allclose(path(x), expected, **TOLERANCE), name
        name, path = fastest_dense_linear(layer, x, repeats=3)
        assert name in paths and torch.allclose(path(x), expected, **TOLERANCE)


@pytest.mark.skipif(not onednn_available(), reason="no oneDNN in this torch build")
def test_densify_fast_swaps_linears_for_onednn():
    torch.manual_seed(0)
    model = nn.Sequential(TinyBlock()).eval()
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        expected = model(x)
        densify_fast(model, names)
        assert all(isinstance(model.get_submodule(name), OneDNNLinear) for name in names)
        assert torch.allclose(model(x), expected, rtol=1e-4, atol=1e-4)
        assert torch.allclose(model[0].query(x[0, 0]), model[0].query(x[:1, :1])[0, 0], **TOLERANCE)


@pytest.mark.skipif(not onednn_available(), reason="no oneDNN in this torch build")
def test_swapped_modules_survive_deepcopy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 4), nn.Linear(4, 3), nn.Conv2d(3, 2, 1)).eval()
    x = torch.randn(2, 6)
    with torch.no_grad():
        densify_fast(model, ["0"])
        sparsify_module(model, ["1"], kernel="numba")
        sparsify_module(model, ["2", "3"], kernel="torch-csr")
        clone = copy.deepcopy(model)
        assert [type(m) for m in clone] == [type(m) for m in model] and clone[1] is not model[1]
        hidden = clone[:3](x)
        assert torch.equal(hidden, model[:3](x))
        assert torch.equal(clone[3](hidden[:, :, None, None]), model[3](hidden[:, :, None, None]))


@pytest.mark.parametrize("rows", [1, 7, 384, 1536])
def test_tile_buffers_start_on_a_cache_line(rows):
    """Kernel buffers are 64-byte aligned whatever the allocator returns (vector loads never split)."""
    from engine.runtime.csr import TILE_TOKENS, _aligned_empty

    for _ in range(20):  # many allocations, so some land off a 64-byte boundary in NumPy's hands
        buffer = _aligned_empty(rows, TILE_TOKENS)
        assert buffer.ctypes.data % 64 == 0 and buffer.shape == (rows, TILE_TOKENS) and buffer.flags.c_contiguous
