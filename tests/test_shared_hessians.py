"""H collected once for a database build: stored keyed, read by the work items, removed when done."""

import json

import pytest
import torch

from engine.database import hessians
from engine.run import workers
from engine.run.pipeline import open_run

from .test_ray_executor import write_profile

SMALL = '["conv1", "fc3"]'


def test_a_stored_file_is_read_only_under_its_key_and_for_layers_it_holds(tmp_path):
    stored = {"a": torch.eye(3), "b": torch.arange(4.0).reshape(2, 2)}
    hessians.write(tmp_path, stored, key="k1")
    got = hessians.read(tmp_path, ["b"], "k1")
    assert list(got) == ["b"] and torch.equal(got["b"], stored["b"])
    assert hessians.covers(tmp_path, ["a", "b"], "k1")
    assert hessians.read(tmp_path, ["a"], "k2") is None  # stale: another build's H
    assert hessians.read(tmp_path, ["a", "c"], "k1") is None  # does not hold every layer asked for
    hessians.remove(tmp_path)
    assert hessians.read(tmp_path, ["a"], "k1") is None and not (tmp_path / hessians.FILE).exists()


def test_work_items_use_the_shared_hessians_and_build_what_a_single_pass_builds(tmp_path, monkeypatch):
    """The parent's H, read by one-layer work items, give the bytes of an inline build's own H."""
    torch.set_num_threads(1)
    ctx = open_run(write_profile(tmp_path / "inline", database="obs", include=SMALL), tmp_path / "inline" / "run")
    workers.adopt(ctx)
    plan = workers.database_plan(ctx)
    expected = dict(workers.build_database_layers(str(ctx.run_dir), plan.todo))

    ctx = open_run(write_profile(tmp_path / "shared", database="obs", include=SMALL), tmp_path / "shared" / "run")
    workers.adopt(ctx)
    plan = workers.database_plan(ctx)
    workers.share_hessians(ctx, plan)
    assert hessians.covers(plan.directory, plan.todo, hessians.key(plan.fingerprints))

    def no_second_pass(*_args, **_kwargs):
        raise AssertionError("a work item collected H again")

    monkeypatch.setattr("engine.database.reconstruct.collect_hessians", no_second_pass)
    got = {}
    for name in plan.todo:  # one layer per work item, as the processes and ray executors give them
        got.update(workers.build_database_layers(str(ctx.run_dir), [name]))
    assert list(got) == list(expected) == ["conv1", "fc3"]
    for name, entry in expected.items():
        assert got[name]["sha256"] == entry["sha256"] and got[name]["errors"] == entry["errors"], name


def test_a_database_stage_on_processes_removes_the_shared_file(tmp_path):
    from .test_ray_executor import run_stages

    profile = write_profile(tmp_path, database="obs", database_executor="processes", workers=2, include=SMALL)
    run_dir = run_stages(profile, tmp_path / "run", ("database",))
    assert not (run_dir / "db" / hessians.FILE).exists()
    assert list(json.loads((run_dir / "db" / "index.json").read_text())["layers"]) == ["conv1", "fc3"]


@pytest.fixture(autouse=True)
def _threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_query_key_and_value_share_one_product_and_it_is_the_one_each_gets_alone():
    from engine.model.layer_inputs import collect_hessians

    from .test_database import minilm_and_inputs

    loaded, inputs = minilm_and_inputs()
    names = [f"encoder.layer.0.attention.self.{part}" for part in ("query", "key", "value")] + ["encoder.layer.0.output.dense"]
    together = collect_hessians(loaded, inputs, {name: loaded.module(name) for name in names})
    for name in names:
        alone = collect_hessians(loaded, inputs, {name: loaded.module(name)})[name]
        assert torch.equal(together[name], alone), name
    assert torch.equal(together[names[0]], together[names[1]]) and torch.equal(together[names[0]], together[names[2]])
    assert not torch.equal(together[names[0]][:384, :384], together[names[3]][:384, :384])
