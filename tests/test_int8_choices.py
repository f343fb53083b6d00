"""int8 choices beside the fp32 levels: the level grammar, the profile keys, int8 database cells,
stitching, the prior's order, the uniform-int8 baseline, the runtime modules, the exported files and
the verify check.  Exact answers throughout."""

import copy

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from engine.backends.cpu import build_sparse_model, check_int8_layers
from engine.backends.verify import VerifyError
from engine.core.grid import DENSE, int8_level, is_int8, level_sparsity, mask_level, sort_levels, with_int8
from engine.core.profile import ProfileError, from_dict
from engine.database import compact
from engine.database.quantize import int8_cells, quantize_layer, round_to_nearest
from engine.database.stitch import Stitcher
from engine.database.store import build_database
from engine.export.weights import read_int8_weights, write_int8_weights, write_pruned_weights
from engine.run import products
from engine.runtime.csr_int8 import SparseInt8Linear
from engine.runtime.int8 import Int8Linear, fake_quantized_linear, int8_codes, int8_scale, unmark_int8
from engine.runtime.modules import CompiledInt8
from engine.search import baselines
from engine.search.budget import error_ranks, make_problem, prior_costs
from engine.timing.cpu import layer_at_level
from engine.timing.table import LayerTimes, TimingTable
from tests.test_database import CONFIGS, LAYERS, minilm_and_inputs

GRID = ["0.0000", "0.5000", "0.9000"]
LEVELS = with_int8(GRID, [0.0, 0.9])


# ---------------------------------------------------------------------------- grammar and profile
def test_int8_levels_are_the_prefix_on_an_unstructured_level():
    assert LEVELS == ["0.0000", "q8:0.0000", "0.5000", "0.9000", "q8:0.9000"]
    assert [is_int8(level) for level in LEVELS] == [False, True, False, False, True]
    assert [level_sparsity(level) for level in LEVELS] == [0.0, 0.0, 0.5, 0.9, 0.9]
    assert mask_level("q8:0.9000") == "0.9000" and mask_level("2:4") == "2:4"
    assert sort_levels(["q8:0.9000", "0.9000", "q8:0.0000", "0.0000"]) == ["0.0000", "q8:0.0000", "0.9000", "q8:0.9000"]
    assert with_int8(GRID, [0.6]) == ["0.0000", "0.5000", "q8:0.5000", "0.9000"]  # the nearest grid level
    for bad in ("2:4", "q8:0.5000"):
        with pytest.raises(ValueError):
            int8_level(bad)
    with pytest.raises(ValueError, match="only unstructured"):
        level_sparsity("q8:2:4")


def test_the_int8_profile_keys():
    profile = from_dict({"grid": {"steps": 2, "int8": True, "int8_sparsities": [0, 0.99]}})
    assert profile.levels() == ["0.0000", "q8:0.0000", "0.4000", "0.9225", "0.9900", "q8:0.9900"]  # 1 - sqrt(0.6 * 0.01)
    assert from_dict({"grid": {"steps": 2}}).levels() == ["0.0000", "0.4000", "0.9225", "0.9900"]
    with pytest.raises(ProfileError, match="grid.int8' needs grid.pattern = 'unstructured'"):
        from_dict({"grid": {"pattern": "nm", "int8": True}})
    with pytest.raises(ProfileError, match="export.sequential or export.gap"):
        from_dict({"grid": {"int8": True}, "export": {"gap": True}})
    with pytest.raises(ProfileError, match="'uniform-int8' needs grid.int8"):
        from_dict({"search": {"baselines": ["uniform-int8"]}})
    with pytest.raises(ProfileError, match="key 'grid.int8_sparsities' must be a number"):
        from_dict({"grid": {"int8": True, "int8_sparsities": [0.0, "half"]}})
    with pytest.raises(ProfileError, match="key 'grid.int8_sparsities' must be <= 0.999"):
        from_dict({"grid": {"int8": True, "int8_sparsities": [1.5]}})


# ---------------------------------------------------------------------------- database cells
def test_int8_cells_keep_the_masks_and_use_gptq_or_round_to_nearest():
    generator = torch.Generator().manual_seed(0)
    dense = torch.randn(16, 32, generator=generator)
    sparse = dense * (torch.rand(16, 32, generator=generator) > 0.7)
    x = torch.randn(32, 200, generator=generator)
    hessian = 2 * x @ x.T
    weights = {"0.0000": dense, "0.7000": sparse}
    cells = dict(int8_cells(["0.0000", "q8:0.0000", "0.7000", "q8:0.7000"], weights, hessian, "obs", 0.01, 8))
    assert list(cells) == ["q8:0.0000", "q8:0.7000"]
    assert torch.equal(cells["q8:0.0000"].q, quantize_layer(dense, hessian, None, 0.01, 8).q)
    assert torch.equal(cells["q8:0.7000"].q, quantize_layer(sparse, hessian, sparse != 0, 0.01, 8).q)
    assert torch.equal(cells["q8:0.7000"].q != 0, (sparse != 0) & (cells["q8:0.7000"].q != 0))  # zeros kept
    rtn = dict(int8_cells(["q8:0.7000"], weights, hessian, "magnitude", 0.01, 8))["q8:0.7000"]
    assert torch.equal(rtn.q, round_to_nearest(sparse, sparse != 0).q)


def test_an_int8_level_is_stored_with_its_scales_bit_for_bit():
    q = torch.tensor([[0, 3, -127], [5, 0, 0]], dtype=torch.int8)
    scale = torch.tensor([0.5, 0.25])
    weight = q.float() * scale[:, None]
    tensors = compact.encode("q8:0.5000", weight, scale)
    assert sorted(tensors) == ["q8:0.5000/mask", "q8:0.5000/scale", "q8:0.5000/shape", "q8:0.5000/values"]

    class Handle:
        def get_tensor(self, key):
            return tensors[key]

    assert torch.equal(compact.decode(Handle(), "q8:0.5000"), weight)
    assert torch.equal(compact.decode_scale(Handle(), "q8:0.5000"), scale)
    with pytest.raises(ValueError, match="stored with its scales"):
        compact.encode("q8:0.5000", weight)
    with pytest.raises(ValueError, match="stored with its scales"):
        compact.encode("0.5000", weight, scale)
    assert compact.stored_bytes((2, 3), "q8:0.5000") == 4 * 3 + 1 + 16 + 8  # 3 non-zeros, mask, shape, scales


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    loaded, inputs = minilm_and_inputs()
    database = build_database(loaded, inputs, LAYERS[:2], LEVELS, CONFIGS["obs"], tmp_path_factory.mktemp("db"))
    return loaded, database


def test_the_database_holds_int8_cells_with_their_errors(built):
    loaded, database = built
    name = LAYERS[0]
    assert database.levels(name) == LEVELS
    errors = database.errors()[name]
    assert errors["0.0000"] == 0.0 < errors["q8:0.0000"] < errors["0.5000"]  # int8 costs less than 50% sparsity here
    assert errors["0.9000"] < errors["q8:0.9000"]
    weight, scale = database.get(name, "q8:0.9000"), database.scale(name, "q8:0.9000")
    codes = torch.round(weight / scale[:, None])
    assert torch.equal(codes * scale[:, None], weight) and codes.abs().max() <= 127
    assert torch.equal(weight != 0, (database.get(name, "0.9000") != 0) & (weight != 0))


# ---------------------------------------------------------------------------- stitching and the final model
def test_stitching_an_int8_level_computes_what_the_kernel_computes(built):
    loaded, database = built
    name = LAYERS[0]
    module = loaded.module(name)
    x = torch.randn(3, 5, module.in_features)
    with Stitcher(loaded.model, LAYERS[:2], database) as stitcher:
        stitcher.apply({name: "q8:0.0000"})
        assert int8_scale(module) is not None
        q, scale = int8_codes(module)
        expected = fake_quantized_linear(x, q, scale, module.bias)
        with torch.no_grad():
            assert torch.allclose(module(x), expected, rtol=0, atol=1e-5)
            assert torch.equal(Int8Linear(q, scale, module.bias)(x), expected)  # the kernel, bit for bit
        copied = copy.deepcopy(loaded.model).get_submodule(name)
        unmark_int8(copied)  # a copy's mark is its own
        assert int8_scale(module) is not None and len(module._forward_pre_hooks) == 1
        stitcher.apply({name: "0.5000"})
        assert int8_scale(module) is None and not module._forward_pre_hooks
        stitcher.apply({name: "q8:0.9000"})
    assert int8_scale(module) is None and not module._forward_pre_hooks
    assert module.weight.data_ptr() == stitcher.dense[name].data_ptr()


def test_the_final_model_keeps_its_int8_layers_across_the_file(built, tmp_path):
    loaded, database = built
    levels = {LAYERS[0]: "q8:0.0000", LAYERS[1]: "q8:0.9000"}
    final = Stitcher(loaded.model, LAYERS[:2], database).copy(levels)
    products.write_final(tmp_path, final)
    again = products.load_final(tmp_path, loaded.model)
    for name in levels:
        assert torch.equal(int8_scale(again.get_submodule(name)), int8_scale(final.get_submodule(name)))
        assert len(again.get_submodule(name)._forward_pre_hooks) == 1
    assert int8_scale(loaded.module(LAYERS[0])) is None  # the dense model is untouched

    runtime = build_sparse_model(final, {**{name: DENSE for name in loaded.layer_names}, **levels}, "torch")
    assert isinstance(runtime.get_submodule(LAYERS[0]), Int8Linear)
    assert isinstance(runtime.get_submodule(LAYERS[1]), SparseInt8Linear)
    for name in levels:
        layer = final.get_submodule(name)
        x = torch.randn(2, 4, layer.in_features)
        expected = fake_quantized_linear(x, *int8_codes(layer), layer.bias)
        assert torch.equal(runtime.get_submodule(name)(x), expected)


def test_exported_weights_hold_the_int8_codes_and_a_plain_state_dict(built, tmp_path):
    loaded, database = built
    levels = {LAYERS[0]: "q8:0.0000", LAYERS[1]: "0.9000"}
    final = Stitcher(loaded.model, LAYERS[:2], database).copy(levels)
    write_pruned_weights(tmp_path, final, {"allocation": levels})
    state = load_file(str(tmp_path / "pruned.safetensors"))
    assert not [key for key in state if key.endswith("weight_scale")]
    copy.deepcopy(loaded.model).load_state_dict(state, strict=True)  # plain PyTorch loads it as it is
    write_int8_weights(tmp_path, final, levels)
    read_levels, tensors = read_int8_weights(tmp_path / "int8.safetensors")
    assert read_levels == {LAYERS[0]: "q8:0.0000"}
    q, scale = tensors[LAYERS[0]]
    assert q.dtype == torch.int8 and torch.equal(q.float() * scale[:, None], state[f"{LAYERS[0]}.weight"])
    assert write_int8_weights(tmp_path / "none", final, {LAYERS[1]: "0.9000"}) is None


# ---------------------------------------------------------------------------- search: prior and baselines
def mixed_table() -> TimingTable:
    levels = ("0.0000", "q8:0.0000", "0.5000", "0.9000", "q8:0.9000")
    rows = [LayerTimes("a", levels, (4.0, 1.5, 3.0, 1.0, 1.2)), LayerTimes("b", levels, (4.0, 1.5, 3.0, 1.0, 1.2))]
    return TimingTable(base=10.0, prunable=8.0, layers=rows)


def test_the_prior_ranks_mixed_choices_by_their_errors():
    table = mixed_table()
    errors = {"a": {"q8:0.0000": 0.001, "0.5000": 0.01, "0.9000": 0.2, "q8:0.9000": 0.21},
              "b": {"q8:0.0000": 0.05, "0.5000": 0.01, "0.9000": 0.2, "q8:0.9000": 0.21}}
    _, levels = table.matrix()
    assert error_ranks(["a", "b"], levels, errors) == [[0, 1, 2, 3, 4], [0, 2, 1, 3, 4]]
    problem = make_problem(table, 2.0, errors=errors)
    assert problem.prior()[1].tolist() == [0.0, 0.25, 1 / 16, 9 / 16, 1.0]
    assert prior_costs(levels).tolist() == make_problem(table, 2.0).prior().tolist()  # without errors: grid order


def test_uniform_baselines_keep_to_their_kind():
    problem = make_problem(mixed_table(), 10.0 / 5.0)  # budget 3: every layer at <= 1.5
    assert baselines.uniform(problem).levels == ["0.9000", "0.9000"]
    assert baselines.uniform(problem, int8=True).levels == ["q8:0.0000", "q8:0.0000"]


# ---------------------------------------------------------------------------- timing and verify
def test_the_profiler_times_int8_levels_on_the_modules_that_run_them():
    layer = nn.Sequential(nn.Linear(16, 8))
    assert isinstance(layer_at_level(layer, layer, "0", "q8:0.0000"), Int8Linear)
    sparse = layer_at_level(layer, layer, "0", "q8:0.5000")
    assert isinstance(sparse, SparseInt8Linear) and sparse.density == 0.5
    compiled = layer_at_level(layer, layer, "0", "q8:0.0000", compiled=True)
    assert isinstance(compiled, CompiledInt8)
    x = torch.randn(3, 16)
    with torch.no_grad():
        assert torch.equal(compiled(x), compiled.module(x))


def test_verify_checks_every_int8_kernel_exactly(built, monkeypatch):
    loaded, database = built
    levels = {**{name: DENSE for name in loaded.layer_names}, LAYERS[0]: "q8:0.0000", LAYERS[1]: "q8:0.9000"}
    final = Stitcher(loaded.model, LAYERS[:2], database).copy({name: levels[name] for name in LAYERS[:2]})
    _, inputs = minilm_and_inputs()
    check_int8_layers(loaded, final, levels, inputs[0])
    import engine.backends.cpu as cpu

    original = cpu.int8_module  # a kernel whose scales are 1% off in one layer
    monkeypatch.setattr(cpu, "int8_module", lambda q, scale, bias, level: original(
        q, scale * (1.01 if level == "q8:0.9000" else 1.0), bias, level))
    with pytest.raises(VerifyError, match=LAYERS[1].replace(".", r"\.")):
        check_int8_layers(loaded, final, levels, inputs[0])


def test_calibration_makes_the_table_predict_the_measured_uniform_int8_model():
    from types import SimpleNamespace

    from engine.timing.calibrate import calibrate_int8
    from engine.timing.cpu import stand_in_model

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64)).eval()
    x = torch.randn(32, 64)
    levels = ("0.0000", "q8:0.0000", "0.5000")
    table = TimingTable(base=3e-3, prunable=2e-3, layers=[
        LayerTimes("0", levels, (1e-3, 6e-4, 8e-4)), LayerTimes("2", levels, (1e-3, 5e-4, 7e-4))])
    uniform = stand_in_model(model, model, {"0": "q8:0.0000", "2": "q8:0.0000"})
    hardware = SimpleNamespace(warmup=1, repeats=5, max_spread=0.5)
    with torch.no_grad():
        calibrated = calibrate_int8(table, uniform, lambda m, inputs: m(inputs), x, hardware, lambda: model(x))
    record = calibrated.environment["int8_calibration"]
    assert record["timed_int8_seconds"] == pytest.approx(1.1e-3)
    assert calibrated.predicted_time(["q8:0.0000", "q8:0.0000"]) == pytest.approx(record["uniform_int8_seconds"], rel=1e-12)
    assert calibrated.predicted_time(["0.5000", "0.0000"]) == table.predicted_time(["0.5000", "0.0000"])  # fp32 cells as timed
    partial = TimingTable(base=3e-3, prunable=2e-3, layers=[
        LayerTimes("0", levels, (1e-3, 6e-4, 8e-4)), LayerTimes("2", ("0.0000",), (1e-3,))])
    assert calibrate_int8(partial, uniform, None, x, hardware, None) is partial


def test_verify_races_every_dense_path_the_profiler_found_close_to_the_reference():
    from engine.backends.cpu import reference_candidates

    def table(reference: str, medians: dict) -> TimingTable:
        environment = {"end_to_end": {name: {"median": median} for name, median in medians.items()}}
        return TimingTable(base=1.0, prunable=0.5, layers=[], dense_baseline=reference, environment=environment)

    medians = {"torch": 0.291, "onednn": 0.288, "compiled": 0.273, "onnxruntime": 0.295}
    assert reference_candidates(table("compiled", medians)) == ["compiled", "onednn", "onnxruntime", "torch"]
    medians = {"torch": 0.40, "onednn": 0.30, "compiled": 0.36, "onnxruntime": 0.33}
    assert reference_candidates(table("onednn", medians)) == ["onednn", "onnxruntime"]  # compiled is 20% slower
    assert reference_candidates(TimingTable(base=1.0, prunable=0.5, layers=[], dense_baseline="onednn")) == ["onednn"]
