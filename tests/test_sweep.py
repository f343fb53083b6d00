"""`spdy sweep`: one timing table and one database, a run per target, the trade-off table and PNG."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import engine.run.sweep
from engine.core.errors import RunError
from engine.core.events import read_events
from engine.export.result import write_result
from engine.export.tradeoff import Point, markdown, run_points, series
from engine.run.sweep import parse_targets, read_sweep, sweep, target_dir
from engine.search.dp import InfeasibleTarget
from spdy_tui.cli import Exit, app
from tests.test_pipeline import LAYERS, LEVELS, MAGNITUDE_DATABASE, write_profile

FAST = ("--set", "search.random_inits=2", "--set", "search.window=2", "--set", "export.weights=false")


def run_cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


# ---------------------------------------------------------------------------- targets
def test_targets_are_parsed_sorted_and_bad_ones_named():
    assert parse_targets("2, 1.25,3") == (1.25, 2.0, 3.0)
    for text, named in (("1.5,abc", "'abc'"), ("0.5", "'0.5'"), ("2,inf", "'inf'"), ("2,2.0", "'2.0' is given twice"),
                        (" , ", "no target")):
        with pytest.raises(RunError, match=named):
            parse_targets(text)
    assert target_dir(1.25) == "target-1.25" and target_dir(2.0) == "target-2"


def test_cli_refuses_a_bad_target_naming_it(tmp_path):
    result = run_cli("sweep", write_profile(tmp_path), "--targets", "1.5,fast", "--out", tmp_path / "sweep")
    assert result.exit_code == Exit.BAD_INPUT and "--targets: 'fast' is not a number" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "sweep").exists()


# ---------------------------------------------------------------------------- the trade-off
RESULT = {
    "target_speedup": 2.0, "predicted_speedup": 2.1, "measured_speedup": 1.9,
    "loss": {"calibration": 0.05, "heldout": 0.98},
    "baselines": {"uniform": {"predicted_speedup": 2.2, "loss": {"calibration": 1.0, "heldout": 0.7}},
                  "prior": {"error": "infeasible", "predicted_speedup": None, "loss": {"calibration": None, "heldout": None}}},
}
BENCH = {"rows": [{"runtime": "pruned", "speedup": 1.9}, {"runtime": "onnxruntime", "speedup": 1.2, "cosine_mean": 1.0},
                  {"runtime": "onnxruntime-int8", "speedup": 2.5, "cosine_mean": 0.99}]}


def test_run_points_take_spdy_every_baseline_and_the_onnx_reference_points():
    points = run_points("target-2", RESULT, BENCH)
    assert points == [
        Point("target-2", "spdy", 2.0, 2.1, 1.9, 0.05, 0.98),
        Point("target-2", "uniform", 2.0, 2.2, None, 1.0, 0.7),
        Point("target-2", "prior", 2.0, None, None, None, None),
        Point("target-2", "onnxruntime", 2.0, None, 1.2, None, 1.0),
        Point("target-2", "onnxruntime-int8", 2.0, None, 2.5, None, 0.99),
    ]
    assert markdown(points[:2], "accuracy").splitlines() == [
        "| run | allocation | target | predicted speedup | measured speedup | calibration loss | accuracy |",
        "|---|---|---:|---:|---:|---:|---:|",
        "| target-2 | **spdy** | 2x | 2.100x | 1.900x | 0.05 | 0.9800 |",
        "| target-2 | uniform | 2x | 2.200x | — | 1 | 0.7000 |",
    ]
    # the ONNX Runtime points are a cosine to dense: plotted only on a cosine axis
    assert series(points, cosine_axis=False) == {"spdy measured": [(1.9, 0.98)], "spdy predicted": [(2.1, 0.98)],
                                                 "uniform": [(2.2, 0.7)]}
    assert series(points, cosine_axis=True)["onnxruntime-int8"] == [(2.5, 0.99)]


# ---------------------------------------------------------------------------- orchestration (stand-in stages)
@pytest.fixture
def stand_in_runs(monkeypatch):
    """``execute`` replaced by one that writes the products at once; the calls it got, by directory."""
    calls = []

    def fake_execute(ctx, only=None):
        calls.append(ctx.run_dir.name)
        ctx.log.close()
        if only:  # the shared stages
            (ctx.run_dir / "timings.json").write_text("{}")
            (ctx.run_dir / "db").mkdir(exist_ok=True)
            return {}
        target = ctx.profile.search.target
        if target >= 3:
            raise InfeasibleTarget(f"target {target}x: maximum achievable speedup is 2.5x", 1.0, 2.5)
        assert (ctx.run_dir / "db").resolve() == (ctx.run_dir.parent / "shared" / "db").resolve()
        write_result(ctx.run_dir, {
            "target_speedup": target, "predicted_speedup": target + 0.01, "measured_speedup": target - 0.1,
            "dense_baseline": "torch", "layers": [], "loss": {"calibration": 1 / target, "heldout": 1 - target / 10},
            "baselines": {}, "seed": 0, "evaluations": 1, "heldout_metric": "accuracy",
        })
        (ctx.run_dir / "report.md").write_text("# report\n")
        return {}

    monkeypatch.setattr(engine.run.sweep, "execute", fake_execute)
    return calls


def test_an_infeasible_target_is_recorded_and_the_sweep_goes_on(tmp_path, stand_in_runs):
    record = sweep(write_profile(tmp_path), (1.5, 3.0, 2.0), tmp_path / "sweep")
    assert stand_in_runs == ["shared", "target-1.5", "target-2", "target-3"]
    assert [(run["dir"], run["state"]) for run in record["runs"]] == [
        ("target-1.5", "done"), ("target-2", "done"), ("target-3", "infeasible")]
    assert "maximum achievable speedup is 2.5x" in record["runs"][2]["message"]
    assert read_sweep(tmp_path / "sweep") == record and record["metric"] == "accuracy"
    rows = (tmp_path / "sweep" / "tradeoff.md").read_text().splitlines()
    assert "| target-1.5 | **spdy** | 1.5x | 1.510x | 1.400x | 0.6667 | 0.8500 |" in rows
    assert "| target-2 | **spdy** | 2x | 2.010x | 1.900x | 0.5 | 0.8000 |" in rows
    assert not any("target-3" in row for row in rows)


def test_resume_skips_finished_runs_and_adds_new_targets(tmp_path, stand_in_runs):
    profile = write_profile(tmp_path)
    sweep(profile, (1.5,), tmp_path / "sweep")
    with pytest.raises(RunError, match="already exists; add --resume"):
        sweep(profile, (1.5,), tmp_path / "sweep")
    stand_in_runs.clear()
    record = sweep(profile, (2.0,), tmp_path / "sweep", resume=True)
    assert stand_in_runs == ["target-2"]  # neither the shared stages nor the finished run again
    assert record["targets"] == [1.5, 2.0] and [run["state"] for run in record["runs"]] == ["done", "done"]


def test_resume_refuses_a_folder_that_is_not_a_sweep(tmp_path):
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="no sweep.json"):
        sweep(write_profile(tmp_path), (1.5,), tmp_path / "sweep", resume=True)


# ---------------------------------------------------------------------------- end to end on digits
@pytest.mark.slow
def test_digits_sweep_builds_once_runs_each_target_and_resumes_after_an_interruption(tmp_path, monkeypatch):
    profile = write_profile(tmp_path, extra=MAGNITUDE_DATABASE)
    out = tmp_path / "sweep"
    real_execute = engine.run.sweep.execute

    def interrupted_at_target_2(ctx, only=engine.run.pipeline.STAGE_NAMES):
        if ctx.run_dir.name == "target-2":
            ctx.log.close()
            raise KeyboardInterrupt
        return real_execute(ctx, only)

    monkeypatch.setattr(engine.run.sweep, "execute", interrupted_at_target_2)
    first = run_cli("sweep", profile, "--targets", "2,1.5", "--out", out, *FAST)
    assert first.exit_code == Exit.INTERRUPTED, first.output
    assert [run["state"] for run in read_sweep(out)["runs"]] == ["done", "interrupted"]
    finished_log = (out / "target-1.5" / "events.jsonl").read_bytes()

    monkeypatch.setattr(engine.run.sweep, "execute", real_execute)
    resumed = run_cli("sweep", profile, "--targets", "1.5,2", "--out", out, "--resume", "--json", *FAST)
    assert resumed.exit_code == 0, resumed.output
    record = json.loads(resumed.stdout)
    assert [(run["dir"], run["state"]) for run in record["runs"]] == [("target-1.5", "done"), ("target-2", "done")]
    assert (out / "target-1.5" / "events.jsonl").read_bytes() == finished_log  # the finished run was not redone

    logs = {folder.name: list(read_events(folder / "events.jsonl")) for folder in (out / "shared", out / "target-1.5", out / "target-2")}
    built = [(name, e["name"]) for name, events in logs.items() for e in events if e["type"] == "stage" and e["state"] == "started"]
    assert [name for name, stage in built if stage in ("timings", "database")] == ["shared", "shared"]  # made once
    assert sum(e["type"] == "db" for events in logs.values() for e in events) == len(LAYERS) * len(LEVELS)
    for name in ("target-1.5", "target-2"):
        run_dir = out / name
        assert (run_dir / "db").is_symlink() and (run_dir / "timings.json").is_symlink()
        assert (run_dir / "db").resolve() == (out / "shared" / "db").resolve()
        result = json.loads((run_dir / "result.json").read_text())
        assert result["target_speedup"] == float(name.removeprefix("target-")) and result["predicted_speedup"] >= result["target_speedup"]
        assert result["measured_speedup"] > 0
        spdy_row = (f"| {name} | **spdy** | {result['target_speedup']:g}x | {result['predicted_speedup']:.3f}x | "
                    f"{result['measured_speedup']:.3f}x | {result['loss']['calibration']:.4g} | {result['loss']['heldout']:.4f} |")
        assert spdy_row in (out / "tradeoff.md").read_text()
    assert record["metric"] == "accuracy" and "| target-2 | uniform |" in (out / "tradeoff.md").read_text()
    assert (out / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not any(Path(out).rglob("*.tmp"))


def test_a_resume_with_every_run_done_refreshes_the_tradeoff_with_a_later_bench(tmp_path, stand_in_runs):
    profile = write_profile(tmp_path)
    sweep(profile, (1.5,), tmp_path / "sweep")
    assert "onnxruntime" not in (tmp_path / "sweep" / "tradeoff.md").read_text()
    bench = {"rows": [{"runtime": "onnxruntime-int8", "speedup": 2.1, "cosine_mean": 0.99}]}
    (tmp_path / "sweep" / "target-1.5" / "bench.json").write_text(json.dumps(bench))  # `spdy bench` ran since
    stand_in_runs.clear()
    sweep(profile, (1.5,), tmp_path / "sweep", resume=True)
    assert stand_in_runs == []
    rows = (tmp_path / "sweep" / "tradeoff.md").read_text().splitlines()
    assert "| target-1.5 | onnxruntime-int8 | 1.5x | — | 2.100x | — | 0.9900 |" in rows
