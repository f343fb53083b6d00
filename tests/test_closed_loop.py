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


def finished_run(tmp_path, export: str):
    """A finished digits run at 1.5x with the [export] keys ``export`` (verify off: the tests measure)."""
    out = tmp_path / "run"
    result = run_cli("run", write_profile(tmp_path, target=1.5, extra=MAGNITUDE_DATABASE, export=export), "--out", out, "--json")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def finished(tmp_path):
    return finished_run(tmp_path, NO_VERIFY)


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


RELAX = NO_VERIFY + "\nrelax = true"


@pytest.fixture
def relaxing(tmp_path):
    return finished_run(tmp_path, RELAX)


def verify_with(run_dir, monkeypatch, measurements):
    measured = iter(measurements)
    monkeypatch.setattr(verify_stage, "measure", lambda ctx, result: outcome(next(measured), result["predicted_speedup"]))
    with EventLog(run_dir / "events.jsonl") as log:
        verify_stage.make(RunContext.from_dir(run_dir, log))
    return read_result(run_dir), [e for e in read_events(run_dir / "events.jsonl") if e["type"] in ("relax", "final", "verify")]


def test_a_surplus_is_spent_on_a_search_at_the_lowered_target_and_kept_when_it_still_meets_it(relaxing, monkeypatch):
    before = read_result(relaxing)
    after, events = verify_with(relaxing, monkeypatch, [2.4, 1.55])
    lowered = 1 / (1 - (1 - 1 / (1.5 * 1.02)) / ((1 - 1 / 2.4) / (1 - 1 / 1.5)))  # the time saved scaled by 7/4
    assert lowered == pytest.approx(1.246799, abs=1e-6)
    assert after["closed_loop"]["relaxed"] == {"search_target": lowered, "measured": 1.55,
                                               "predicted": after["predicted_speedup"], "kept": True}
    assert after["closed_loop"]["search_target"] == lowered and after["closed_loop"]["promise_met"] is True
    assert after["measured_speedup"] == 1.55 and after["search_target"] == lowered
    assert lowered <= after["predicted_speedup"] < before["predicted_speedup"]
    assert after["loss"]["calibration"] <= before["loss"]["calibration"]  # a looser budget: no more loss
    speeds = [entry["predicted_speedup"] for entry in after["baselines"].values() if entry["predicted_speedup"] is not None]
    assert speeds and min(speeds) >= lowered  # the baselines, computed again at the same target as SPDY's
    logged = [e["type"] for e in read_events(relaxing / "events.jsonl")]
    assert "baseline" in logged[max(i for i, kind in enumerate(logged) if kind == "relax"):]
    relax = [(e["outcome"], e["measured"]) for e in events if e["type"] == "relax"]
    assert relax == [("searching", 2.4), ("kept", 1.55)]
    assert not (relaxing / "closed-loop-aside").exists()
    shown = run_cli("inspect", relaxing)
    assert f"searching at {lowered:.3f}x to spend it on quality" in shown.stdout and "measured 1.550x: kept" in shown.stdout


def test_a_relaxed_model_short_of_the_target_is_dropped_and_the_faster_one_restored(relaxing, monkeypatch):
    before = read_result(relaxing)
    files = {name: (relaxing / name).read_bytes() for name in ("search.json", "final.safetensors")}
    after, events = verify_with(relaxing, monkeypatch, [1.8, 1.4])
    assert after["closed_loop"]["relaxed"]["kept"] is False and after["closed_loop"]["promise_met"] is True
    assert after["measured_speedup"] == 1.8 and after["layers"] == before["layers"] and after["loss"] == before["loss"]
    assert after["baselines"] == before["baselines"] and after["closed_loop"]["search_target"] == 1.5
    assert {name: (relaxing / name).read_bytes() for name in files} == files
    assert [e["outcome"] for e in events if e["type"] == "relax"] == ["searching", "restored"]
    last_final, last_verify = [e for e in events if e["type"] == "final"][-1], [e for e in events if e["type"] == "verify"][-1]
    assert last_final["loss"] == before["loss"]["calibration"] and last_verify["measured"] == 1.8  # the kept model again
    assert not (relaxing / "closed-loop-aside").exists()


def test_without_relax_a_surplus_is_only_recorded(finished, monkeypatch):
    before = read_result(finished)
    after, events = verify_with(finished, monkeypatch, [1.8])
    assert after["layers"] == before["layers"] and "relaxed" not in after["closed_loop"]
    assert after["measured_speedup"] == 1.8 and not [e for e in events if e["type"] == "relax"]


def test_the_report_says_whether_the_surplus_was_kept():
    from engine.export.files import _closed_loop_lines

    loop = {"rounds": [], "stopped": None, "promise_met": True,
            "relaxed": {"search_target": 1.25, "predicted": 1.26, "measured": 1.55, "kept": True}}
    assert _closed_loop_lines(loop)[0] == "- Closed loop spent the surplus: searched at 1.250x, predicted 1.260x, measured 1.550x: kept"


def test_the_lowered_target_scales_the_time_saved():
    # 1.5x searched, 1.758x measured: 29% more time saved than predicted; aim at 1.5 * 1.027
    lowered = verify_stage.lowered_target(1.5, 1.5, 1.758, 0.027)
    assert lowered == pytest.approx(1 / (1 - (1 - 1 / 1.5405) / ((1 - 1 / 1.758) / (1 - 1 / 1.5))), rel=1e-12)
    assert 1.37 < lowered < 1.38
    assert verify_stage.lowered_target(1.5, 1.5, 1.5, 0.0) == pytest.approx(1.5)  # no surplus: no change
    assert verify_stage.lowered_target(1.5, 1.0, 1.6, 0.0) != verify_stage.lowered_target(1.5, 1.0, 1.6, 0.0)  # NaN


def test_no_room_below_the_searched_target_is_recorded_without_a_search(monkeypatch, tmp_path):
    from types import SimpleNamespace

    ctx = SimpleNamespace(profile=SimpleNamespace(export=SimpleNamespace(tighten_tolerance=0.02)))
    before = outcome(1.8, 1.0)
    record, kept = verify_stage.relax(ctx, 1.5, 1.0, before)  # a search target of 1x predicted no time saved
    assert record == {"search_target": None, "kept": False, "skipped": "no room below the searched target"} and kept is before
