"""The closed loop: a measured speedup short of the target tightens the budget and continues the search."""

import json

import pytest

from engine.core.events import EventLog, read_events
from engine.export.result import read_result
from engine.run.context import RunContext
from engine.run.stages import verify as verify_stage

from .test_pipeline import MAGNITUDE_DATABASE, run_cli, write_profile

NO_VERIFY = "verify = false\ntighten_rounds = 3"


def outcome(measured: float, predicted: float) -> dict:
    return {"predicted": predicted, "measured": measured, "dense_seconds": 1.0, "sparse_seconds": 1.0 / measured,
            "dense_spread": 0.0, "sparse_spread": 0.0, "dense_baseline": "torch", "max_abs_difference": 0.0}


@pytest.fixture
def finished(tmp_path):
    out = tmp_path / "run"
    result = run_cli("run", write_profile(tmp_path, target=1.5, extra=MAGNITUDE_DATABASE, export=NO_VERIFY), "--out", out, "--json")
    assert result.exit_code == 0, result.output
    return out


def test_a_short_measurement_tightens_the_target_by_the_shortfall_and_searches_on(finished, monkeypatch):
    measured = iter([1.2, 1.6])
    monkeypatch.setattr(verify_stage, "measure", lambda ctx, result: outcome(next(measured), result["predicted_speedup"]))
    before = read_result(finished)
    with EventLog(finished / "events.jsonl") as log:
        verify_stage.make(RunContext.from_dir(finished, log))
    after = read_result(finished)
    tightened = 1.5 * 1.5 / 1.2
    assert after["closed_loop"] == {
        "rounds": [{"round": 1, "search_target": tightened, "measured": 1.6, "predicted": after["predicted_speedup"]}],
        "search_target": tightened, "promise_met": True, "stopped": None,
    }
    assert after["measured_speedup"] == 1.6 and after["search_target"] == tightened and after["target_speedup"] == 1.5
    assert after["predicted_speedup"] >= tightened
    speeds = [entry["predicted_speedup"] for entry in after["baselines"].values() if entry["predicted_speedup"] is not None]
    assert speeds and min(speeds) >= tightened  # the baselines were computed again, at the same target as SPDY's
    assert after["baselines"] != before["baselines"]
    events = list(read_events(finished / "events.jsonl"))
    tighten = [e for e in events if e["type"] == "tighten"]
    assert [(e["round"], e["target"], e["measured"], e["search_target"]) for e in tighten] == [(1, 1.5, 1.2, tightened)]
    ns = [e["n"] for e in events if e["type"] == "eval"]
    assert ns == sorted(set(ns)) and ns[-1] > before["evaluations"]  # the continuation numbers on
    assert json.loads((finished / "search.json").read_text())["levels"] == [row["level"] for row in after["layers"]]
    shown = run_cli("inspect", finished)  # and the run log's readers show the round
    assert shown.exit_code == 0 and "closed loop round 1: measured 1.200x < target 1.5x, searched on at 1.875x" in shown.stdout
    assert json.loads(run_cli("inspect", finished, "--json").stdout)["tighten"][0]["search_target"] == tightened


def test_a_measurement_within_the_tolerance_changes_nothing(finished, monkeypatch):
    monkeypatch.setattr(verify_stage, "measure", lambda ctx, result: outcome(1.49, result["predicted_speedup"]))
    before = read_result(finished)
    with EventLog(finished / "events.jsonl") as log:
        verify_stage.make(RunContext.from_dir(finished, log))
    after = read_result(finished)
    assert after["layers"] == before["layers"] and after["closed_loop"]["rounds"] == []
    assert after["closed_loop"]["promise_met"] is True and after["measured_speedup"] == 1.49


def test_a_target_beyond_the_table_is_held_at_its_fastest_allocation_then_the_loop_stops(finished, monkeypatch):
    monkeypatch.setattr(verify_stage, "measure", lambda ctx, result: outcome(0.3, result["predicted_speedup"]))
    fastest = RunContext.from_dir(finished).problem().max_speedup * (1 - verify_stage.FASTEST_MARGIN)
    assert 1.5 * 1.5 / 0.3 > fastest  # the shortfall asks for 7.5x, beyond the table
    with EventLog(finished / "events.jsonl") as log:
        verify_stage.make(RunContext.from_dir(finished, log))
    loop = read_result(finished)["closed_loop"]
    assert loop["promise_met"] is False and [row["search_target"] for row in loop["rounds"]] == [fastest]
    assert loop["stopped"] == f"the table's fastest allocation ({fastest:.4f}x) was already searched for"


def test_the_report_lists_the_closed_loops_rounds():
    from engine.export.files import _closed_loop_lines

    assert _closed_loop_lines({"rounds": [], "stopped": None, "promise_met": True}) == []
    loop = {"rounds": [{"round": 1, "search_target": 1.875, "predicted": 1.9, "measured": 1.6}], "stopped": None,
            "promise_met": True}
    assert _closed_loop_lines(loop) == [
        "- Closed loop round 1: searched at 1.875x, predicted 1.900x, measured 1.600x",
        "- Promise met (measured within the tolerance of the target): yes",
    ]
    stopped = {"rounds": [], "stopped": "the table cannot meet the tightened target 7.5000x", "promise_met": False}
    assert _closed_loop_lines(stopped)[-2:] == [
        "- Closed loop stopped: the table cannot meet the tightened target 7.5000x",
        "- Promise met (measured within the tolerance of the target): **no**",
    ]
