"""The last stages of `spdy run`: the final model, its verification, and the exports.

``final`` stitches the searched allocation (optionally fine-tuned by global AdaPrune), measures
its calibration loss and held-out metric, and writes ``final.safetensors`` and ``result.json``;
``verify`` re-measures the speedup end to end with sparse kernels and adds it to
``result.json``; ``export`` writes the files users take away (``engine.export``).
"""

from __future__ import annotations

import copy
import json

from safetensors.torch import load_file, save_file

from engine import atomic
from engine.pipeline import Run
from engine.stages import _read_json, heldout_metric, model_and_data, problem, scorer_for, timing_inputs


def _final_model(run: Run):
    """The dense model with the final weights loaded (from ``final.safetensors``)."""
    if "final_model" not in run.state:
        loaded, _ = model_and_data(run)
        model = copy.deepcopy(loaded.model)
        state = load_file(str(run.run_dir / "final.safetensors"))
        model.load_state_dict(state, strict=False)
        run.state["final_model"] = model.eval()
    return run.state["final_model"]


def done_final(run: Run) -> bool:
    result = _read_json(run.run_dir / "result.json")
    return result is not None and (run.run_dir / "final.safetensors").exists()


def stage_final(run: Run) -> None:
    loaded, data = model_and_data(run)
    levels = run.state["search"]["levels"]
    scorer = scorer_for(run)
    calibration = scorer.loss(levels)
    scorer.stitcher.apply(dict(zip(loaded.layer_names, levels)))
    final = copy.deepcopy(loaded.model)
    scorer.stitcher.restore()
    export = run.profile.export
    if export.gap:
        from engine.gap import global_adaprune

        global_adaprune(
            loaded.model, final, loaded.layer_names, [batch.inputs for batch in data.calibration],
            loaded.run_model,
            passes=export.gap_passes, lr=export.gap_lr,
        )
    state = {name: tensor.detach().contiguous().clone() for name, tensor in final.state_dict().items()}
    save_file(state, str(run.run_dir / "final.safetensors"))
    run.state["final_model"] = final.eval()
    heldout = heldout_metric(run, levels, model=final)
    the_problem = problem(run)
    allocation = the_problem.allocation([the_problem.levels[row].index(level) for row, level in enumerate(levels)])
    table = run.state["table"]
    result = {
        "target_speedup": run.profile.search.target,
        "predicted_speedup": allocation.predicted_speedup,
        "measured_speedup": None,
        "dense_baseline": table.dense_baseline or "as measured in the supplied table",
        "layers": allocation.as_rows(),
        "loss": {"calibration": calibration, "heldout": heldout},
        "heldout_metric": _metric_name(loaded, data),
        "gap": export.gap,
        "baselines": run.state["baselines"],
        "seed": run.profile.run.seed,
        "evaluations": run.state["search"]["evaluations"],
        "budget": the_problem.budget,
        "base_time": table.base,
        "predicted_time": allocation.predicted_time,
    }
    atomic.write_text(run.run_dir / "result.json", json.dumps(result, indent=1))


def _metric_name(loaded, data) -> str:
    return "cosine similarity to dense" if loaded.kind == "encoder" else ("accuracy" if data.has_labels else "agreement with dense")


def load_final(run: Run) -> None:
    _final_model(run)


def done_verify(run: Run) -> bool:
    result = _read_json(run.run_dir / "result.json")
    return bool(result) and (result.get("measured_speedup") is not None or not run.profile.export.verify)


def stage_verify(run: Run) -> None:
    result = _read_json(run.run_dir / "result.json")
    if not run.profile.export.verify:
        return
    loaded, _ = model_and_data(run)
    levels = {row["name"]: row["level"] for row in result["layers"]}
    if run.profile.hardware.backend == "cpu":
        from engine.verify import verify
    else:
        from engine.timing.cuda24 import verify_cuda24 as verify
    outcome = verify(loaded, _final_model(run), levels, timing_inputs(run), run.state["table"], run.profile.hardware, result["predicted_speedup"])
    run.log.emit("verify", **outcome)
    result["measured_speedup"] = outcome["measured"]
    result["verify"] = outcome
    atomic.write_text(run.run_dir / "result.json", json.dumps(result, indent=1))


def load_verify(run: Run) -> None:
    pass


def done_export(run: Run) -> bool:
    return (run.run_dir / "report.md").exists()


def stage_export(run: Run) -> None:
    from engine import export
    from engine.environment import describe_environment
    from engine.events import read_events

    result = export.read_result(run.run_dir)
    export.write_profile_txt(run.run_dir, result["layers"])
    export.write_recipe(run.run_dir, result["layers"])
    export.write_torchao_config(run.run_dir, result["layers"])
    if run.profile.export.weights:
        allocation = {row["name"]: row["level"] for row in result["layers"]}
        export.write_pruned_weights(run.run_dir, _final_model(run), {"allocation": allocation})
    evaluations = [
        (event["n"], event["loss"], event["best"]) for event in read_events(run.run_dir / "events.jsonl") if event["type"] == "eval"
    ]
    export.write_report(run.run_dir, result, evaluations, describe_environment())


def load_export(run: Run) -> None:
    pass
