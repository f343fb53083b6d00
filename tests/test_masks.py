"""Masks: exact counts, deterministic ties, nesting across levels, N:M patterns against brute force."""

import itertools
import random

import pytest
import torch

from engine.core.grid import NM
from engine.core.masks import (
    magnitude_mask, nested_magnitude_mask, nm_ineligibility, nm_mask, pruned_count, satisfies_nm, smallest,
)
from engine.database.reconstruct import spread_exactly

TWO_FOUR = NM(2, 4)


def tied_weight(*shape, seed=0):
    """Few distinct magnitudes, so almost every threshold falls inside a tie."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(-3, 4, shape, generator=generator).float()


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.4, 0.5, 0.7844, 0.9, 0.99])
def test_magnitude_mask_prunes_exactly_round_numel_s(sparsity):
    for weight in (torch.randn(37, 53), tied_weight(64, 48), tied_weight(8, 6, 3, 3)):
        keep = magnitude_mask(weight, sparsity)
        assert int((~keep).sum()) == round(weight.numel() * sparsity)
        if (~keep).any() and keep.any():
            assert weight.abs()[~keep].max() <= weight.abs()[keep].min()


def test_ties_are_broken_by_flat_index():
    keep = magnitude_mask(torch.ones(10), 0.3)
    assert keep.tolist() == [False] * 3 + [True] * 7
    chosen = smallest(torch.tensor([2.0, 1.0, 1.0, 1.0, 0.0]), 3)
    assert chosen.tolist() == [False, True, True, False, True]


def test_smallest_respects_exclusions_and_counts():
    scores = torch.tensor([0.0, 1.0, 2.0, 3.0])
    exclude = torch.tensor([True, False, True, False])
    assert smallest(scores, 2, exclude).tolist() == [False, True, False, True]
    with pytest.raises(ValueError):
        smallest(scores, 3, exclude)


def test_nested_masks_keep_every_zero_and_count_exactly():
    levels = [0.4, 0.4584, 0.5111, 0.7, 0.9, 0.99]
    for weight in (torch.randn(96, 40), tied_weight(32, 16, 3, 3, seed=1)):
        current = weight.clone()
        previous_keep = torch.ones_like(weight, dtype=torch.bool)
        for sparsity in levels:
            keep = nested_magnitude_mask(current, sparsity)
            assert int((~keep).sum()) == pruned_count(weight.numel(), sparsity)
            assert not (keep & ~previous_keep).any()  # nothing pruned comes back
            current, previous_keep = current * keep, keep


def test_nested_mask_prunes_among_nonzeros_only():
    weight = torch.tensor([0.0, 5.0, 0.0, 1.0, 2.0, 3.0, 0.5, 4.0])
    keep = nested_magnitude_mask(weight, 0.5)
    assert keep.tolist() == [False, True, False, False, True, True, False, True]
    assert torch.equal(keep, magnitude_mask(weight, 0.5))  # zeros are the smallest anyway
    with pytest.raises(ValueError, match="already has 2 zeros"):
        nested_magnitude_mask(weight, 0.125)


def brute_force_nm(weight: torch.Tensor, nm: NM) -> torch.Tensor:
    keep = torch.zeros_like(weight, dtype=torch.bool)
    out, inputs = weight.shape[:2]
    spatial = list(itertools.product(*(range(size) for size in weight.shape[2:])))
    for o, position in itertools.product(range(out), spatial):
        for start in range(0, inputs, nm.m):
            group = [(o, i, *position) for i in range(start, start + nm.m)]
            ranked = sorted(group, key=lambda index: (-abs(float(weight[index])), index[1]))
            for index in ranked[: nm.n]:
                keep[index] = True
    return keep


@pytest.mark.parametrize("nm", [NM(2, 4), NM(1, 4), NM(4, 8)])
def test_nm_mask_matches_brute_force_on_linear_and_conv(nm):
    for weight in (torch.randn(6, 16), tied_weight(5, 8, seed=2), torch.randn(3, 16, 3, 2), tied_weight(2, 8, 2, 2, seed=3)):
        keep = nm_mask(weight, nm)
        assert torch.equal(keep, brute_force_nm(weight, nm))
        assert int(keep.sum()) == weight.numel() * nm.n // nm.m
        assert satisfies_nm(weight * keep, nm)


def test_conv_nm_groups_run_along_input_channels():
    weight = torch.zeros(1, 4, 1, 2)
    weight[0, :, 0, 0] = torch.tensor([1.0, 4.0, 3.0, 2.0])
    weight[0, :, 0, 1] = torch.tensor([9.0, 1.0, 1.0, 8.0])
    keep = nm_mask(weight, TWO_FOUR)
    assert keep[0, :, 0, 0].tolist() == [False, True, True, False]
    assert keep[0, :, 0, 1].tolist() == [True, False, False, True]


def test_nm_eligibility_gives_the_reason():
    assert nm_ineligibility((384, 1536), TWO_FOUR) is None
    assert nm_ineligibility((64, 32, 3, 3), TWO_FOUR) is None
    reason = nm_ineligibility((16, 3, 3, 3), TWO_FOUR)
    assert reason is not None and "input dimension 3" in reason and "2:4" in reason
    assert "neither Linear" in nm_ineligibility((10,), TWO_FOUR)
    with pytest.raises(ValueError, match="not a multiple"):
        nm_mask(torch.randn(4, 6), TWO_FOUR)
    assert not satisfies_nm(torch.randn(4, 6), TWO_FOUR)
    assert not satisfies_nm(torch.ones(4, 8), TWO_FOUR)


def test_spread_exactly_sums_to_total_within_capacities():
    rng = random.Random(0)
    for _ in range(500):
        capacities = [rng.randint(0, 200) for _ in range(rng.randint(1, 12))]
        total = rng.randint(0, sum(capacities))
        parts = spread_exactly(total, capacities)
        assert sum(parts) == total
        assert all(0 <= part <= capacity for part, capacity in zip(parts, capacities))
    assert spread_exactly(6, [10, 10, 10]) == [2, 2, 2]
    with pytest.raises(ValueError):
        spread_exactly(5, [2, 2])
