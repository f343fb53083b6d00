"""int8 numerics (engine.runtime.int8) and the sparse int8 kernel (engine.runtime.csr_int8): exact answers."""

import numpy as np
import pytest
import torch
from torch import nn

from engine.runtime.csr_int8 import CSRInt8Weight, SparseInt8Linear, spmm_int8
from engine.runtime.int8 import (
    Int8Linear,
    dequantize,
    fake_quantized_linear,
    quantize_activations,
    quantize_weight,
)
from engine.runtime.modules import KERNELS, SparseLinear, sparse_module


def masked_weight(rows, features, sparsity, seed):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, features, generator=generator)
    weight[torch.rand(rows, features, generator=generator) < sparsity] = 0.0
    return weight, torch.randn(rows, generator=generator)


def test_weight_quantization_by_hand():
    weight = torch.tensor([[1.27, -0.635, 0.0051], [0.0, 0.0, 0.0], [-2.54, 1.0, 0.3]])
    q, scale = quantize_weight(weight)
    assert torch.equal(scale, torch.tensor([1.27 / 127, 1.0, 2.54 / 127], dtype=torch.float32))
    # 0.635 / 0.01 = 63.5 rounds to even (64), 0.0051 / 0.01 = 0.51 -> 1; a zero row keeps scale 1
    assert q.tolist() == [[127, -64, 1], [0, 0, 0], [-127, 50, 15]]
    assert q.dtype == torch.int8


def test_activation_quantization_is_per_token():
    x = torch.tensor([[0.5, -1.0, 0.25], [100.0, 1.0, -50.0]])
    p, s = quantize_activations(x)
    assert torch.equal(s, torch.tensor([1.0 / 127, 100.0 / 127]))
    assert p.tolist() == [[64, -127, 32], [127, 1, -64]]
    assert torch.equal(dequantize(p, s)[0, 1], torch.tensor(-1.0))


def test_fake_quantized_linear_by_hand():
    # codes chosen with scales 1: y = (p @ q^T) * 1 * 1 + b exactly
    x = torch.tensor([[127.0, 2.0, -3.0]])
    weight = torch.tensor([[127.0, 0.0, 1.0], [-1.0, 127.0, 0.0]])
    q, scale = quantize_weight(weight)
    y = fake_quantized_linear(x, q, scale, torch.tensor([0.5, -0.5]))
    assert y.tolist() == [[127 * 127 - 3 + 0.5, -127 + 2 * 127 - 0.5]]


def test_fake_quantization_is_close_to_float():
    weight, bias = masked_weight(64, 96, 0.0, seed=0)
    x = torch.randn(5, 7, 96, generator=torch.Generator().manual_seed(1))
    y = fake_quantized_linear(x, *quantize_weight(weight), bias)
    assert y.shape == (5, 7, 64)
    exact = nn.functional.linear(x, weight, bias)
    assert float((y - exact).norm() / exact.norm()) < 0.02


@pytest.mark.parametrize("tokens", [1, 17, 64, 130])
def test_dense_int8_linear_is_exact(tokens):
    weight, bias = masked_weight(40, 72, 0.3, seed=tokens)
    x = torch.randn(tokens, 72, generator=torch.Generator().manual_seed(9)) * 3
    layer = Int8Linear.from_float(weight, bias)
    assert torch.equal(layer(x), fake_quantized_linear(x, *quantize_weight(weight), bias))


@pytest.mark.parametrize("int16", [False, True])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.7, 0.9, 1.0])
@pytest.mark.parametrize("tokens", [1, 63, 64, 200])
def test_sparse_int8_kernel_matches_the_reference_bit_for_bit(sparsity, tokens, int16):
    weight, bias = masked_weight(70, 300, sparsity, seed=int(sparsity * 10) + tokens)
    x = torch.randn(tokens, 300, generator=torch.Generator().manual_seed(tokens)) * 2
    q, scale = quantize_weight(weight)
    packed = CSRInt8Weight.from_int8(q, scale, panel_width=128)  # several panels
    p, s = quantize_activations(x)
    assert packed.float_values is not None  # a Gaussian row's codes sum to far below 2^24 / 127
    out = spmm_int8(packed, p.numpy(), s.numpy(), bias.numpy(), int16=int16)
    assert torch.equal(torch.from_numpy(out), fake_quantized_linear(x, q, scale, bias))
    assert torch.equal(packed.to_int8(), q)


def test_sums_past_float32_integers_take_the_int32_kernel():
    # a row of 1040 codes 127 and 300 codes 1 against activations 127: the sum, 16,812,260, passes
    # 2^24, where float32 accumulation drifts; the int32 kernel is exact up to float32(acc) at the end
    q = torch.tensor([[127] * 1040 + [1] * 300] * 3, dtype=torch.int8)
    p = torch.full((64, 1340), 127, dtype=torch.int8)
    exact = 127 * 127 * 1040 + 127 * 300
    products = np.array([127 * 127] * 1040 + [127] * 300, dtype=np.float32)
    assert np.cumsum(products, dtype=np.float32)[-1] != np.float32(exact)  # float32 accumulation is off
    packed = CSRInt8Weight.from_int8(q, torch.ones(3))
    assert packed.float_values is None
    out = spmm_int8(packed, p.numpy(), np.ones(64, dtype=np.float32))
    assert np.all(out == np.float32(exact))
    assert CSRInt8Weight.from_int8(q[:, :1040], torch.ones(3)).float_values is not None  # 127^2 * 1040 < 2^24


def test_threads_do_not_change_the_result():
    import numba

    weight, bias = masked_weight(130, 90, 0.6, seed=4)
    x = torch.randn(150, 90, generator=torch.Generator().manual_seed(2))
    layer = SparseInt8Linear.from_float(weight, bias=bias)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = layer(x)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        assert torch.equal(layer(x), one)
    finally:
        numba.set_num_threads(before)


def test_sparse_int8_module_and_registry():
    weight, bias = masked_weight(24, 48, 0.75, seed=5)
    mask = weight != 0
    dense_weight = torch.randn(24, 48, generator=torch.Generator().manual_seed(6))
    x = torch.randn(2, 10, 48, generator=torch.Generator().manual_seed(7))
    q, scale = quantize_weight(weight)
    expected = fake_quantized_linear(x, q, scale, bias)
    from_float = SparseInt8Linear.from_float(dense_weight * mask + 0.0, bias=bias)
    codes = quantize_weight(dense_weight * mask)[0]  # a weight under half a step rounds to code 0: skipped
    assert from_float.density == pytest.approx(float((codes != 0).float().mean()))
    assert torch.equal(SparseInt8Linear.from_int8(q, scale, bias)(x), expected)
    assert torch.equal(SparseInt8Linear.from_float(weight.masked_fill(~mask, 5.0), mask, bias)(x), expected)
    linear = nn.Linear(48, 24)
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    assert "numba-int8" in KERNELS
    registered = sparse_module(linear, "numba-int8")
    assert isinstance(registered, SparseLinear) and registered.density == float((q != 0).float().mean())
    assert torch.equal(registered(x), expected)


def test_registry_feature_major_matches_token_major():
    weight, bias = masked_weight(8, 12, 0.5, seed=8)
    kernel = KERNELS["numba-int8"]
    packed = kernel.pack(weight)
    columns = torch.randn(3, 12, 20, generator=torch.Generator().manual_seed(3))
    feature_major = kernel.feature_major(packed, columns, bias)
    token_major = kernel.token_major(packed, columns.transpose(1, 2).reshape(60, 12), bias)
    assert torch.equal(feature_major, token_major.reshape(3, 20, 8).transpose(1, 2))


def test_bad_inputs_are_named():
    q, scale = quantize_weight(torch.randn(4, 6))
    packed = CSRInt8Weight.from_int8(q, scale)
    with pytest.raises(ValueError, match="x_q must be int8"):
        spmm_int8(packed, np.zeros((2, 5), dtype=np.int8), np.ones(2, dtype=np.float32))
    with pytest.raises(ValueError, match="act_scale"):
        spmm_int8(packed, np.zeros((2, 6), dtype=np.int8), np.ones(3, dtype=np.float32))
    with pytest.raises(TypeError, match="int8"):
        CSRInt8Weight.from_int8(q.float(), scale)
    with pytest.raises(ValueError, match="weight_scale"):
        Int8Linear(q, scale[:2])


def test_custom_op_passes_opcheck():
    weight, bias = masked_weight(16, 32, 0.5, seed=11)
    layer = SparseInt8Linear.from_float(weight, bias=bias)
    x_q, x_scale = quantize_activations(torch.randn(9, 32))
    args = (
        x_q, x_scale, layer.indptr, layer.indices, layer.values, layer.float_values, layer.weight_scale, layer.bias,
        layer.panel_width,
    )
    torch.library.opcheck(torch.ops.spdy.csr_int8_linear.default, args, test_utils=("test_schema", "test_faketensor"))


def test_compiled_block_has_no_graph_breaks_and_matches_eager():
    weight_a, bias_a = masked_weight(48, 32, 0.0, seed=12)
    weight_b, bias_b = masked_weight(32, 48, 0.7, seed=13)
    model = nn.Sequential(
        Int8Linear.from_float(weight_a, bias_a), nn.GELU(), SparseInt8Linear.from_float(weight_b, bias=bias_b)
    ).eval()
    x = torch.randn(4, 16, 32, generator=torch.Generator().manual_seed(14))
    with torch.no_grad():
        eager = model(x)
        explanation = torch._dynamo.explain(model)(x)
        assert explanation.graph_break_count == 0 and explanation.graph_count == 1
        torch._dynamo.reset()
        with torch._inductor.config.patch(freezing=True):  # as engine.runtime.compiled compiles
            compiled = torch.compile(model, fullgraph=True, dynamic=False)(x)
    # inductor fuses the activation quantization into its own C++ loops: same IEEE division,
    # same rounding, so the same codes, and the int32 sums and the epilogue are the same
    assert torch.equal(compiled, eager)
