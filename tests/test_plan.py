"""`engine.run.plan.plan_run`: what `spdy check` can know before a run starts, and what it refuses."""

import json

import numpy as np
import pytest

from engine.core.profile import ProfileError, load_profile
from engine.model.data import DataError
from engine.model.sources import ModelError
from engine.run.pipeline import STAGE_NAMES
from engine.run.plan import RunPlan, plan_run
from engine.search.dp import InfeasibleTarget
from engine.timing.table import LayerTimes, TableError, TimingTable, save_table

from .conftest import TABLES

ROOT = TABLES.parents[2]
DIGITS_LAYERS = [
    ("conv1", "conv2d", (16, 1, 3, 3), (64, 1, 8, 8)),
    ("fc1", "linear", (2048, 1024), (64, 1024)),
    ("fc2", "linear", (512, 2048), (64, 2048)),
    ("fc3", "linear", (10, 512), (64, 512)),
]
DIGITS_WEIGHTS = 16 * 9 + 2048 * 1024 + 512 * 2048 + 10 * 512


def test_plan_of_the_digits_profile():
    plan = plan_run(load_profile(ROOT / "profiles" / "digits-cpu.toml"))
    assert isinstance(plan, RunPlan)
    assert [(layer.name, layer.kind, layer.weight_shape, layer.input_shape) for layer in plan.layers] == DIGITS_LAYERS
    assert len(plan.levels) == 22 and plan.levels[:2] == ["0.0000", "0.4000"] and plan.levels[-1] == "0.9900"
    assert plan.skipped == []
    assert plan.cells == 4 * 22 == 88
    # as engine.database.compact stores it: the dense level 4 bytes a weight, the 21 pruned ones their
    # non-zeros and a bitmask (format 1, a dense fp32 copy per level, was 4 * 22 * DIGITS_WEIGHTS = 277,287,296)
    assert plan.database_bytes == 61_176_930
    assert list(plan.estimated_seconds) == list(STAGE_NAMES)
    assert all(seconds > 0 for seconds in plan.estimated_seconds.values())
    assert 45 < sum(plan.estimated_seconds.values()) < 600  # measured: about 95 s in all (the profile's header)
    assert 40 < plan.estimated_seconds["database"] < 300  # measured ~75 s (OBS on the wide head)
    assert any("rough" in note for note in plan.notes)


def test_plan_with_a_supplied_table_skips_and_nm_levels(tmp_path):
    table = tmp_path / "t.json"
    rows = [LayerTimes(name, ("0.0000", "0.9000"), (dense, dense / 4)) for name, dense in (("conv1", 0.001), ("fc1", 0.01), ("fc2", 0.005), ("fc3", 0.0001))]
    save_table(TimingTable(0.02, 0.0161, rows), table)
    profile = write(tmp_path, f'[hardware]\ntimings = "{table}"\n[search]\nskip = ["fc3", "conv*"]\ntarget = 1.5\n')
    plan = plan_run(profile)
    assert plan.skipped == ["conv1", "fc3"] and plan.estimated_seconds["timings"] == 1.0
    assert any("allows up to" in note for note in plan.notes)
    nm = plan_run(write(tmp_path, '[grid]\npattern = "nm"\n', "nm.toml"))
    assert nm.levels == ["0.0000", "2:4"] and nm.cells == 7  # conv1's 9 inputs per filter are not a multiple of 4
    assert any("layer conv1: level 2:4 is not stored" in note for note in nm.notes)


def write(tmp_path, extra: str = "", name: str = "p.toml", model: str = 'source = "digits"', data: str = 'source = "digits"'):
    """A digits profile with ``extra`` sections (later keys of a section must come in ``extra`` whole)."""
    path = tmp_path / name
    path.write_text(f'[run]\nname = "plan"\n[model]\n{model}\n[data]\n{data}\ncalibration_samples = 64\nheldout_samples = 64\nbatch_size = 64\n{extra}')
    return load_profile(path)


def _table(tmp_path, names=("conv1", "fc1", "fc2", "fc3"), prunable=None, base=0.02):
    rows = [LayerTimes(name, ("0.0000", "0.9000"), (0.004, 0.001)) for name in names]
    save_table(TimingTable(base, prunable if prunable is not None else 0.004 * len(names), rows), tmp_path / "t.json")
    return tmp_path / "t.json"


def _python_module(tmp_path, name, body):
    (tmp_path / f"{name}.py").write_text(body)
    return f'source = "python"\npython = "{name}:build"'


REFUSALS = [
    (lambda d: write(d, model=f'source = "hf"\npath = "{d / "absent"}"'), ModelError, r"model.path '.*absent': no such directory"),
    (lambda d: ((d / "hf").mkdir(), write(d, model='source = "hf"\npath = "hf"'))[1], ModelError, r"is not a Hugging Face model directory: it has no config.json"),
    (lambda d: write(d, model='source = "torchvision"\nname = "resnet18"\npath = "w.pth"'), ModelError, r"model.path '.*w.pth': no such weights file"),
    (lambda d: write(d, model='source = "python"\npython = "no_colon"'), ModelError, r"model.python 'no_colon' must look like 'package.module:function'"),
    (lambda d: write(d, model='source = "python"\npython = "absent_module_for_plan:build"'), ModelError, r"model.python 'absent_module_for_plan:build': cannot import 'absent_module_for_plan'"),
    (lambda d: write(d, model=_python_module(d, "broken_model_for_plan", "def build(:\n")), ModelError, r"model.python 'broken_model_for_plan:build': cannot import it: invalid syntax"),
    (lambda d: write(d, '[hardware]\ntimings = "absent.json"\n'), TableError, r"absent.json: no such timing table file"),
    (lambda d: write(d, f'[hardware]\ntimings = "{_table(d, prunable=0.5)}"\n'), TableError, r"t.json: the dense times of its 4 layers add up to 0.016 s, but its 'prunable' header says 0.5 s"),
    (lambda d: write(d, f'[hardware]\ntimings = "{_table(d, names=("conv1", "fc1"))}"\n'), TableError, r"t.json: no timings for layer\(s\) fc2, fc3"),
    (lambda d: write(d, f'[hardware]\ntimings = "{_table(d)}"\n[search]\ntarget = 5.0\n'), InfeasibleTarget, r"target 5x is infeasible: the maximum achievable speedup on .*t.json is 2.5000x"),
    (lambda d: write(d, data='source = "tensors"\npath = "absent.npy"'), DataError, r"data.path '.*absent.npy': no such file \(data.source 'tensors'\)"),
    (lambda d: write(d, model='source = "torchvision"\nname = "resnet18"', data='source = "imagefolder"\npath = "nowhere"'), DataError, r"data.path '.*nowhere': no such folder"),
    (lambda d: write(d, data='source = "stdlib-docstrings"'), DataError, r"data.source 'stdlib-docstrings' is text, but model.source 'digits' has no tokenizer"),
    (lambda d: write(d, data=f'source = "text"\npath = "{d / "t.txt"}"'), DataError, r"data.source 'text' is text, but model.source 'digits' has no tokenizer"),
    (lambda d: write(d, model='source = "minilm"'), ModelError, r"model.source 'minilm' cannot run on data.source 'digits': a text model needs text data"),
    (lambda d: write(d, data='source = "model"'), DataError, r"data.source 'model' needs model.source 'python'"),
    (lambda d: ((d / "few.txt").write_text("one\ntwo\nthree\n"), write(d, model='source = "minilm"', data='source = "text"\npath = "few.txt"'))[1],
     DataError, r"text file '.*few.txt' has 3 samples, fewer than data.calibration_samples \(64\) \+ data.heldout_samples \(64\)"),
    (lambda d: write(d, data='source = "digits"\nheldout_path = "mine.txt"'), DataError,
     r"data.heldout_path '.*mine.txt' is held-out text, but data.source 'digits' is not text"),
    (lambda d: write(d, model='source = "minilm"', data='source = "stdlib-docstrings"\nheldout_path = "absent.txt"'), DataError,
     r"data.heldout_path '.*absent.txt': cannot read the text file"),
    (lambda d: ((d / "blank.txt").write_text("\n \n"), write(d, model='source = "minilm"', data='source = "stdlib-docstrings"\nheldout_path = "blank.txt"'))[1],
     DataError, r"data.heldout_path '.*blank.txt': the file has no non-blank lines"),
    (lambda d: _digits_too_many(d),
     DataError, r"data.calibration_samples = 300 exceeds the 285 calibration samples of the digits split"),
    (lambda d: write(d, model='source = "digits"\nexclude = ["*"]'), ModelError, r"no prunable layer \(Linear, Conv2d\) left after model.include = \['\*'\] and model.exclude = \['\*'\]"),
    (lambda d: write(d, model='source = "digits"\ninclude = ["decoder.*"]'), ModelError, r"no prunable layer .* left after model.include = \['decoder.\*'\]"),
    (lambda d: write(d, '[search]\nskip = ["fc*", "head.*"]\n'), ProfileError, r"key 'search.skip': pattern 'head.\*' matches no prunable layer of the model \(layers: conv1, fc1, fc2, fc3\)"),
    (lambda d: (np.save(d / "x.npy", np.zeros((200, 5), np.float32)), write(d, data='source = "tensors"\npath = "x.npy"'))[1],
     ModelError, r"model.source 'digits' cannot run on data.source 'tensors': "),
]


def _digits_too_many(tmp_path):
    path = tmp_path / "many.toml"
    path.write_text('[model]\nsource = "digits"\n[data]\nsource = "digits"\ncalibration_samples = 300\n')
    return load_profile(path)


@pytest.mark.parametrize("make, error, message", REFUSALS)
def test_plan_refuses_what_would_fail_in_the_run(tmp_path, make, error, message):
    with pytest.raises(error, match=message):
        plan_run(make(tmp_path))


def test_a_python_model_and_a_tensors_file_plan(tmp_path):
    module = _python_module(tmp_path, "good_model_for_plan", (
        "import torch\n"
        "def build(profile):\n"
        "    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))\n"
        "    batches = [torch.zeros(8, 5) for _ in range(4)]\n"
        "    return model, batches, batches\n"
    ))
    plan = plan_run(write(tmp_path, model=module, data='source = "model"'))
    assert [(layer.name, layer.weight_shape, layer.input_shape) for layer in plan.layers] == [("0", (7, 5), (8, 5)), ("2", (3, 7), (8, 7))]
    np.save(tmp_path / "x.npy", np.zeros((200, 1, 8, 8), np.float32))
    assert plan_run(write(tmp_path, data='source = "tensors"\npath = "x.npy"')).cells == 4 * 42  # the default grid: dense + 41 levels


def test_the_run_fails_on_a_skip_glob_before_any_timing(tmp_path):
    from engine.core.events import read_events
    from engine.run.pipeline import execute, open_run

    path = tmp_path / "p.toml"
    path.write_text('[run]\nname = "r"\n[model]\nsource = "digits"\n[data]\nsource = "digits"\ncalibration_samples = 64\n'
                    'heldout_samples = 64\n[search]\nskip = ["nolayer"]\n')
    ctx = open_run(path, tmp_path / "run")
    with pytest.raises(ProfileError, match="key 'search.skip': pattern 'nolayer' matches no prunable layer"):
        execute(ctx)
    events = list(read_events(tmp_path / "run" / "events.jsonl"))
    assert not any(event["type"] == "timing" for event in events) and not (tmp_path / "run" / "timings.json").exists()
    assert json.loads(json.dumps(events[-1]))["status"] == "failed"


def test_relax_adds_one_more_search_final_and_measurement_to_the_verify_estimate(tmp_path):
    plain = plan_run(write(tmp_path, "[export]\nrelax = false\n", "plain.toml")).estimated_seconds
    relaxing = plan_run(write(tmp_path, "[export]\nrelax = true\n", "relax.toml")).estimated_seconds
    assert relaxing["verify"] == pytest.approx(plain["search"] + plain["final"] + 2 * plain["verify"], abs=0.2)
    assert {stage: s for stage, s in relaxing.items() if stage != "verify"} == {stage: s for stage, s in plain.items() if stage != "verify"}
