import copy
import math

import pytest

import torch
from torch import nn

from engine.core.learning_rate import rate_factor
from engine.database.gap import global_adaprune


def test_global_adaprune_lowers_error_and_keeps_zeros():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    sparse = copy.deepcopy(dense)
    with torch.no_grad():
        for layer in (sparse[0], sparse[2]):
            w = layer.weight
            w[w.abs() < w.abs().flatten().kthvalue(int(0.7 * w.numel())).values] = 0
    zeros = {i: (sparse[i].weight == 0).clone() for i in (0, 2)}
    batches = [torch.randn(64, 16) for _ in range(4)]
    error = lambda: sum(((sparse(x) - dense(x)) ** 2).sum().item() for x in batches)
    before = error()
    global_adaprune(dense, sparse, ["0", "2"], batches, lambda m, x: m(x), passes=30, lr=1e-3)
    assert error() < 0.7 * before
    for i, mask in zeros.items():
        assert (sparse[i].weight[mask] == 0).all()  # pruned weights stay exactly zero


def test_cosine_decay_halves_the_rate_midway_and_ends_at_zero():
    assert rate_factor(0, 8, "cosine") == 1.0
    assert rate_factor(4, 8, "cosine") == pytest.approx(0.5, abs=1e-12)
    assert rate_factor(8, 8, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert rate_factor(5, 8, "constant") == 1.0
    with pytest.raises(ValueError, match="'linear'"):
        rate_factor(1, 8, "linear")


def test_global_adaprune_steps_along_the_schedule(monkeypatch):
    torch.manual_seed(0)
    dense = nn.Linear(4, 4).eval()
    sparse = copy.deepcopy(dense)
    seen = []
    original_step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    global_adaprune(dense, sparse, [""], [torch.randn(2, 4)] * 2, lambda m, x: m(x), passes=2, lr=0.1, decay="cosine")
    assert seen == pytest.approx([0.1, 0.1 * (1 + math.cos(math.pi / 4)) / 2, 0.05, 0.1 * (1 + math.cos(3 * math.pi / 4)) / 2])
