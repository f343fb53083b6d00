"""engine.database.quantize: the GPTQ-style quantize-and-prune sweep, against hand results and round-to-nearest."""

import pytest
import torch

from engine.database.quantize import quantize_layer, round_to_nearest
from engine.database.reconstruct import damped_hessian, inverse_factor

# U (upper, H^-1 = U^T U) chosen so that only column 0's error reaches column 1, by half.
U_HAND = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
H_HAND = torch.linalg.inv(U_HAND.T @ U_HAND)
W_HAND = torch.tensor([[-3.7, 10.6, 127.0], [0.8, 5.6, -127.0]])  # row scales are 127 / 127 = 1
MASK_HAND = torch.tensor([[True, True, True], [False, True, True]])


def layer_loss(weight: torch.Tensor, approx: torch.Tensor, x: torch.Tensor) -> float:
    """||W X - W^ X||^2 for inputs X as columns (d x n)."""
    return float(((weight.double() - approx.double()) @ x.double()).square().sum())


def test_factor_reproduces_the_hand_u():
    assert torch.allclose(inverse_factor(damped_hessian(H_HAND, damp=0.0)), U_HAND, atol=1e-12)


def test_hand_example_2x3():
    # Row 0: -3.7 -> -4, error 0.3 moves column 1 to 10.6 - 0.15 = 10.45 -> 10 (rounding alone: 11).
    # Row 1: 0.8 is pruned, error 0.8 moves column 1 to 5.6 - 0.4 = 5.2 -> 5 (rounding alone: 6).
    result = quantize_layer(W_HAND, H_HAND, MASK_HAND, damp=0.0)
    assert result.q.dtype == torch.int8
    assert result.q.tolist() == [[-4, 10, 127], [0, 5, -127]]
    assert result.scale.tolist() == [1.0, 1.0]
    assert result.dequantized.tolist() == [[-4.0, 10.0, 127.0], [0.0, 5.0, -127.0]]
    assert round_to_nearest(W_HAND, MASK_HAND).q.tolist() == [[-4, 11, 127], [0, 6, -127]]


def test_blocks_do_not_change_the_result():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(24, 200, generator=generator)
    weight = torch.randn(10, 24, generator=generator)
    mask = torch.rand(10, 24, generator=generator) > 0.4
    one = quantize_layer(weight, 2 * x @ x.T, mask, block_size=1)
    many = quantize_layer(weight, 2 * x @ x.T, mask, block_size=7)
    assert torch.equal(one.q, many.q)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("sparsity", [0.0, 0.5])
def test_better_than_round_to_nearest(seed, sparsity):
    generator = torch.Generator().manual_seed(seed)
    features, rows = 48, 20
    # correlated inputs, as a layer's are: the compensation has something to work with
    x = torch.randn(features, features, generator=generator) @ torch.randn(features, 400, generator=generator)
    weight = torch.randn(rows, features, generator=generator)
    mask = torch.rand(rows, features, generator=generator) >= sparsity
    quantized = quantize_layer(weight, 2 * x @ x.T, mask)
    rounded = round_to_nearest(weight, mask)
    assert layer_loss(weight, quantized.dequantized, x) < layer_loss(weight, rounded.dequantized, x)


def test_mask_is_respected_and_codes_are_on_the_grid():
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(32, 300, generator=generator)
    weight = torch.randn(16, 32, generator=generator)
    mask = torch.rand(16, 32, generator=generator) > 0.7
    mask[3] = False  # a row with nothing kept
    result = quantize_layer(weight, 2 * x @ x.T, mask)
    assert torch.all(result.q[~mask] == 0)
    assert int(result.q.abs().max()) <= 127 and int(result.q.min()) >= -127
    assert result.scale[3] == 1.0
    assert torch.equal(result.dequantized, result.q.float() * result.scale.unsqueeze(1))
    expected_scale = (weight.abs() * mask).amax(1) / 127
    assert torch.equal(result.scale[mask.any(1)], expected_scale[mask.any(1)])


def test_dead_inputs_and_conv_shapes():
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(4, 2, 3, 3, generator=generator)  # Conv2d: d = 2 * 3 * 3
    x = torch.randn(18, 100, generator=generator)
    x[5] = 0.0  # an input that is always zero
    result = quantize_layer(weight, 2 * x @ x.T)
    assert result.q.shape == (4, 18) and result.dequantized.shape == weight.shape
    assert torch.isfinite(result.dequantized).all()


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="hessian must be"):
        quantize_layer(torch.ones(2, 3), torch.eye(4))
    with pytest.raises(ValueError, match="mask must have"):
        quantize_layer(torch.ones(2, 3), torch.eye(3), torch.ones(3, 2, dtype=torch.bool))
