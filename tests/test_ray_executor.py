"""The ``ray`` executor: the same search and database as ``inline`` and ``processes``, on a local Ray.

One local Ray (2 CPUs) serves the whole module; the executor finds it running and leaves it so.
Tests that need Ray skip when it is not installed (``pip install -e .[ray]``)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine.core.errors import RunError
from engine.core.events import read_events
from engine.core.profile import RayConfig
from engine.executors import open_executor
from engine.search.budget import make_problem
from engine.search.spdy import Search, SearchSettings
from engine.timing.table import load_table

from .conftest import TABLES
from .test_pipeline import fixture_table
from .test_pool import make_scorer

ROOT = Path(__file__).resolve().parents[1]
SEARCH_STAGES = ("timings", "database", "search")


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), saved]))  # workers import tests.*
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()
    if saved is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = saved


def write_profile(folder: Path, executor: str = "inline", workers: int = 1, database: str = "magnitude",
                  database_executor: str = "inline", include: str = '["*"]') -> Path:
    """The digits model on a fixture timing table (the tests of test_pipeline), the search on ``executor``."""
    folder.mkdir(parents=True, exist_ok=True)
    fixture_table(folder / "timings-fixture.json")
    path = folder / "digits.toml"
    path.write_text(f"""
[run]
name = "digits-ray"
seed = 3
[model]
source = "digits"
include = {include}
[data]
source = "digits"
calibration_samples = 128
heldout_samples = 64
batch_size = 64
[hardware]
timings = "timings-fixture.json"
runtime = "eager"
threads = 1
batch_size = 64
[grid]
steps = 5
[database]
method = "{database}"
executor = "{database_executor}"
workers = {workers}
[search]
target = 1.5
random_inits = 8
window = 6
executor = "{executor}"
workers = {workers}
""")
    return path


def run_stages(profile: Path, out: Path, stages=SEARCH_STAGES, resume: bool = False, listener=None) -> Path:
    from engine.run.pipeline import execute, open_run

    execute(open_run(profile, out, resume, listener=listener), stages)
    return out


def trajectory(run_dir: Path) -> list[tuple]:
    return [(e["n"], e["levels"], e["loss"], e["accepted"]) for e in read_events(run_dir / "events.jsonl") if e["type"] == "eval"]


def search_record(run_dir: Path) -> dict:
    return json.loads((run_dir / "search.json").read_text())


@pytest.fixture(scope="module")
def inline_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inline")
    return run_stages(write_profile(folder), folder / "run")


# ---------------------------------------------------------------------------- errors, no Ray needed to run
def test_missing_ray_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(RunError, match=r"executor 'ray' needs Ray: pip install -e \.\[ray\]"):
        open_executor("ray", 2, 2)


def test_a_run_directory_outside_the_shared_path_is_refused_before_work_starts(tmp_path, local_ray):
    shared = tmp_path / "shared"
    with pytest.raises(RunError, match=f"run directory {tmp_path / 'elsewhere'} is not inside the shared folder {shared}"):
        open_executor("ray", 2, 2, RayConfig(shared_path=str(shared)), shared=[str(tmp_path / "elsewhere")])


# ---------------------------------------------------------------------------- on a local Ray
def test_a_folder_a_worker_cannot_read_is_named_not_a_hang(tmp_path, local_ray):
    missing = tmp_path / "not-mounted" / "run"
    executor = open_executor("ray", 2, 2, RayConfig(), shared=[str(missing)])
    with pytest.raises(RunError, match=f"Ray worker on node .* cannot read {missing}: .*docs/cluster.md"):
        list(executor.map(pow, (2,), [1, 2]))
    assert local_ray.is_initialized()  # the module's Ray is left running


def test_more_workers_than_the_cluster_has_is_an_error_not_a_hang(local_ray):
    from engine.executors.ray_tasks import RayExecutor

    executor = RayExecutor(3, 1, start_timeout=2.0)
    with pytest.raises(RunError, match=r"Ray placed [0-2] of 3 workers within 2 s \(1 CPU each; "):
        executor.scorer(make_scorer, (1,))


def test_map_yields_in_the_order_of_the_items(local_ray):
    executor = open_executor("ray", 2, 2, RayConfig())
    assert list(executor.map(pow, (3,), [4, 0, 2, 1, 3])) == [81, 1, 9, 3, 27]
    assert len(executor.peak_rss_bytes) == 2 and min(executor.peak_rss_bytes) > 0


def test_two_ray_workers_give_the_single_process_trajectory(local_ray):
    problem = make_problem(load_table(TABLES / "rn18_unstr.txt"), 2.0, ["conv1", "fc"])
    serial = Search(problem, make_scorer(1), SearchSettings(random_inits=10, window=8, seed=5)).run()
    with open_executor("ray", 2, 2).scorer(make_scorer, (1,)) as pooled:
        parallel = Search(problem, pooled, SearchSettings(random_inits=10, window=8, seed=5, batch=2)).run()
    assert parallel.allocation.levels == serial.allocation.levels and parallel.loss == serial.loss
    assert [e.levels for e in parallel.history] == [e.levels for e in serial.history]
    assert [e.loss for e in parallel.history] == [e.loss for e in serial.history]


def test_search_on_digits_is_identical_with_inline_processes_and_ray(tmp_path, local_ray, inline_run):
    expected = search_record(inline_run)
    for executor in ("processes", "ray"):
        run_dir = run_stages(write_profile(tmp_path / executor, executor, workers=2), tmp_path / executor / "run")
        assert search_record(run_dir) == expected, executor
        assert trajectory(run_dir) == trajectory(inline_run), executor


def test_database_built_on_ray_is_bit_identical_to_inline(tmp_path, local_ray):
    """At the same threads per build (hardware.threads = 1 here; BLAS sums depend on the thread count)."""
    small = '["conv1", "fc3"]'  # OBS on the small layers: seconds, not the wide head's minute
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        inline = run_stages(write_profile(tmp_path / "inline", database="obs", include=small), tmp_path / "inline" / "run", ("database",))
    finally:
        torch.set_num_threads(threads)
    on_ray = run_stages(
        write_profile(tmp_path / "ray", database="obs", database_executor="ray", workers=2, include=small),
        tmp_path / "ray" / "run", ("database",),
    )
    expected = json.loads((inline / "db" / "index.json").read_text())["layers"]
    got = json.loads((on_ray / "db" / "index.json").read_text())["layers"]
    assert list(got) == list(expected) == ["conv1", "fc3"]
    for name, entry in expected.items():
        assert got[name]["sha256"] == entry["sha256"] and got[name]["errors"] == entry["errors"], name
        assert (on_ray / "db" / entry["file"]).read_bytes() == (inline / "db" / entry["file"]).read_bytes()


def test_an_interrupted_ray_search_resumes_inline_to_the_same_allocation(tmp_path, local_ray, inline_run):
    profile = write_profile(tmp_path, "ray", workers=2)
    out = tmp_path / "run"
    seen = []

    def interrupt_after_five_evaluations(event):
        seen.append(event["type"])
        if seen.count("eval") == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stages(profile, out, listener=interrupt_after_five_evaluations)
    assert len(trajectory(out)) == 5 and not (out / "search.json").exists()
    run_stages(write_profile(tmp_path, "inline", workers=1), out, resume=True)
    assert search_record(out) == search_record(inline_run)
    assert trajectory(out) == trajectory(inline_run)  # nothing scored twice, nothing lost


@pytest.mark.slow
def test_a_killed_ray_run_resumes_with_processes(tmp_path, inline_run):
    pytest.importorskip("ray")
    profile = write_profile(tmp_path, "ray", workers=2)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "spdy_tui.cli", "run", str(profile), "--out", str(out)]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and child.poll() is None and len(trajectory(out) if (out / "events.jsonl").exists() else []) < 5:
        time.sleep(0.1)
    assert child.poll() is None, "the run finished before it could be killed"
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    run_stages(write_profile(tmp_path, "processes", workers=2), out, resume=True)
    assert search_record(out) == search_record(inline_run)
    assert trajectory(out) == trajectory(inline_run)
