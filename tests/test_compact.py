"""Database format 2: pruned levels as non-zeros and a bitmask decode bit for bit."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.database import compact


@pytest.mark.parametrize("level", ["0.0000", "0.4000", "0.9900", "2:4"])
def test_compact_levels_decode_bit_identical(tmp_path, level):
    torch.manual_seed(0)
    weight = torch.randn(48, 16, 3, 3)
    weight[torch.rand_like(weight) < 0.7] = 0.0
    weight[0, 0, 0, 0] = -0.0  # a masked negative weight
    tensors = compact.encode(level, weight)
    save_file(tensors, str(tmp_path / "layer.safetensors"))
    with safe_open(str(tmp_path / "layer.safetensors"), framework="pt") as handle:
        decoded = compact.decode(handle, level)
    expected = compact.canonical(weight)
    assert decoded.shape == weight.shape and decoded.dtype == weight.dtype
    assert torch.equal(decoded.view(torch.int32), expected.view(torch.int32))  # bit for bit
    assert torch.equal(decoded, weight)
    if level != "0.0000":
        assert set(tensors) == {f"{level}/values", f"{level}/mask", f"{level}/shape"}
        assert tensors[f"{level}/values"].numel() == int((weight != 0).sum())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("zero_share", [0.7, 1.0])
def test_compact_decode_is_the_masked_scatter_bit_for_bit(tmp_path, dtype, zero_share):
    """The numpy decode against the plain definition: zeros, and the values in row-major order where the mask is set."""
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(37, 29, generator=generator).to(dtype)  # 1073 weights: the mask's last byte is partial
    weight[torch.rand(37, 29, generator=generator) < zero_share] = 0.0
    weight[weight < -1.5] = -0.0
    save_file(compact.encode("0.9000", weight), str(tmp_path / "layer.safetensors"))
    with safe_open(str(tmp_path / "layer.safetensors"), framework="pt") as handle:
        decoded = compact.decode(handle, "0.9000")
    expected = torch.zeros(weight.numel(), dtype=dtype)
    expected[weight.reshape(-1) != 0] = weight.reshape(-1)[weight.reshape(-1) != 0]
    assert decoded.dtype == dtype and decoded.shape == weight.shape
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[dtype.itemsize]
    assert torch.equal(decoded.reshape(-1).view(bits), expected.view(bits))
