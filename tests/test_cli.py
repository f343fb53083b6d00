import json
import subprocess
import sys

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
