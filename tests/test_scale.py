"""The BERT-base-shaped scale run's mechanics at a small size (benchmarks/bench_scale.py measures the full size).

``model.source = "bert-base-random"``: 12 x 768 with 72 Linear layers and seeded weights; here the
6 Linear layers of its first block are pruned on a 3-level grid, through real timings, a database
built on 2 Ray workers and a short search scored on 2 Ray workers, each stage starting and
stopping its own local Ray (``ray.address = ""``)."""

import json

import pytest

from engine.core.profile import from_dict
from engine.database import compact
from engine.database.store import Database
from engine.model.sources import load_model

PROFILE = """
[run]
name = "bert-scale"
seed = 0
[model]
source = "bert-base-random"
include = ["encoder.layer.0.*"]
[data]
calibration_samples = 16
heldout_samples = 8
batch_size = 8
seq_len = 16
[hardware]
runtime = "eager"
reference_paths = ["torch"]
threads = 2
batch_size = 8
warmup = 1
repeats = 3
[grid]
steps = 1
[database]
method = "magnitude"
executor = "ray"
workers = 2
[search]
target = 1.0
random_inits = 4
window = 2
executor = "ray"
workers = 2
"""


def test_the_bert_base_shaped_source_has_72_linear_layers_and_seeded_weights():
    profile = from_dict({"model": {"source": "bert-base-random"}, "run": {"seed": 4}})
    first, again = load_model(profile), load_model(profile)
    linear = [name for name, module in first.model.named_modules() if type(module).__name__ == "Linear"]
    assert len(linear) == 72
    assert sum(first.model.get_submodule(name).weight.numel() for name in linear) == 12 * (4 * 768 * 768 + 2 * 768 * 3072)
    assert all(a.equal(b) for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()))


@pytest.mark.slow
def test_timings_database_and_search_of_a_bert_base_shaped_block_on_local_ray(tmp_path):
    pytest.importorskip("ray")
    from engine.run.pipeline import execute, open_run

    profile = tmp_path / "bert.toml"
    profile.write_text(PROFILE)
    run_dir = tmp_path / "run"
    execute(open_run(profile, run_dir), ("timings", "database", "search"))
    database = Database.open(run_dir / "db")
    names = [f"encoder.layer.0.{part}" for part in
             ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
              "intermediate.dense", "output.dense")]
    assert sorted(database.layers()) == sorted(names)
    levels = ["0.0000", "0.4000", "0.9900"]
    assert all(database.levels(name) == levels for name in names)
    for name in names:
        shape = tuple(database.get(name, "0.9900").shape)
        estimate = sum(compact.stored_bytes(shape, level) for level in levels)
        assert estimate <= (run_dir / "db" / database.entries[name]["file"]).stat().st_size <= estimate + 4096
    search = json.loads((run_dir / "search.json").read_text())
    assert len(search["levels"]) == 6 and set(search["levels"]) <= set(levels) and search["evaluations"] >= 4
