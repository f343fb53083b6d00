"""`spdy finetune`: gradual magnitude pruning (GMP) to a finished run's allocation, with fine-tuning.

Starting from the dense model, every pruned layer goes from its initial sparsity to its
allocated level on the cubic schedule of ``engine.export.schedule`` (the schedule ``recipe.yaml``
describes), its mask recomputed by magnitude at the start of every update epoch and enforced
around every optimiser step (``engine.recovery.gmp``); training continues with the final masks until
``num_epochs``.  The last update leaves every layer with exactly round(numel * s) zeros.

The training loss, by model kind (``engine.model.losses``; ``--loss`` overrides it):

    classifier with labels   cross-entropy     L = 1/N sum_i -log softmax(c_i)[y_i]
    encoder                  distillation      L = 1/N sum_i 1 - cos(c_i, d_i)   (or mse)
    classifier, no labels    distillation      L = 1/N sum_i KL(softmax(d_i) || softmax(c_i))

with c_i the pruned model's output, d_i the dense model's (computed once, ``teacher.safetensors``)
and y_i the label.  Training data (``engine.recovery.training_data``): the digits ``train`` split,
the text corpus without the held-out samples, or ``--data FILE``, plus for text ``--add-docstrings``
sentences.  Batches are drawn in an order seeded by (run.seed, epoch) (sentences of about one length
together, ``training_data.epoch_batches``, unless ``--no-group-by-length``), and dropout is seeded the
same way, so an epoch re-run after a resume is the epoch an uninterrupted run would have run.

Products, in ``RUN_DIR/finetune/`` (``finetune-<name>/`` for a baseline's allocation):

    state.json, checkpoint-NNNN/   progress after every epoch (``engine.recovery.checkpoint``)
    teacher.safetensors            the dense model's outputs on the training data (distillation)
    pruned.safetensors             the fine-tuned weights, exact zeros, loadable in plain PyTorch
    recipe.yaml                    the SparseML recipe of exactly this schedule
    result.json                    held-out metrics (gradual vs one-shot) and the measured speedup

and ``finetune`` events in the run's ``events.jsonl``.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.recovery import checkpoint, hidden
from engine.recovery.step import batch_loss, train_step
from engine.core.profile import ProfileError, load_profile
from engine.model.data import DataError
from engine.core.events import EventLog
from engine.export.result import ResultError, finite, read_json_object, write_json
from engine.recovery.gmp import one_shot_magnitude
from engine.core.grid import is_int8, level_sparsity, parse_nm
from engine.model.losses import primary_metric, resolve_loss
from engine.core.environment import cpu_flags
from engine.core.errors import RunError
from engine.run.context import RunContext
from engine.export.schedule import GMPSchedule
from engine.recovery.settings import (
    DISTILLATION_LOSSES, STEP_EVENTS_PER_EPOCH, Options, autocast, check_precision, learning_rate, resolve, schedule_of,
)
from engine.recovery.training_data import epoch_batches, heldout, model_outputs, teacher_outputs, training_set

@dataclass
class Finetune:
    """An opened fine-tuning: the run it belongs to, its output folder and resolved settings."""

    run: RunContext
    out: Path
    settings: dict  # every Options field resolved (threads included)
    schedule: GMPSchedule | None  # the GMP schedule of a gradual start; None for a one-shot start
    rows: list[dict]  # the allocation: {"name", "level", "time"} per layer, in execution order
    predicted_speedup: float
    run_heldout: float | None  # the run's own one-shot held-out metric of this allocation
    state: dict | None  # state.json when continuing
    epochs_done: int = 0  # epochs with a checkpoint on disk
    verify: bool = True  # re-measure the speedup at the end (default: the profile's export.verify)
    target_speedup: float | None = None  # the run's target, as its result.json says

    @property
    def plan(self) -> dict | None:
        """The schedule as recorded (state.json, result.json, events): None for a one-shot start."""
        return self.schedule.as_dict() if self.schedule else None

    @property
    def epochs(self) -> int:
        return int(self.settings["epochs"])

    @property
    def levels(self) -> dict[str, str]:
        return {row["name"]: row["level"] for row in self.rows}


# ---------------------------------------------------------------------------- opening
def _allocation(result: dict, name: str, path: Path) -> tuple[list[dict], float, float | None]:
    """(rows, predicted speedup, the run's held-out metric) of ``spdy`` or a baseline in result.json."""
    layers = result.get("layers")
    if not isinstance(layers, list) or not all(isinstance(row, dict) and {"name", "level"} <= row.keys() for row in layers):
        raise RunError(f"{path}: 'layers' must list {{name, level}} per layer")
    heldout = (result.get("loss") or {}).get("heldout")
    if name == "spdy":
        rows, predicted = layers, result.get("predicted_speedup")
    else:
        baselines = result.get("baselines") or {}
        if name not in baselines:
            choices = ", ".join(["spdy", *baselines]) or "spdy"
            raise RunError(f"{path}: no allocation {name!r} (choose one of {choices})")
        entry = baselines[name]
        if entry.get("error") or not isinstance(entry.get("levels"), list):
            raise RunError(f"{path}: baseline {name!r} has no allocation ({entry.get('error', 'no levels')})")
        if len(entry["levels"]) != len(layers):
            raise RunError(f"{path}: baseline {name!r} lists {len(entry['levels'])} levels for {len(layers)} layers")
        rows = [{"name": row["name"], "level": level} for row, level in zip(layers, entry["levels"])]
        predicted, heldout = entry.get("predicted_speedup"), (entry.get("loss") or {}).get("heldout")
    for row in rows:
        try:
            level_sparsity(row["level"])
        except ValueError as exc:
            raise RunError(f"{path}: layer {row['name']}: {exc}") from None
    return [dict(row) for row in rows], predicted, heldout


def _describe(state: dict) -> str:
    return "finished" if state.get("done") else f"stopped after epoch {state['epoch']} of {state.get('settings', {}).get('epochs', '?')}"


def open_finetune(run_dir: str | Path, options: Options = Options(), out: str | Path | None = None,
                  resume: bool = False, listener=None, verify: bool | None = None) -> Finetune:
    """Check a finished run directory and open (or, with ``resume``, reopen) its fine-tuning."""
    run_dir = Path(run_dir)
    result_path, profile_path = run_dir / "result.json", run_dir / "profile.toml"
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run directory")
    if not result_path.exists():
        raise RunError(f"{result_path}: no such file: finish `spdy run` first (fine-tuning needs its allocation)")
    if not profile_path.exists():
        raise RunError(f"{profile_path}: no such file: is {run_dir} a `spdy run` directory?")
    try:
        profile = load_profile(profile_path)
    except ProfileError as exc:
        raise RunError(str(exc)) from None
    try:
        result = read_json_object(result_path)
    except ResultError as exc:
        raise RunError(str(exc)) from None
    name = options.allocation
    rows, predicted, run_heldout = _allocation(result, name, result_path)
    out = Path(out) if out else run_dir / ("finetune" if name == "spdy" else f"finetune-{name}")
    try:
        state = checkpoint.load_state(out)
    except checkpoint.CheckpointError as exc:
        raise RunError(str(exc)) from None
    if out.exists() and any(out.iterdir()) and not resume:
        what = _describe(state) if state else "not empty"
        raise RunError(f"{out}: a fine-tuning is already there ({what}); add --resume to continue it, or choose another --out")
    stored = state.get("settings") if state else None
    settings = resolve(options, stored, profile, out)
    if state and state.get("levels") not in (None, {row["name"]: row["level"] for row in rows}):
        raise RunError(f"cannot resume {out}: {result_path} now holds another allocation than the one it was started with")
    schedule = schedule_of(settings)
    out.mkdir(parents=True, exist_ok=True)
    log = EventLog(run_dir / "events.jsonl", listener=listener)
    done = state["epoch"] if state else 0
    verify = profile.export.verify if verify is None else verify
    return Finetune(RunContext.from_dir(run_dir, log), out, settings, schedule, rows, predicted, run_heldout, state, done, verify,
                    result.get("target_speedup"))


# ---------------------------------------------------------------------------- pieces of the loop
def one_shot_weights(ft: Finetune) -> torch.nn.Module:
    """A copy of the model with the run's one-shot weights of the allocation: final.safetensors for
    SPDY's (reconstructed, and refined as the run's export settings said), the database's cells for a
    baseline's."""
    run = ft.run
    if ft.settings["allocation"] == "spdy":
        try:
            return copy.deepcopy(run.final_model)
        except (OSError, ValueError) as exc:
            raise RunError(f"{run.run_dir / 'final.safetensors'}: cannot load the run's one-shot weights ({exc}); "
                           "finish `spdy run`, or use --start gradual") from None
    stitcher = run.stitcher
    try:
        stitcher.apply(ft.levels)
        return copy.deepcopy(run.loaded.model)
    finally:
        stitcher.restore()


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s batch order and dropout, derived from (run.seed, epoch) alone."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


# ---------------------------------------------------------------------------- the run
def execute(ft: Finetune) -> dict:
    """Fine-tune (continuing from the last checkpoint), export, verify; returns result.json's content.
    A finished fine-tuning is not trained again, only verified if it was not and ``ft.verify``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(int(ft.settings["threads"]))
    log, epochs = ft.run.log, ft.epochs
    try:
        if ft.state and ft.state.get("done") and (ft.out / "result.json").exists():
            result = read_json_object(ft.out / "result.json")
            return _verify_finished(ft, result) if ft.verify and result.get("verify") is None else result
        return _train_and_export(ft)
    except KeyboardInterrupt:
        log.emit("finetune", phase="interrupted", epoch=ft.epochs_done, epochs=epochs)
        raise
    except Exception as exc:
        log.emit("finetune", phase="failed", epoch=ft.epochs_done, epochs=epochs, message=str(exc))
        raise
    finally:
        torch.set_num_threads(threads)
        log.close()


def _train_and_export(ft: Finetune) -> dict:
    from engine.recovery.gmp import FixedMasks, GradualMasks
    from engine.model.losses import LOSSES
    from engine.core.masks import nm_ineligibility

    run, settings, schedule, epochs, log = ft.run, ft.settings, ft.schedule, ft.epochs, ft.run.log
    loaded, data = run.loaded, run.data
    unknown = [name for name in ft.levels if name not in loaded.layer_names]
    if unknown:
        raise RunError(f"{run.run_dir / 'result.json'}: layer {unknown[0]} is not a prunable layer of the model")
    for name, level in ft.levels.items():
        if is_int8(level):
            raise RunError(f"layer {name} is at int8 level {level}: `spdy finetune` trains fp32 weights, and training "
                           "would move int8 weights off their grid; fine-tune a run without grid.int8")
        reason = parse_nm(level) and nm_ineligibility(loaded.module(name).weight.shape, parse_nm(level))
        if reason:
            raise RunError(f"layer {name}: {reason}")
    check_precision(settings, cpu_flags())
    hidden_weight = float(settings["hidden_weight"])
    blocks = hidden.block_names(loaded.model, list(ft.levels)) if hidden_weight else []
    if hidden_weight and not blocks:
        raise RunError("--hidden-weight: the model has no list of blocks (nn.ModuleList) holding its prunable layers; "
                       "use --hidden-weight 0")
    preparing = functools.partial(log.emit, "finetune", phase="preparing", epoch=ft.epochs_done, epochs=epochs)
    preparing(what="reading the training data" + (" and the installed packages' docstrings" if settings["add_docstrings"] else ""))
    train = training_set(ft.run.profile, settings, loaded, data)
    try:
        loss_name = resolve_loss(settings["loss"], loaded.task, train.labels is not None, option="--loss")
    except DataError as exc:
        raise RunError(str(exc)) from None
    loss_fn = LOSSES[loss_name]
    batch_size = int(settings["batch_size"])
    if blocks or loss_name in DISTILLATION_LOSSES:
        preparing(what=f"the dense model's outputs on {len(train)} training samples")
    cached = hidden.DenseStates.compute(loaded, train, blocks, batch_size, lambda: autocast(settings)) if blocks else None
    fp32_pass = cached.outputs if cached is not None and settings["precision"] == "fp32" else None  # the teacher's, exactly
    teacher = teacher_outputs(ft.out / "teacher.safetensors", loaded, train, batch_size, fp32_pass) if loss_name in DISTILLATION_LOSSES else None
    dense_heldout = model_outputs(loaded, loaded.model, [batch.inputs for batch in data.heldout]) if data.heldout else None

    one_shot_start = settings["start"] == "one-shot"
    student = one_shot_weights(ft) if one_shot_start else copy.deepcopy(loaded.model)
    masks = FixedMasks(student, ft.levels) if one_shot_start else GradualMasks(student, ft.levels, schedule)
    optimizer = torch.optim.Adam(student.parameters(), lr=float(settings["lr"]), fused=True)  # one kernel: 9x faster on CPU
    start, history = 0, []
    if ft.state:
        try:
            masks.load(checkpoint.restore(ft.out, ft.state, student, optimizer))
        except (checkpoint.CheckpointError, ValueError) as exc:
            raise RunError(f"cannot resume {ft.out}: {exc}") from None
        start, history = int(ft.state["epoch"]), list(ft.state.get("history", []))
    plan = ft.plan
    record = {"settings": settings, "schedule": plan, "levels": ft.levels, "loss": loss_name}
    log.emit("finetune", phase="started", epoch=start, epochs=epochs, allocation=settings["allocation"],
             out=str(ft.out), samples=len(train), loss=loss_name, schedule=plan, resume=ft.state is not None)

    steps = math.ceil(len(train) / batch_size)
    every = max(1, steps // STEP_EVENTS_PER_EPOCH)
    for epoch in range(start, epochs):
        sparsities = masks.update(epoch)
        if sparsities is not None:
            log.emit("finetune", phase="prune", epoch=epoch, epochs=epochs, sparsity=sparsities,
                     pruned=masks.pruned_counts())
        seed = epoch_seed(run.profile.run.seed, epoch)
        batches = epoch_batches(train, batch_size, seed, bool(settings["group_by_length"]))
        total = 0.0
        student.train(bool(settings["dropout"]))  # off: eval mode, the teacher's own (settings.Options.dropout)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # dropout, with --dropout and a model that has any
            for step, index in enumerate(batches, start=1):
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(settings, epoch * steps + step - 1, epochs * steps)
                inputs = train.batch(index)
                states = cached.batch(index, inputs["attention_mask"].shape[1]) if cached else None
                loss = batch_loss(loaded, student, inputs, None if teacher is None else teacher[index],
                                  None if train.labels is None else train.labels[index], loss_fn, settings, blocks,
                                  states)
                train_step(optimizer, loss, masks)
                total += float(loss.detach()) * len(index)
                if step % every == 0 or step == steps:
                    log.emit("finetune", phase="step", epoch=epoch, epochs=epochs, step=step, steps=steps,
                             loss=float(loss.detach()))
        student.eval()
        metrics = heldout(loaded, data, student, dense_heldout) if dense_heldout is not None else {}
        history.append({"epoch": epoch, "loss": total / len(train), "heldout": primary_metric(metrics) if metrics else None,
                        "sparsity": masks.sparsities()})
        checkpoint.save(ft.out, epoch + 1, student, masks.state(), optimizer, {**record, "history": history})
        ft.epochs_done = epoch + 1
        log.emit("finetune", phase="epoch", epoch=epoch, epochs=epochs, loss=total / len(train),
                 heldout=history[-1]["heldout"], sparsity=history[-1]["sparsity"])
    result = _export(ft, loaded, data, student, masks, dense_heldout, loss_name, history, len(train))
    checkpoint.write_state(ft.out, {**record, "history": history, "epoch": epochs,
                                    "checkpoint": checkpoint.folder_name(epochs), "done": True})
    log.emit("finetune", phase="done", epoch=epochs, epochs=epochs,
             heldout=result["heldout"]["finetuned"], measured_speedup=result["measured_speedup"])
    return result


def _export(ft: Finetune, loaded, data, student, masks, dense_heldout, loss_name, history, samples) -> dict:
    from engine.export import files, weights
    from engine.model.losses import primary_metric_name
    from engine.core.masks import pruned_count

    levels, schedule, plan = ft.levels, ft.schedule, ft.plan
    layers, pruned = [], masks.pruned_counts()
    for row in ft.rows:
        weight = student.get_submodule(row["name"]).weight
        expected = pruned_count(weight.numel(), level_sparsity(row["level"]))
        if pruned.get(row["name"], 0) != expected:  # cannot happen: the last update sets exact counts
            raise RunError(f"layer {row['name']}: the final mask prunes {pruned.get(row['name'], 0)} weights, "
                           f"level {row['level']} needs {expected}")
        layers.append({**row, "numel": weight.numel(), "pruned": expected, "zeros": int((weight == 0).sum())})
    weights.write_pruned_weights(ft.out, student, {
        "allocation": levels, "source": "spdy finetune", "start": ft.settings["start"],
        "schedule": plan, "seed": ft.run.profile.run.seed,
    })
    if schedule:
        files.write_recipe(ft.out, layers, schedule)  # the schedule it followed; a one-shot start had none
    metrics = heldout(loaded, data, student, dense_heldout) if dense_heldout is not None else {}
    one_shot = heldout(loaded, data, one_shot_magnitude(loaded, levels), dense_heldout) if dense_heldout is not None else {}
    dense = heldout(loaded, data, loaded.model, dense_heldout) if dense_heldout is not None else {}
    outcome = _verify(ft, loaded, student) if ft.verify else None
    result = {
        "allocation": ft.settings["allocation"],
        "target_speedup": ft.target_speedup,
        "predicted_speedup": finite(ft.predicted_speedup),
        "measured_speedup": None if outcome is None else outcome["measured"],
        "heldout_metric": primary_metric_name(loaded.task, data.has_labels),
        "start": ft.settings["start"],
        "heldout": {
            "finetuned": finite(primary_metric(metrics)) if metrics else None,
            "one_shot_magnitude": finite(primary_metric(one_shot)) if one_shot else None,
            "one_shot_run": finite(ft.run_heldout),
            "dense": finite(primary_metric(dense)) if dense else None,
        },
        "metrics": {"finetuned": metrics, "one_shot_magnitude": one_shot},
        "layers": layers,
        "schedule": plan,
        "training": {"loss": loss_name, "optimizer": "Adam", "lr": ft.settings["lr"], "lr_decay": ft.settings["lr_decay"],
                     "hidden_weight": ft.settings["hidden_weight"],
                     "precision": ft.settings["precision"], "batch_size": ft.settings["batch_size"],
                     "group_by_length": ft.settings["group_by_length"], "add_docstrings": ft.settings["add_docstrings"],
                     "dropout": ft.settings["dropout"],
                     "samples": samples, "data": ft.settings["data"] or ft.run.profile.data.source},
        "epochs": history,
        "seed": ft.run.profile.run.seed,
        "verify": outcome,
    }
    write_json(ft.out / "result.json", result)
    return result


def _verify_finished(ft: Finetune, result: dict) -> dict:
    """A finished fine-tuning made with --no-verify: measure its pruned.safetensors now, into its result.json."""
    from engine.export.weights import PRUNED, read_pruned_weights

    try:
        student, _ = read_pruned_weights(ft.out / PRUNED, ft.run.loaded.model)
    except ValueError as exc:
        raise RunError(str(exc)) from None
    outcome = _verify(ft, ft.run.loaded, student)
    result = {**result, "measured_speedup": outcome["measured"], "verify": outcome}
    write_json(ft.out / "result.json", result)
    return result


def _verify(ft: Finetune, loaded, student) -> dict:
    """The end-to-end check of ``student`` on the run's kernels; the outcome, also as the ``verify`` event."""
    from engine.timing.table import TableError

    try:
        table = ft.run.table
    except (TableError, OSError) as exc:
        raise RunError(f"{ft.run.run_dir / 'timings.json'}: cannot verify the speedup without the run's timing table ({exc})") from None
    outcome = ft.run.backend.verify(loaded, student, ft.levels, ft.run.timing_inputs(), table, ft.run.profile.hardware,
                                    finite(ft.predicted_speedup) or float("nan"))
    ft.run.log.emit("finetune", phase="verify", epoch=ft.epochs, epochs=ft.epochs, **outcome)
    return outcome
