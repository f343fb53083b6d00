"""engine.runtime.transpose: register-block transposes give exactly the transposed matrix."""

import numpy as np
import pytest

from engine.runtime.transpose import BLOCK, _round_masks, transpose_into


def test_one_block_is_the_transpose():
    src = np.arange(256, dtype=np.float32).reshape(16, 16)
    dst = np.zeros_like(src)
    transpose_into(src, dst)
    assert np.array_equal(dst, src.T)


def test_round_masks_swap_one_bit_of_row_and_column():
    # round 8 on rows 0 and 8: row 0 keeps columns 0-7 and takes row 8's columns 0-7 as its 8-15
    low, high = _round_masks(8)
    assert low == list(range(8)) + [16 + j for j in range(8)]
    assert high == [8 + j for j in range(8)] + [24 + j for j in range(8)]


@pytest.mark.parametrize("shape", [(16, 16), (64, 384), (70, 37), (13, 50), (1, 1), (0, 5), (33, 16)])
def test_ragged_shapes(shape):
    rng = np.random.default_rng(0)
    src = rng.standard_normal(shape).astype(np.float32)
    dst = np.full(shape[::-1], np.nan, dtype=np.float32)
    transpose_into(src, dst)
    assert np.array_equal(dst, src.T)


def test_views_with_offsets_and_strided_rows():
    """A slice of rows of a larger tile (the kernels' use): only the view is written."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 48)).astype(np.float32)
    tile = np.full((48, 64), -1.0, dtype=np.float32)
    transpose_into(x[70:120], tile[:, :50])
    assert np.array_equal(tile[:, :50], x[70:120].T)
    assert np.all(tile[:, 50:] == -1.0)


def test_non_contiguous_last_dimension_falls_back_to_loops():
    rng = np.random.default_rng(2)
    src = rng.standard_normal((40, 64)).astype(np.float32)[:, ::2]
    dst = np.zeros((32, 40), dtype=np.float32)
    transpose_into(src, dst)
    assert np.array_equal(dst, src.T)


@pytest.mark.parametrize(
    "source, target",
    [(np.int8, np.int16), (np.int8, np.float32), (np.int32, np.float32), (np.float64, np.float64)],
)
def test_converts_exactly_on_the_way(source, target):
    rng = np.random.default_rng(3)
    src = rng.integers(-127, 128, size=(35, 70)).astype(source)
    dst = np.zeros((70, 35), dtype=target)
    transpose_into(src, dst)
    assert np.array_equal(dst, src.T.astype(target))


def test_int32_beyond_float32_rounds_as_numpy_does():
    src = np.full((BLOCK, BLOCK), 2**24 + 1, dtype=np.int32)
    dst = np.zeros((BLOCK, BLOCK), dtype=np.float32)
    transpose_into(src, dst)
    assert np.array_equal(dst, src.T.astype(np.float32))


def test_refuses_a_destination_of_the_wrong_shape():
    with pytest.raises(ValueError, match="transposed shape"):
        transpose_into(np.zeros((16, 32), np.float32), np.zeros((16, 32), np.float32))
