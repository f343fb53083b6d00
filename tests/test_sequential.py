"""Sequential OBS: the chosen allocation rebuilt from the inputs of the progressively pruned model."""

import pytest
import torch
from torch import nn

from engine.core.profile import from_dict
from engine.database.sequential import rebuild, shared_input_hessians
from engine.database.store import build_database
from engine.model.layer_inputs import feed_layer_inputs, input_rows
from engine.model.sources import LoadedModel, load

GRID = ["0.0000", "0.5000", "0.7000", "0.9000"]
LEVELS = {"conv1": "0.5000", "fc1": "0.9000", "fc2": "0.7000", "fc3": "0.0000"}


@pytest.fixture(scope="module")
def digits():
    profile = from_dict({"model": {"source": "digits"}, "data": {"source": "digits", "calibration_samples": 128, "batch_size": 64}})
    torch.set_num_threads(1)
    loaded, data = load(profile)
    return profile, loaded, [batch.inputs for batch in data.calibration]


def test_dense_input_rebuild_is_the_database(digits, tmp_path):
    profile, loaded, inputs = digits
    database = build_database(loaded, inputs, list(LEVELS), GRID, profile.database, tmp_path / "db")
    weights = rebuild(loaded, inputs, LEVELS, {name: GRID for name in LEVELS}, profile.database, sequential=False)
    for name, level in LEVELS.items():
        assert torch.equal(weights[name], database.get(name, level)), name


def _loss(weight: torch.Tensor, dense: torch.Tensor, rows: torch.Tensor) -> float:
    """||W^ X - W X||^2 over the rows X^T (a layer's inputs), in float64."""
    return float((rows.double() @ (weight - dense).reshape(dense.shape[0], -1).double().T).square().sum())


def test_sequential_rebuild_fits_the_inputs_the_pruned_model_produces(digits):
    profile, loaded, inputs = digits
    dense = {name: loaded.module(name).weight.detach().clone() for name in LEVELS}
    grids = {name: GRID for name in LEVELS}
    plain = rebuild(loaded, inputs, LEVELS, grids, profile.database, sequential=False)
    order = []
    sequential = rebuild(loaded, inputs, LEVELS, grids, profile.database, sequential=True, on_layer=order.append)
    assert order == list(LEVELS)  # forward order, every layer once
    assert all(torch.equal(loaded.module(name).weight, dense[name]) for name in LEVELS)  # the model is left dense
    assert torch.equal(sequential["conv1"], plain["conv1"])  # the first layer sees the same inputs either way
    assert torch.equal(sequential["fc3"], dense["fc3"])  # a dense level keeps its weights
    for name, level in LEVELS.items():
        zeros = int((sequential[name] == 0).sum())
        assert zeros == round(sequential[name].numel() * float(level)), name  # exactly the level's count
    # fc2's inputs once conv1 and fc1 are pruned: the sequential weights fit them better
    with torch.no_grad():
        for name in ("conv1", "fc1"):
            loaded.module(name).weight.copy_(sequential[name])
        rows = []
        feed_layer_inputs(loaded, inputs, {"fc2": loaded.module("fc2")}, lambda _name, x: rows.append(input_rows(loaded.module("fc2"), x)))
        for name in ("conv1", "fc1"):
            loaded.module(name).weight.copy_(dense[name])
    pruned_inputs = torch.cat(rows)
    assert _loss(sequential["fc2"], dense["fc2"], pruned_inputs) < _loss(plain["fc2"], dense["fc2"], pruned_inputs)


class TwoReadersOfOneInput(nn.Module):
    """a and b read x (like a transformer's key and value), c reads their sum."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 2), nn.Linear(3, 2), nn.Linear(2, 1)

    def forward(self, x):
        return self.c(self.a(x) + self.b(x))


def test_layers_reading_one_input_share_a_pass():
    torch.manual_seed(0)
    model = TwoReadersOfOneInput()
    loaded = LoadedModel(model, "classifier")
    batches = [torch.randn(4, 3), torch.randn(5, 3)]
    modules = {name: getattr(model, name) for name in ("a", "b", "c")}
    hessians = shared_input_hessians(loaded, batches, modules, "a")
    X = torch.cat(batches).double()
    assert set(hessians) == {"a", "b"}  # c reads another tensor: the pass stops there
    torch.testing.assert_close(hessians["a"], 2 * X.T @ X)
    torch.testing.assert_close(hessians["b"], 2 * X.T @ X)
    assert set(shared_input_hessians(loaded, batches, {"c": model.c}, "c")) == {"c"}
