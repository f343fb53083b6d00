import json
import struct

import numpy as np
import pytest
import torch
from torch import nn

from engine.export.files import (
    read_profile_txt,
    read_recipe_schedule,
    read_recipe_targets,
    write_profile_txt,
    write_recipe,
    write_report,
    write_torchao_config,
)
from engine.core.grid import level_sparsity
from engine.export.result import read_result, write_result
from engine.export.weights import write_pruned_weights
from engine.export.schedule import DEFAULT as DEFAULT_SCHEDULE
from engine.export.schedule import GMPSchedule

LAYERS = [
    {"name": "fc1", "level": "0.7844", "time": 0.0021},
    {"name": "fc2", "level": "0.0000", "time": 0.0040},
    {"name": "fc3", "level": "2:4", "time": 0.0012},
    {"name": "head.proj", "level": "0.7844", "time": 0.0007},
]


def sample_result():
    return {
        "target_speedup": 1.5,
        "predicted_speedup": np.float64(1.512),
        "measured_speedup": None,
        "dense_baseline": "onednn",
        "layers": LAYERS,
        "loss": {"calibration": 0.0123, "heldout": 0.981},
        "baselines": {
            "uniform": {"levels": ["0.6000", "0.6000", "0.0000", "0.6000"], "predicted_speedup": 1.503,
                        "loss": {"calibration": 0.0456, "heldout": 0.93}},
            "global_magnitude": {"predicted_speedup": 1.50, "loss": {"calibration": float("inf"), "heldout": None}},
        },
        "seed": 0,
        "evaluations": np.int64(3),
        "heldout_metric": "cosine similarity",
    }


def test_result_round_trip_and_clear_errors(tmp_path):
    write_result(tmp_path, sample_result())
    result = read_result(tmp_path)
    assert result["predicted_speedup"] == 1.512 and result["evaluations"] == 3
    assert result["layers"] == LAYERS and result["measured_speedup"] is None
    assert result["baselines"]["global_magnitude"]["loss"]["calibration"] is None  # inf is not JSON
    with pytest.raises(ValueError, match="lacks seed"):
        write_result(tmp_path, {k: v for k, v in sample_result().items() if k != "seed"})
    with pytest.raises(ValueError, match="result.json: no result"):
        read_result(tmp_path / "elsewhere")
    (tmp_path / "result.json").write_text('{"target_speedup": 1.5,')  # a foreign, truncated file
    with pytest.raises(ValueError, match="result.json: not valid JSON"):
        read_result(tmp_path)


def test_profile_txt_golden_and_round_trip(tmp_path):
    path = write_profile_txt(tmp_path, LAYERS)
    assert path.read_text() == "0.7844 fc1\n0.0000 fc2\n2:4 fc3\n0.7844 head.proj\n"
    assert read_profile_txt(path) == {"fc1": "0.7844", "fc2": "0.0000", "fc3": "2:4", "head.proj": "0.7844"}
    original = tmp_path / "original.txt"  # written by the original release: skipped layers are absent
    original.write_text("0.4000 layer1.0.conv1\n0.9849 layer1.0.conv2\n")
    assert read_profile_txt(original) == {"layer1.0.conv1": "0.4000", "layer1.0.conv2": "0.9849"}
    original.write_text("0.4000 a\nhalf b\n")
    with pytest.raises(ValueError, match=r"original.txt:2"):
        read_profile_txt(original)


RECIPE = """\
# SparseML recipe written by spdy-tui from an SPDY run's allocation.
# Gradual magnitude pruning (GMP): every listed weight goes from init_sparsity to its
# final_sparsity on the cubic schedule, s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))^3,
# its masks recomputed every pruning_update_frequency epochs from the start of
# pruning_start_epoch (t0) and set to final_sparsity at the start of pruning_end_epoch (t1);
# leave_enabled keeps the masks on while training continues to num_epochs. One
# !GMPruningModifier per distinct (init, final, mask type); layers SPDY left dense are not listed.
# Layers whose final sparsity is at most init_sparsity start at it. N:M layers use mask_type
# "2:4" (quoted: YAML 1.1 reads a bare 2:4 as the number 124) and start at their final
# sparsity, because SparseML's N:M mask creator accepts no other target.
# `spdy finetune` runs exactly this schedule. Format: SparseML recipes, version 1.1.0
# (variables + eval()); params are the model's parameter names; pass it as --recipe.
version: 1.1.0

# General Variables
num_epochs: 15.0
init_sparsity: 0.05
pruning_start_epoch: 0.0
pruning_end_epoch: 10.0
pruning_update_frequency: 1.0

training_modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: eval(num_epochs)

pruning_modifiers:
  - !GMPruningModifier
    params:
      - fc1.weight
      - head.proj.weight
    init_sparsity: eval(init_sparsity)
    final_sparsity: 0.7844
    start_epoch: eval(pruning_start_epoch)
    end_epoch: eval(pruning_end_epoch)
    update_frequency: eval(pruning_update_frequency)
    inter_func: cubic
    mask_type: unstructured
    leave_enabled: True

  - !GMPruningModifier
    params:
      - fc3.weight
    init_sparsity: 0.5
    final_sparsity: 0.5
    start_epoch: eval(pruning_start_epoch)
    end_epoch: eval(pruning_end_epoch)
    update_frequency: eval(pruning_update_frequency)
    inter_func: cubic
    mask_type: "2:4"
    leave_enabled: True
"""


def test_recipe_golden_round_trip_and_valid_yaml(tmp_path):
    path = write_recipe(tmp_path, LAYERS)
    assert path.read_text() == RECIPE
    assert read_recipe_targets(path) == {"fc1.weight": 0.7844, "head.proj.weight": 0.7844, "fc3.weight": 0.5}
    assert read_recipe_schedule(path) == DEFAULT_SCHEDULE
    recipe = _load_recipe(path)
    assert recipe["version"] == "1.1.0" and recipe["num_epochs"] == 15.0
    nm_modifier = recipe["pruning_modifiers"][1]["GMPruningModifier"]
    assert nm_modifier["mask_type"] == "2:4" and nm_modifier["params"] == ["fc3.weight"]
    with pytest.raises(ValueError, match="start_epoch < end_epoch"):
        GMPSchedule(start_epoch=10, end_epoch=5)
    dense = write_recipe(tmp_path / "dense", [{"name": "fc1", "level": "0.0000", "time": 1.0}])
    assert "pruning_modifiers: []\n" in dense.read_text() and read_recipe_targets(dense) == {}


def _load_recipe(path):
    yaml = pytest.importorskip("yaml")  # present through transformers; not a dependency of ours

    class RecipeLoader(yaml.SafeLoader):
        pass

    RecipeLoader.add_multi_constructor("!", lambda loader, tag, node: {tag: loader.construct_mapping(node)})
    return yaml.load(path.read_text(), Loader=RecipeLoader)


# SparseML's documented fields (docs/source/recipes.md "Pruning Modifiers" and "Training Epoch
# Modifiers"; the GMPruningModifier docstring in sparseml/pytorch/sparsification/pruning/
# modifier_pruning_magnitude.py): required, and all accepted.
GMP_REQUIRED = {"params", "init_sparsity", "final_sparsity", "start_epoch", "end_epoch", "update_frequency"}
GMP_FIELDS = GMP_REQUIRED | {"leave_enabled", "inter_func", "mask_type", "global_sparsity", "log_types"}
EPOCH_RANGE_FIELDS = {"start_epoch", "end_epoch"}
INTER_FUNCS = {"linear", "cubic", "inverse_cubic"}


def _evaluate(value, variables):
    """A recipe value: ``eval(name)`` is the variable ``name`` (the only expressions we write)."""
    if isinstance(value, str) and value.startswith("eval(") and value.endswith(")"):
        return variables[value[5:-1]]
    return value


def _sparseml_cubic(epoch, start, end, init, final):
    """SparseML's interpolate(..., inter_func="cubic"): y0 + (1 - (1 - x)^3) (y1 - y0), x clamped."""
    x = min(max((epoch - start) / (end - start), 0.0), 1.0)
    return init + (1 - (1 - x) ** 3) * (final - init)


def test_recipe_uses_only_documented_sparseml_fields_and_means_our_schedule(tmp_path):
    schedule = GMPSchedule(init_sparsity=0.1, start_epoch=1, end_epoch=5, num_epochs=7, update_frequency=2)
    layers = LAYERS + [{"name": "low", "level": "0.0500", "time": 0.001}]  # below init_sparsity: constant
    recipe = _load_recipe(write_recipe(tmp_path, layers, schedule))
    variables = {key: value for key, value in recipe.items() if not key.endswith("modifiers") and key != "version"}
    assert variables == {"num_epochs": 7.0, "init_sparsity": 0.1, "pruning_start_epoch": 1.0,
                         "pruning_end_epoch": 5.0, "pruning_update_frequency": 2.0}
    assert [key for key in recipe if key.endswith("modifiers")] == ["training_modifiers", "pruning_modifiers"]
    (epoch_range,) = recipe["training_modifiers"]
    assert set(epoch_range) == {"EpochRangeModifier"} and set(epoch_range["EpochRangeModifier"]) == EPOCH_RANGE_FIELDS
    assert _evaluate(epoch_range["EpochRangeModifier"]["end_epoch"], variables) == schedule.num_epochs
    levels = {f"{layer['name']}.weight": layer["level"] for layer in layers}
    listed = []
    for entry in recipe["pruning_modifiers"]:
        (kind, fields), = entry.items()
        assert kind == "GMPruningModifier" and GMP_REQUIRED <= set(fields) <= GMP_FIELDS, set(fields) - GMP_FIELDS
        values = {key: _evaluate(value, variables) for key, value in fields.items()}
        assert values["inter_func"] in INTER_FUNCS and values["leave_enabled"] is True
        assert isinstance(values["init_sparsity"], float) and 0.0 <= values["init_sparsity"] <= values["final_sparsity"] < 1.0
        assert values["mask_type"] == "unstructured" or values["mask_type"] == "2:4"
        for param in values["params"]:
            listed.append(param)
            assert values["final_sparsity"] == round(level_sparsity(levels[param]), 4)
            for epoch in schedule.update_epochs():  # the recipe's sparsity at every update is ours
                ours = schedule.sparsity(epoch, levels[param])
                theirs = _sparseml_cubic(epoch, values["start_epoch"], values["end_epoch"], values["init_sparsity"],
                                         values["final_sparsity"])
                assert theirs == pytest.approx(ours, abs=1e-12), (param, epoch)
    assert sorted(listed) == ["fc1.weight", "fc3.weight", "head.proj.weight", "low.weight"]  # fc2 is dense


TORCHAO = """\
[
  {
    "tensor_fqn": "fc1.weight",
    "sparsity_level": 0.7844,
    "sparse_block_shape": [
      1,
      1
    ],
    "zeros_per_block": 1
  },
  {
    "tensor_fqn": "fc3.weight",
    "sparsity_level": 1.0,
    "sparse_block_shape": [
      1,
      4
    ],
    "zeros_per_block": 2
  },
  {
    "tensor_fqn": "head.proj.weight",
    "sparsity_level": 0.7844,
    "sparse_block_shape": [
      1,
      1
    ],
    "zeros_per_block": 1
  }
]
"""


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 16)
        self.norm = nn.BatchNorm1d(16)
        self.head = nn.Module()
        self.head.proj = nn.Linear(16, 16)
        self.tied = nn.Linear(16, 16, bias=False)
        self.tied.weight = self.head.proj.weight  # shared storage, as in tied embeddings

    def forward(self, x):
        x = torch.relu(self.fc2(torch.relu(self.fc1(x))))
        return self.tied(self.head.proj(self.norm(self.fc3(x))))


def test_torchao_config_golden_and_applies_with_weight_norm_sparsifier(tmp_path):
    path = write_torchao_config(tmp_path, LAYERS)
    assert path.read_text() == TORCHAO
    from torch.ao.pruning import WeightNormSparsifier

    torch.manual_seed(0)
    model = Net()
    sparsifier = WeightNormSparsifier()
    sparsifier.prepare(model, json.loads(path.read_text()))
    sparsifier.step()
    sparsifier.squash_mask()
    assert int((model.fc1.weight == 0).sum()) == round(0.7844 * 512)
    groups = model.fc3.weight.reshape(-1, 4)
    assert ((groups != 0).sum(dim=1) == 2).all()  # exactly 2:4 along the input dimension
    assert int((model.fc2.weight == 0).sum()) == 0


def test_pruned_weights_reload_in_plain_torch(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    torch.manual_seed(0)
    model = Net().eval()
    with torch.no_grad():
        model.fc1.weight[model.fc1.weight.abs() < 0.1] = 0
        model.fc3.weight.view(-1, 4)[:, :2] = 0
        model.norm.running_mean.uniform_()
    allocation = {"fc1": "0.3000", "fc3": "2:4"}
    path = write_pruned_weights(tmp_path, model, {"allocation": allocation, "target_speedup": 1.5})

    fresh = Net().eval()
    fresh.load_state_dict(load_file(path))  # strict: every key present, nothing extra
    x = torch.randn(8, 16)
    assert torch.equal(fresh(x), model(x))
    assert torch.equal(fresh.fc1.weight == 0, model.fc1.weight == 0)
    assert int((fresh.fc3.weight == 0).sum()) == fresh.fc3.weight.numel() // 2
    with safe_open(path, framework="pt") as handle:
        assert json.loads(handle.metadata()["allocation"]) == allocation
        assert handle.metadata()["target_speedup"] == "1.5"
    with pytest.raises(ValueError, match="fc2.weight has 0/1024 zeros"):
        write_pruned_weights(tmp_path, model, {"allocation": {"fc2": "0.5000"}})


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_report_writes_markdown_and_readable_plots(tmp_path):
    result = sample_result()
    evaluations = [(1, 0.9, 0.9), (2, None, 0.9), (3, float("inf"), 0.9), (4, 0.2, 0.2), (5, 0.4, 0.2)]
    environment = {"cpu": "AMD EPYC", "threads": 2, "versions": {"torch": "2.14.1"}}
    report = write_report(tmp_path, result, evaluations, environment).read_text()
    for expected in ("Target speedup: **1.50x**", "not measured yet", "`onednn`",
                     "| 1 | `fc1` | 0.7844 | 2.100 | 26.2% |", "| 3 | `fc3` | 2:4 | 1.200 | 15.0% |",
                     "| calibration loss | cosine similarity |", "| uniform | 1.503x | 0.0456 | 0.93 |",
                     "| global_magnitude | 1.500x | inf | n/a |", "![calibration loss of every evaluation](loss_curve.png)",
                     "](allocation.png)", 'versions: {"torch": "2.14.1"}'):
        assert expected in report
    for name in ("loss_curve.png", "allocation.png"):
        width, height = png_size(tmp_path / name)
        assert 300 < width < 2000 and 200 < height < 1000
