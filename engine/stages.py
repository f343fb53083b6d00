"""The stages of `spdy run`, each a triple: ``done_<stage>`` (is its product valid?),
``stage_<stage>`` (make it) and ``load_<stage>`` (read it back for later stages).

Products in the run directory: ``timings.json``, ``db/``, ``search.json``, ``baselines.json``,
``result.json`` (final, then verified), and the exports (see ``engine.export``).
"""

from __future__ import annotations

import json
import math

import torch

from engine import atomic, baselines
from engine.budget import Allocation, make_problem
from engine.pipeline import Run, finite, logged_evaluations
from engine.search import Search, SearchSettings, allocation_key
from engine.timing.table import TableError, load_table, save_table


# ---------------------------------------------------------------------------- shared state
def model_and_data(run: Run):
    """The model (with its traced layers) and data, loaded once per process."""
    if "loaded" not in run.state:
        from engine.models import load

        run.state["loaded"], run.state["data"] = load(run.profile)
    return run.state["loaded"], run.state["data"]


def stitcher(run: Run):
    """The run's one Stitcher, created while the model is still dense.

    Every stitching in the main process goes through it, so no second stitcher ever mistakes
    another's stitched weights for the dense ones; callers ``restore()`` when they are done."""
    if "stitcher" not in run.state:
        from engine.database import Stitcher

        loaded, _ = model_and_data(run)
        run.state["stitcher"] = Stitcher(loaded.model, loaded.layer_names, run.state["db"])
    return run.state["stitcher"]


def timing_inputs(run: Run):
    """``hardware.batch_size`` real calibration samples: the batch the speedup is promised for.

    Taken from the calibration batches in order (repeated if there are fewer samples)."""
    _, data = model_and_data(run)
    wanted = run.profile.hardware.batch_size
    parts = [batch.inputs for batch in data.calibration]
    while sum(_samples(part) for part in parts) < wanted:
        parts = parts + parts
    if isinstance(parts[0], dict):
        return {key: torch.cat([part[key] for part in parts])[:wanted] for key in parts[0]}
    return torch.cat(parts)[:wanted]


def _samples(inputs) -> int:
    return int(next(iter(inputs.values())).shape[0] if isinstance(inputs, dict) else inputs.shape[0])


def _read_json(path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


# ---------------------------------------------------------------------------- timings
def done_timings(run: Run) -> bool:
    path = run.run_dir / "timings.json"
    if not path.exists():
        return False
    try:
        table = load_table(path)
    except TableError:
        return False
    if run.profile.hardware.timings:
        return table.environment.get("source") == run.profile.hardware.timings
    from engine.environment import describe_environment
    from engine.timing.cpu import timing_fingerprint

    shapes = {layer.name: list(layer.input_shape) for layer in timed_layers(run)}
    expected = timing_fingerprint(describe_environment(), run.profile.hardware, shapes, run.profile.levels())
    return table.environment.get("fingerprint") == expected


def timed_layers(run: Run):
    """Layers with the input shapes of the timing batch (hardware.batch_size samples)."""
    from engine.models import trace_layers

    loaded, _ = model_and_data(run)
    if "timed_layers" not in run.state:
        traced = {layer.name: layer for layer in trace_layers(loaded, timing_inputs(run))}
        run.state["timed_layers"] = [traced[layer.name] for layer in loaded.layers]
    return run.state["timed_layers"]


def stage_timings(run: Run) -> None:
    loaded, _ = model_and_data(run)
    hardware = run.profile.hardware
    if hardware.timings:
        table = load_table(hardware.timings)
        missing = [name for name in loaded.layer_names if name not in table.names]
        if missing:
            raise TableError(f"{hardware.timings}: no timings for layer(s) {', '.join(missing[:5])}")
        table.environment["source"] = hardware.timings
    elif hardware.backend == "cpu":
        from engine.timing.cpu import profile_cpu

        def progress(layer, level, seconds, done, total):
            run.log.emit("timing", layer=layer, level=level, seconds=seconds, done=done, total=total)

        table = profile_cpu(loaded, timing_inputs(run), timed_layers(run), run.profile.levels(), hardware, progress, seed=run.profile.run.seed)
    else:
        from engine.timing.cuda24 import profile_cuda24

        table = profile_cuda24(loaded, timing_inputs(run), timed_layers(run), hardware, run.log)
    save_table(table, run.run_dir / "timings.json")
    run.state["table"] = table
    check_target(run)


def load_timings(run: Run) -> None:
    run.state["table"] = load_table(run.run_dir / "timings.json")
    check_target(run)


def check_target(run: Run) -> None:
    """Fail before the (long) database build if the measured table cannot meet the target."""
    problem(run).solve(None, run.profile.search.buckets)


# ---------------------------------------------------------------------------- database
def done_database(run: Run) -> bool:
    from engine.database import Database

    loaded, _ = model_and_data(run)
    return Database.is_complete(run.run_dir / "db", loaded.layer_names, run.profile.levels(), run.profile.database)


def stage_database(run: Run) -> None:
    from engine.database import build_database

    loaded, data = model_and_data(run)

    def progress(layer, level, error, done, total):
        run.log.emit("db", layer=layer, level=level, error=error, done=done, total=total)

    build_database(
        loaded, [batch.inputs for batch in data.calibration], loaded.layers, run.profile.levels(),
        run.profile.database, run.run_dir / "db", on_progress=progress, seed=run.profile.run.seed,
    )
    load_database(run)


def load_database(run: Run) -> None:
    from engine.database import Database

    run.state["db"] = Database.open(run.run_dir / "db")


# ---------------------------------------------------------------------------- search
def problem(run: Run):
    table = run.state["table"]
    loaded, _ = model_and_data(run)
    if table.names != loaded.layer_names:
        table = table.subset(loaded.layer_names)
    return make_problem(table, run.profile.search.target, run.profile.search.skip)


def scorer_for(run: Run):
    from engine.data import trimmed_by_length
    from engine.losses import loss_function
    from engine.scoring import ModelScorer

    loaded, data = model_and_data(run)
    search = run.profile.search
    loss_fn = loss_function(search.loss, loaded.kind, data.has_labels)
    batches = trimmed_by_length(data.calibration) if run.profile.data.trim_padding else data.calibration
    return ModelScorer(
        loaded, batches, loss_fn, stitcher(run), loaded.layer_names, search.early_abandon, search.reuse_activations
    )


def done_search(run: Run) -> bool:
    return _read_json(run.run_dir / "search.json") is not None


def stage_search(run: Run) -> None:
    settings_in = run.profile.search
    the_problem = problem(run)
    logged = logged_evaluations(run.run_dir)
    replay = {event["key"]: (math.inf if event["loss"] is None else event["loss"]) for event in logged if "key" in event}
    already = len(logged)
    settings = SearchSettings(
        settings_in.random_inits, settings_in.window, settings_in.layer_fraction, settings_in.buckets,
        batch=settings_in.workers, seed=run.profile.run.seed,
    )

    def on_evaluation(event):
        if event.n <= already:
            return  # replayed from the log of an interrupted run
        run.log.emit(
            "eval", n=event.n, phase=event.phase, k=event.k, loss=finite(event.loss), best=finite(event.best),
            accepted=event.accepted, predicted_speedup=event.predicted_speedup, key=allocation_key(event.levels),
            levels=event.levels,
        )
        if event.accepted:
            table = the_problem.table
            times = [layer.seconds_at(level) for layer, level in zip(table.layers, event.levels)]
            run.log.emit(
                "best", n=event.n, loss=event.loss, levels=event.levels, names=table.names, times=times,
                budget=the_problem.budget, predicted_speedup=event.predicted_speedup,
            )

    if settings_in.workers > 1:
        from engine.pool import PooledScorer
        from engine.workers import build_scorer

        scorer = PooledScorer(build_scorer, (str(run.run_dir),), settings_in.workers, max(1, run.profile.hardware.threads // settings_in.workers))
    else:
        scorer = scorer_for(run)
    try:
        result = Search(the_problem, scorer, settings, on_evaluation, replay).run()
    finally:
        if hasattr(scorer, "close"):
            scorer.close()
        else:
            scorer.stitcher.restore()
    record = {
        "coefficients": result.coefficients.tolist(),
        "levels": result.allocation.levels,
        "loss": result.loss,
        "evaluations": result.evaluations,
        "predicted_speedup": result.allocation.predicted_speedup,
    }
    atomic.write_text(run.run_dir / "search.json", json.dumps(record, indent=1))
    run.state["search"] = record


def load_search(run: Run) -> None:
    run.state["search"] = _read_json(run.run_dir / "search.json")


# ---------------------------------------------------------------------------- baselines
def done_baselines(run: Run) -> bool:
    return _read_json(run.run_dir / "baselines.json") is not None


def _allocation_for(run: Run, name: str, the_problem) -> Allocation:
    if name == "uniform":
        return baselines.uniform(the_problem)
    if name == "prior":
        return baselines.prior(the_problem, run.profile.search.buckets)
    if name == "squared-error":
        return baselines.squared_error(the_problem, run.state["db"].errors(), run.profile.search.buckets)
    loaded, _ = model_and_data(run)
    weights = {layer: loaded.model.get_submodule(layer).weight.detach() for layer in loaded.layer_names}
    return baselines.global_magnitude(the_problem, weights)


def stage_baselines(run: Run) -> None:
    from engine.dp import InfeasibleTarget

    the_problem = problem(run)
    scorer = scorer_for(run)
    records = {}
    for name in run.profile.search.baselines:
        try:
            allocation = _allocation_for(run, name, the_problem)
        except InfeasibleTarget as exc:
            records[name] = {"error": str(exc), "predicted_speedup": None, "loss": {"calibration": None, "heldout": None}}
            continue
        calibration = scorer.loss(allocation.levels)
        heldout = heldout_metric(run, allocation.levels)
        records[name] = {
            "levels": allocation.levels, "predicted_speedup": allocation.predicted_speedup,
            "loss": {"calibration": calibration, "heldout": heldout},
        }
        run.log.emit("baseline", name=name, loss=calibration, heldout=heldout, predicted_speedup=allocation.predicted_speedup)
    scorer.stitcher.restore()
    atomic.write_text(run.run_dir / "baselines.json", json.dumps(records, indent=1))
    run.state["baselines"] = records


def load_baselines(run: Run) -> None:
    run.state["baselines"] = _read_json(run.run_dir / "baselines.json")


def heldout_metric(run: Run, levels: list[str], model=None) -> float:
    """The held-out metric of the model at ``levels`` (or of ``model``): mean cosine similarity to
    the dense embeddings for encoders, top-1 accuracy (or agreement with dense) for classifiers."""
    from engine.losses import heldout_metrics, primary_metric

    loaded, data = model_and_data(run)
    if not data.heldout:
        return float("nan")
    shared = stitcher(run)
    shared.restore()

    def outputs(candidate):
        with torch.no_grad():
            return torch.cat([loaded.run_model(candidate, batch.inputs) for batch in data.heldout])

    if "heldout_dense" not in run.state:
        run.state["heldout_dense"] = outputs(loaded.model)
    labels = torch.cat([batch.labels for batch in data.heldout]) if data.has_labels else None
    if model is None:
        shared.apply(dict(zip(loaded.layer_names, levels)))
        candidate = outputs(loaded.model)
        shared.restore()
    else:
        candidate = outputs(model)
    return primary_metric(heldout_metrics(loaded.kind, candidate, run.state["heldout_dense"], labels))
