import copy

import torch
from torch import nn

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
