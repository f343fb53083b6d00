"""The little-data 2:4 pipeline on real MiniLM layers, fp32 on the CPU: magnitude 2:4, then
layer-wise AdaPrune, then global AdaPrune, each step lowering the error, the 2:4 pattern kept."""

import copy

import pytest
import torch
from torch import nn

from engine.core.profile import from_dict
from engine.core.grid import NM
from engine.core.masks import nm_mask, satisfies_nm
from engine.model.sources import LoadedModel, load_model, trace_layers
from engine.database.nm_pipeline import NMSettings, allocation_nm, eligible_layers, prune_nm, uniform_24

TWO_FOUR = NM(2, 4)
SUBJECTS = ["This function", "The method", "A helper", "The parser", "This class", "The reader", "A wrapper", "The loop"]
VERBS = ["reads", "writes", "sorts", "parses", "copies", "checks", "joins", "splits"]
THINGS = ["file", "list", "string", "socket", "buffer", "path", "header", "table"]
CALIBRATION = [f"{s} {v} the {t} and returns it." for s, v, t in zip(SUBJECTS * 4, VERBS * 4, THINGS[::-1] * 4)][:32]
HELDOUT = [f"When the {t} is empty, {s.lower()} {v} nothing at all." for s, v, t in zip(SUBJECTS * 2, VERBS[::-1] * 2, THINGS * 2)]
SETTINGS = NMSettings(passes=10, batch_size=8)  # 32 sentences: 4 Adam steps per pass, 40 per layer


@pytest.fixture(scope="module")
def minilm():
    loaded = load_model(from_dict({}))

    def batches(texts):
        return [
            dict(loaded.tokenizer(texts[i : i + 8], padding="max_length", max_length=32, truncation=True, return_tensors="pt"))
            for i in range(0, len(texts), 8)
        ]

    calibration, heldout = batches(CALIBRATION), batches(HELDOUT)
    loaded.layers = trace_layers(loaded, calibration[0])
    return loaded, calibration, heldout


@pytest.fixture(scope="module")
def runs(minilm):
    loaded, calibration, _ = minilm
    dense_state = {name: tensor.clone() for name, tensor in loaded.model.state_dict().items()}
    full = uniform_24(loaded, calibration, SETTINGS)
    layerwise = uniform_24(loaded, calibration, NMSettings(passes=10, batch_size=8, gap_passes=0))
    magnitude = copy.deepcopy(loaded.model)
    with torch.no_grad():
        for name in full.pruned:
            weight = magnitude.get_submodule(name).weight
            weight.mul_(nm_mask(weight, TWO_FOUR))
    return {"full": full, "layerwise": layerwise, "magnitude": magnitude, "dense_state": dense_state}


def output_error(loaded, model, batches):
    """||f_s(x) - f(x)||^2 / ||f(x)||^2 of the sentence embeddings over the batches."""
    numerator = denominator = 0.0
    with torch.no_grad():
        for batch in batches:
            dense, pruned = loaded.run(batch), loaded.run_model(model, batch)
            numerator += float((pruned - dense).square().sum())
            denominator += float(dense.square().sum())
    return numerator / denominator


def test_every_layer_but_the_first_and_last_is_2_4(minilm, runs):
    loaded, _, _ = minilm
    full = runs["full"]
    names = loaded.layer_names
    assert full.pruned == names[1:-1] and full.dense == {names[0]: "first layer", names[-1]: "last layer"}
    for name in full.pruned:
        assert satisfies_nm(full.model.get_submodule(name).weight, TWO_FOUR), name  # kept through global AdaPrune
        assert satisfies_nm(runs["layerwise"].model.get_submodule(name).weight, TWO_FOUR), name
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, runs["dense_state"][name]), name  # the loaded model is left dense


def test_adaprune_lowers_every_layers_error(runs):
    errors = runs["full"].errors
    assert set(errors) == set(runs["full"].pruned)
    for name, error in errors.items():
        assert error["adaprune"] < error["magnitude"], name
    assert runs["full"].mean_error("adaprune") < 0.5 * runs["full"].mean_error("magnitude")
    assert runs["layerwise"].errors.keys() == errors.keys() and all("gap" not in e for e in runs["layerwise"].errors.values())


def test_each_step_lowers_the_model_output_error(minilm, runs):
    loaded, calibration, heldout = minilm
    magnitude = output_error(loaded, runs["magnitude"], calibration)
    layerwise = output_error(loaded, runs["layerwise"].model, calibration)
    full = output_error(loaded, runs["full"].model, calibration)
    assert full < layerwise < 0.25 * magnitude
    assert output_error(loaded, runs["full"].model, heldout) < 0.5 * output_error(loaded, runs["magnitude"], heldout)


def test_an_allocation_prunes_only_its_2_4_layers(minilm):
    loaded, calibration, _ = minilm
    chosen = ["encoder.layer.2.intermediate.dense", "encoder.layer.4.output.dense"]
    levels = {name: ("2:4" if name in chosen else "0.0000") for name in loaded.layer_names}
    result = allocation_nm(loaded, calibration, levels, NMSettings(passes=2, batch_size=8, gap_passes=1))
    assert result.pruned == chosen and len(result.dense) == len(loaded.layer_names) - 2
    for name in loaded.layer_names:
        weight = result.model.get_submodule(name).weight
        assert satisfies_nm(weight, TWO_FOUR) if name in chosen else bool((weight != 0).all()), name
    with pytest.raises(ValueError, match="neither dense nor 2:4"):
        allocation_nm(loaded, calibration, {chosen[0]: "0.5000"})
    with pytest.raises(ValueError, match="does not list"):
        allocation_nm(loaded, calibration, {"encoder.nope": "2:4"})


def test_eligibility_rules():
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 10), nn.Linear(10, 8), nn.Linear(8, 4))
    loaded = LoadedModel(model.eval(), "classifier")
    loaded.layers = trace_layers(loaded, torch.randn(2, 8))
    names, dense = eligible_layers(loaded, TWO_FOUR)
    assert names == ["1"] and dense == {"0": "first layer", "2": "input dimension 10 is not a multiple of M = 4 (2:4)", "3": "last layer"}
    names, dense = eligible_layers(loaded, TWO_FOUR, first_last_dense=False, kernel_check=lambda name, m: "too small" if m.out_features < 8 else None)
    assert names == ["0", "1"] and dense == {"2": "input dimension 10 is not a multiple of M = 4 (2:4)", "3": "too small"}
    with pytest.raises(ValueError, match="layer 2 cannot be pruned to 2:4: input dimension 10"):
        prune_nm(loaded, [torch.randn(2, 8)], ["2"])
