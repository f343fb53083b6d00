import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spdy_tui.cli import Exit, app

from .conftest import TABLES

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("table", sorted(TABLES.glob("*.txt")), ids=lambda p: p.stem)
@pytest.mark.parametrize("target", [1.5, 2.0, 3.0])
def test_solve_every_shipped_table(table, target):
    result = invoke("solve", "--timings", table, "--target", target, "--json")
    if result.exit_code == Exit.INFEASIBLE:  # only where the table cannot reach the target
        maximum = float(result.output.split("maximum achievable speedup is ")[1].split("x")[0])
        assert maximum < target and (target == 3.0 or table.stem == "yolov5s_unstr")  # yolov5s tops out at 1.97x
        return
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["predicted_time"] <= data["base_time"] / target
    assert data["predicted_speedup"] >= target
    assert len(data["layers"]) == len(set(row["name"] for row in data["layers"]))


def test_solve_resnet50_with_skips_meets_target():
    result = invoke("solve", "--timings", TABLES / "rn50_unstr.txt", "--target", 2, "--skip", "conv1", "--skip", "fc", "--json")
    data = json.loads(result.stdout)
    assert data["predicted_speedup"] >= 2.0
    rows = {row["name"]: row for row in data["layers"]}
    assert rows["conv1"]["level"] == "0.0000" and rows["fc"]["level"] == "0.0000"
    total = data["base_time"] - data["prunable_time"] + sum(row["time"] for row in data["layers"])
    assert total == pytest.approx(data["predicted_time"], abs=1e-12)


def test_solve_table_output_and_infeasible_exit_code():
    result = invoke("solve", "--timings", TABLES / "rn18_unstr.txt", "--target", 1.5)
    assert result.exit_code == 0 and "predicted" in result.stdout
    result = invoke("solve", "--timings", TABLES / "yolov5s_unstr.txt", "--target", 3)
    assert result.exit_code == Exit.INFEASIBLE and "1.97" in result.output


def test_solve_bad_input(tmp_path):
    assert invoke("solve", "--timings", tmp_path / "x.txt", "--target", 2).exit_code == Exit.BAD_INPUT
    bad = tmp_path / "bad.txt"
    bad.write_text("base\n1\nprunable\n1\nl1\n0.1 zero\n")
    result = invoke("solve", "--timings", bad, "--target", 2)
    assert result.exit_code == Exit.BAD_INPUT and "bad.txt:6" in result.output and "Traceback" not in result.output
    result = invoke("solve", "--timings", TABLES / "rn18_unstr.txt", "--target", 2, "--skip", "nope")
    assert result.exit_code == Exit.BAD_INPUT and "nope" in result.output


def test_solve_with_cost_file(tmp_path):
    table = TABLES / "rn18_unstr.txt"
    base = json.loads(invoke("solve", "--timings", table, "--target", 2, "--json").stdout)
    names = [row["name"] for row in base["layers"]]
    # make the first layer free to prune and every other one expensive: the first layer goes sparsest
    costs = {name: [0.0] + [0.0 if k == 0 else 10.0] * 41 for k, name in enumerate(names)}
    (tmp_path / "c.json").write_text(json.dumps(costs))
    data = json.loads(invoke("solve", "--timings", table, "--target", 2, "--costs", tmp_path / "c.json", "--json").stdout)
    assert data["layers"][0]["level"] != "0.0000"
    (tmp_path / "short.json").write_text(json.dumps({names[0]: [0.0]}))
    assert invoke("solve", "--timings", table, "--target", 2, "--costs", tmp_path / "short.json").exit_code == Exit.BAD_INPUT


def test_check(tmp_path):
    assert invoke("check", "profiles/minilm-cpu.toml").exit_code == 0
    bad = tmp_path / "bad.toml"
    bad.write_text("[search]\ntarget = -1\n")
    result = invoke("check", bad)
    assert result.exit_code == Exit.BAD_INPUT and "search.target" in result.output and "Traceback" not in result.output


def test_env_json():
    data = json.loads(invoke("env", "--json").stdout)
    assert {"python", "torch", "numba", "textual", "cpu", "isa", "torch_threads", "gpu"} <= set(data)


def test_console_scripts_answer_help():
    for script in ("spdy", "spdy-tui"):
        done = subprocess.run([sys.executable, "-c", f"import sys; from importlib.metadata import entry_points; "
                               f"ep = [e for e in entry_points(group='console_scripts') if e.name == '{script}'][0]; "
                               f"sys.argv = ['{script}', '--help']; ep.load()()"], capture_output=True, text=True)
        assert done.returncode == 0 and "usage" in done.stdout.lower(), done.stderr


# ---------------------------------------------------------------------------- markup: user text printed as written
def test_markup_in_names_and_paths_prints_as_written(tmp_path):
    from engine.timing.table import LayerTimes, TimingTable, save_table

    folder = tmp_path / "[bold]" / "[" / "x]tables"
    (folder / "[").mkdir(parents=True)
    levels = ("0.0000", "0.5000", "0.9000")
    rows = [LayerTimes(name, levels, (0.01, 0.006, 0.003)) for name in ("[/x]first", "second[red]")]
    save_table(TimingTable(base=0.03, prunable=0.02, layers=rows, backend="fixture"), folder / "[" / "y].json")
    result = invoke("solve", "--timings", folder / "[" / "y].json", "--target", 1.2)
    assert result.exit_code == 0, result.output
    assert "[/x]first" in result.stdout and "second[red]" in result.stdout and "y].json at 1.2x" in result.stdout
    missing = invoke("check", folder / "[/z].toml")
    assert missing.exit_code == Exit.BAD_INPUT and f"{folder}/[/z].toml: no such profile file" in missing.output
    unknown = tmp_path / "p.toml"
    unknown.write_text("[serach]\n")
    assert "unknown section [serach]" in invoke("check", unknown).output


# ---------------------------------------------------------------------------- check and layers
def fake_plan(*layers):
    from types import SimpleNamespace

    return SimpleNamespace(
        layers=[SimpleNamespace(name=name, kind=kind, weight_shape=shape) for name, kind, shape in layers],
        levels=["0.0000", "0.5000", "0.9000"], skipped=["fc[/x]"], cells=6, database_bytes=3 * 2**20,
        estimated_seconds={"timings": 30.0, "database": 600.0, "search": 7200.0}, notes=["a note [/n]"],
    )


PLAN_LAYERS = (("conv1", "conv2d", (16, 1, 3, 3)), ("fc[/x]", "linear", (10, 512)))


def test_check_prints_the_resolved_profile_then_the_plan(tmp_path, monkeypatch):
    import engine.run.plan

    seen = []
    monkeypatch.setattr(engine.run.plan, "plan_run", lambda profile: seen.append(profile) or fake_plan(*PLAN_LAYERS))
    profile = tmp_path / "p.toml"
    profile.write_text('[model]\nsource = "digits"\n[data]\nsource = "digits"\npath = "here.txt"\n')
    result = invoke("check", profile, "--set", "search.target=2", "--set", "run.name=demo", "--set", "model.path=data/w.pth")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert text.index("[search]") < text.index("# what the run will do")
    assert "target = 2.0" in text and 'name = "demo"' in text
    assert "#   conv1   16 x 1 x 3 x 3  conv2d" in text and "fc[/x]" in text and "(kept dense)" in text
    assert "6 (layer, level) cells, about 3.0 MiB on disk" in text
    assert "timings 30 s, database 10.0 min, search 2.0 h; total about 2.2 h" in text and "note: a note [/n]" in text
    resolved = seen[0]
    assert resolved.search.target == 2.0 and resolved.run.name == "demo"
    assert resolved.data.path == str((tmp_path / "here.txt").resolve())  # the file's paths: against its folder
    assert resolved.model.path == str((Path.cwd() / "data" / "w.pth").resolve())  # --set paths: against the working directory
    import tomllib

    assert tomllib.loads(text)["search"]["target"] == 2.0  # stdout stays a TOML file
    data = json.loads(invoke("check", profile, "--set", "search.target=2", "--json").stdout)
    assert data["valid"] and data["resolved"]["search"]["target"] == 2.0 and data["plan"]["cells"] == 6
    assert data["plan"]["layers"][1] == {"name": "fc[/x]", "kind": "linear", "weight_shape": [10, 512]}


def test_layers_lists_name_kind_and_shape(monkeypatch):
    import engine.run.plan

    monkeypatch.setattr(engine.run.plan, "plan_run", lambda profile: fake_plan(*PLAN_LAYERS))
    result = invoke("layers", "profiles/digits-cpu.toml")
    assert result.exit_code == 0 and "fc[/x]" in result.stdout and "16 x 1 x 3 x 3" in result.stdout
    data = json.loads(invoke("layers", "profiles/digits-cpu.toml", "--json").stdout)
    assert data[0] == {"name": "conv1", "kind": "conv2d", "weight_shape": [16, 1, 3, 3], "kept_dense": False}
    assert data[1]["kept_dense"] is True


def test_check_and_layers_on_the_digits_profile():
    result = invoke("check", "profiles/digits-cpu.toml", "--set", 'search.skip=["fc3"]', "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)["plan"]
    assert [layer["name"] for layer in plan["layers"]] == ["conv1", "fc1", "fc2", "fc3"] and plan["skipped"] == ["fc3"]
    assert plan["cells"] > 0 and plan["database_bytes"] > 0 and set(plan["estimated_seconds"]) >= {"timings", "database", "search"}
    layers = json.loads(invoke("layers", "profiles/digits-cpu.toml", "--json").stdout)
    assert layers[1] == {"name": "fc1", "kind": "linear", "weight_shape": [2048, 1024], "kept_dense": False}


def test_set_overrides_are_what_the_run_directory_saves(tmp_path):
    from .test_pipeline import write_profile

    profile = write_profile(tmp_path)
    out = tmp_path / "run"
    result = invoke("timings", profile, "--out", out, "--set", "run.seed=7", "--set", "search.target=2", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["files"] == [str(out / "timings.json")] and len(data["table"]["layers"]) == 4
    saved = (out / "profile.toml").read_text()
    assert "seed = 7" in saved and "target = 2.0" in saved
    again = invoke("timings", profile, "--out", out, "--resume")  # without the overrides: another profile
    assert again.exit_code == Exit.BAD_INPUT and "differs" in again.output
    assert invoke("timings", profile, "--out", out, "--resume", "--set", "run.seed=7", "--set", "search.target=2").exit_code == 0


def test_out_naming_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("")
    result = invoke("run", "profiles/digits-cpu.toml", "--out", tmp_path / "f")
    assert result.exit_code == Exit.BAD_INPUT and str(tmp_path / "f") in result.output and "Traceback" not in result.output


def test_inspect_a_run_at_a_path_with_markup(tmp_path):
    from engine.core.events import EventLog

    run_dir = tmp_path / "[" / "x]run"
    run_dir.mkdir(parents=True)
    with EventLog(run_dir / "events.jsonl") as log:
        log.emit("run_started", profile={}, seed=0, resume=False, environment={})
        log.emit("stage", name="timings", state="started")
        log.emit("error", message="layer [/y] failed")
    result = invoke("inspect", run_dir)
    assert result.exit_code == 0, result.output
    assert "[/x]run" in result.stdout and "layer [/y] failed" in result.stdout and "stages: timings" in result.stdout


def test_verify_threads_overrides_the_runs_hardware_threads(tmp_path, monkeypatch):
    import engine.export.result
    from engine.core.profile import load_profile
    from engine.core.profile_toml import to_toml
    from engine.run.stages import verify as verify_stage

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "profile.toml").write_text(to_toml(load_profile("profiles/digits-cpu.toml")))  # hardware.threads = 1
    (run_dir / "result.json").write_text("{}")
    outcome = {"predicted": 2.0, "measured": 1.9, "dense_seconds": 0.016, "sparse_seconds": 0.008, "dense_baseline": "onednn"}
    seen = []
    monkeypatch.setattr(verify_stage, "remeasure", lambda ctx: seen.append(ctx.profile.hardware.threads))
    monkeypatch.setattr(engine.export.result, "read_result", lambda path: {"verify": outcome})
    result = invoke("verify", run_dir, "--threads", 3, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == outcome
    assert invoke("verify", run_dir).exit_code == 0
    assert seen == [3, 1]
