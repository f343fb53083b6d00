"""The plan of a run: everything that can be checked before any work starts, and what the run will take.

``plan_run(profile)`` loads the model (not the data: one forward pass on a dummy batch of the
data's shape traces the prunable layers) and refuses, with the error the run itself would raise
minutes later, what cannot work:

* files: ``model.path`` (a Hugging Face directory needs config.json; a torchvision weights file
  must exist), ``model.python`` ('package.module:function', importable), ``data.path`` (text or
  tensors file, image folder), ``hardware.timings`` (it must load and add up, see
  ``engine.timing.table``, and list every prunable layer of the model);
* pairs that do not fit: text data with a model that has no tokenizer (digits, torchvision,
  python), image data with a text model, ``data.source = "model"`` without ``model.source =
  "python"``, more digits samples than the digits split holds;
* layers: none left after ``model.include`` / ``model.exclude``; a ``search.skip`` glob that
  matches no layer (``check_skip``, which the run's first stage also calls: it used to fail only
  after the timing stage had run for minutes);
* with ``hardware.timings``: a target above the table's maximum speedup (``InfeasibleTarget``).

Errors are the engine's user errors (ProfileError, ModelError, DataError, TableError, all
ValueErrors; InfeasibleTarget for the target).  The returned ``RunPlan`` lists the layers, levels,
skipped layers, database cells and bytes, and an estimate of each stage's seconds.

The estimate is rough on purpose (``estimate_seconds``): FLOPs at a conservative rate, calibrated
on docs/benchmarks.md (oneDNN ran ~100 GFLOP/s per thread on the 2-vCPU EPYC; we assume 50), so
it errs long (digits: ~2x the measured timings and database; MiniLM: ~1.3x the 157 s timing
stage, and 1-4x the search, which trims padding and abandons hopeless candidates early).
"""

from __future__ import annotations

import fnmatch
import math
import os
from dataclasses import dataclass, field, replace

import torch

from engine.core.profile import Profile, ProfileError
from engine.database.compact import stored_bytes
from engine.database.store import layer_plan
from engine.model.data import DIGITS_CALIBRATION, DIGITS_HELDOUT, DataError, read_tensor_file, split_indices, text_lines
from engine.model.sources import Layer, LoadedModel, ModelError, load_model, load_python, trace_layers
from engine.run.stages import ORDER
from engine.search.budget import make_problem
from engine.search.dp import InfeasibleTarget
from engine.timing.table import TableError, TimingTable, load_table

TEXT_DATA = ("stdlib-docstrings", "text")
IMAGE_DATA = ("digits", "imagefolder")
TEXT_MODELS = ("minilm", "hf")

# The rough model of estimate_seconds (see the module docstring).
CPU_FLOPS_PER_THREAD = 50e9  # dense fp32 GEMM, FLOP/s per thread (measured ~100e9 on the benchmark machine)
GPU_FLOPS = 20e12  # cuda-2:4: dense fp16 on a datacentre GPU, conservatively
CALL_SECONDS = 20e-6  # fixed cost of one layer call (dispatch, timer)
OUTSIDE_SHARE = 1.3  # the whole model over its prunable layers (attention, norms, activations)
SPARSE_LEVEL_SHARE = 0.6  # mean time of a sparse level over its dense time (geometric grid, our kernels)
DATABASE_SECONDS_PER_WEIGHT = {"magnitude": 0.15e-6, "obs": 1.2e-6, "adaprune": 0.025e-6}  # per weight and level; adaprune per pass and 256 samples
SEARCH_WINDOWS_PER_K = 2.5  # windows opened per mutation size k (the MiniLM runs: 1046-1868 evaluations at k = 4 .. 1)
DP_SECONDS = 0.002  # one DP solve per candidate


@dataclass(frozen=True)
class RunPlan:
    layers: list[Layer]  # the prunable layers in execution order (name, kind, weight_shape, input_shape of one batch)
    levels: list[str]  # the grid's level labels (profile.levels())
    skipped: list[str]  # layers matched by search.skip
    cells: int  # (layer, level) cells the database stores
    database_bytes: int  # db/ payload as engine.database.compact stores it (headers and index.json add <1%)
    estimated_seconds: dict[str, float]  # stage -> a rough estimate (module docstring)
    notes: list[str] = field(default_factory=list)


def plan_run(profile: Profile) -> RunPlan:
    """Check everything that can be checked before the run starts; what the run will take."""
    notes = list(profile.notes)
    _check_files_and_pairs(profile)
    table = _supplied_table(profile)
    loaded, inputs = _model_and_dummy_batch(profile)
    layers = _trace(profile, loaded, inputs)
    names = [layer.name for layer in layers]
    skipped = check_skip(profile, names)
    levels = profile.levels()
    if table is not None:
        notes.append(_check_table_fits(profile, table, names))
    cells, data_bytes = 0, 0
    for layer in layers:
        stored, dropped = layer_plan(layer.weight_shape, levels)
        cells += len(stored)
        data_bytes += sum(stored_bytes(layer.weight_shape, level) for level in stored)
        for level, reason in dropped.items():
            notes.append(f"layer {layer.name}: level {level} is not stored ({reason})")
    if skipped:
        notes.append(f"search.skip keeps {len(skipped)} layer(s) dense: {', '.join(skipped[:6])}{', ...' if len(skipped) > 6 else ''}")
    estimate = estimate_seconds(profile, loaded, layers, skipped, timings_given=table is not None)
    notes.append(
        f"estimated_seconds is a rough, deliberately long estimate (about {sum(estimate.values()) / 60:.0f} min in all): "
        "FLOPs at a conservative rate, calibrated on docs/benchmarks.md"
    )
    return RunPlan(layers, levels, skipped, cells, data_bytes, estimate, notes)


def check_skip(profile: Profile, names: list[str]) -> list[str]:
    """The layers ``search.skip`` matches; a ProfileError for a glob that matches none of ``names``."""
    for pattern in profile.search.skip:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            raise ProfileError(f"{profile.source}: key 'search.skip': pattern {pattern!r} matches no prunable layer of the model (layers: {shown})")
    return [name for name in names if any(fnmatch.fnmatchcase(name, pattern) for pattern in profile.search.skip)]


def check_context(ctx) -> None:
    """The checks that need the run's own model: called first by the timing stage, before any timing."""
    check_skip(ctx.profile, ctx.loaded.layer_names)


# ---------------------------------------------------------------------------- before loading anything
def _check_files_and_pairs(profile: Profile) -> None:
    model, data = profile.model, profile.data
    if model.source == "hf":
        if not os.path.isdir(model.path):
            raise ModelError(f"model.path {model.path!r}: no such directory (model.source 'hf' needs a Hugging Face model directory)")
        if not os.path.isfile(os.path.join(model.path, "config.json")):
            raise ModelError(f"model.path {model.path!r} is not a Hugging Face model directory: it has no config.json")
    if model.source == "torchvision" and model.path and not os.path.isfile(model.path):
        raise ModelError(f"model.path {model.path!r}: no such weights file (a .pth, .pt or .safetensors state dict of model.name {model.name!r})")
    if model.source == "python":
        module_name, _, function_name = model.python.partition(":")
        if not module_name or not function_name:
            raise ModelError(f"model.python {model.python!r} must look like 'package.module:function'")
    if data.source in TEXT_DATA and model.source not in TEXT_MODELS:
        raise DataError(f"data.source {data.source!r} is text, but model.source {model.source!r} has no tokenizer")
    if data.source in IMAGE_DATA and model.source in TEXT_MODELS:
        raise ModelError(
            f"model.source {model.source!r} cannot run on data.source {data.source!r}: a text model needs text data "
            "(data.source 'stdlib-docstrings' or 'text')"
        )
    if data.source == "model" and model.source != "python":
        raise DataError("data.source 'model' needs model.source 'python' with a function that returns calibration and held-out batches")
    kinds = {"text": ("file", os.path.isfile), "tensors": ("file", os.path.isfile), "imagefolder": ("folder", os.path.isdir)}
    if data.source in kinds and not kinds[data.source][1](data.path):
        raise DataError(f"data.path {data.path!r}: no such {kinds[data.source][0]} (data.source {data.source!r})")
    if data.source == "digits":
        for part, available in (("calibration", DIGITS_CALIBRATION), ("heldout", DIGITS_HELDOUT)):
            wanted = getattr(data, f"{part}_samples")
            if wanted > available:
                raise DataError(f"data.{part}_samples = {wanted} exceeds the {available} {part} samples of the digits split")
    if data.heldout_path:
        if data.source not in TEXT_DATA:
            raise DataError(f"data.heldout_path {data.heldout_path!r} is held-out text, but data.source {data.source!r} is not text")
        if not text_lines(data.heldout_path, f"data.heldout_path {data.heldout_path!r}"):
            raise DataError(f"data.heldout_path {data.heldout_path!r}: the file has no non-blank lines")
        profile = replace(profile, data=replace(data, heldout_samples=0))  # the source gives calibration only
    if data.source == "text":
        split_indices(len(text_lines(data.path, f"data.path {data.path!r}")), profile, f"text file {data.path!r}")


def _supplied_table(profile: Profile) -> TimingTable | None:
    return load_table(profile.hardware.timings) if profile.hardware.timings else None


# ---------------------------------------------------------------------------- the model and its layers
def _model_and_dummy_batch(profile: Profile):
    """The model, and a batch of the data's shape to trace it with (real samples only where the
    shape cannot be known otherwise: a tensors file, a python model's own batches)."""
    data = profile.data
    samples = max(1, min(data.batch_size, data.calibration_samples))
    try:
        if profile.model.source == "python":
            loaded, supplied = load_python(profile)
        else:
            loaded, supplied = load_model(profile), None
    except SyntaxError as exc:
        raise ModelError(f"model.python {profile.model.python!r}: cannot import it: {exc}") from None
    if data.source in TEXT_DATA:
        encoded = loaded.tokenizer(
            ["a sentence to trace the model with"] * samples, padding="max_length", truncation=True,
            max_length=data.seq_len, return_tensors="pt",
        )
        return loaded, dict(encoded)
    if data.source == "digits":
        return loaded, torch.zeros(samples, 1, 8, 8)
    if data.source == "imagefolder":
        return loaded, torch.zeros(samples, 3, data.image_size, data.image_size)
    if data.source == "tensors":
        inputs, _labels = read_tensor_file(data.path, f"data.path {data.path!r}")
        count = int((next(iter(inputs.values())) if isinstance(inputs, dict) else inputs).shape[0])
        split_indices(count, profile, f"tensor file {data.path!r}")
        if isinstance(inputs, dict):
            return loaded, {key: value[:samples] for key, value in inputs.items()}
        return loaded, inputs[:samples]
    if supplied is None or not supplied[0]:
        raise DataError(f"model.python {profile.model.python!r}: data.source 'model' needs the function to return calibration batches")
    first = supplied[0][0]
    return loaded, first[0] if isinstance(first, tuple) else first


def _trace(profile: Profile, loaded: LoadedModel, inputs) -> list[Layer]:
    model = profile.model
    try:
        layers = trace_layers(loaded, inputs, model.include, model.exclude)
    except (RuntimeError, TypeError, ValueError, KeyError) as exc:
        raise ModelError(f"model.source {model.source!r} cannot run on data.source {profile.data.source!r}: {exc}") from None
    if not layers:
        raise ModelError(
            f"no prunable layer (Linear, Conv2d) left after model.include = {list(model.include)} "
            f"and model.exclude = {list(model.exclude)}"
        )
    loaded.layers = layers
    return layers


def _check_table_fits(profile: Profile, table: TimingTable, names: list[str]) -> str:
    path = profile.hardware.timings
    missing = [name for name in names if name not in table.names]
    if missing:
        raise TableError(f"{path}: no timings for layer(s) {', '.join(missing[:5])}")
    try:
        problem = make_problem(table.subset(names) if table.names != names else table, profile.search.target, profile.search.skip)
    except ValueError as exc:
        raise TableError(f"{path}: {exc}") from None
    if problem.max_speedup < profile.search.target:
        raise InfeasibleTarget(
            f"target {profile.search.target:g}x is infeasible: the maximum achievable speedup on {path} is {problem.max_speedup:.4f}x",
            problem.min_time, problem.max_speedup,
        )
    return f"timings are read from {path}; it allows up to {problem.max_speedup:.3f}x (target {profile.search.target:g}x)"


# ---------------------------------------------------------------------------- the estimate
def layer_flops(loaded: LoadedModel, layer: Layer) -> float:
    """Multiply-adds x 2 of one sample through the layer (input shape of the traced batch)."""
    batch = max(1, layer.input_shape[0]) if layer.input_shape else 1
    if layer.kind == "linear":
        rows = math.prod(layer.input_shape[:-1]) / batch if layer.input_shape else 1
        return 2.0 * rows * layer.numel
    module = loaded.module(layer.name)
    height, width = layer.input_shape[-2:]
    out_h, out_w = (
        (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
        for size, pad, dilation, kernel, stride in zip(
            (height, width), _pair(module.padding, module.kernel_size), module.dilation, module.kernel_size, module.stride
        )
    )
    return 2.0 * max(out_h, 1) * max(out_w, 1) * layer.numel


def _pair(padding, kernel) -> tuple[int, int]:
    if isinstance(padding, str):  # "same" keeps the size, "valid" pads nothing
        return tuple(k // 2 for k in kernel) if padding == "same" else (0, 0)
    return tuple(padding)


def estimate_seconds(
    profile: Profile, loaded: LoadedModel, layers: list[Layer], skipped: list[str], timings_given: bool = False
) -> dict[str, float]:
    """A rough estimate of each stage's seconds (an estimate, not a measurement; it errs long).

    With f_l a layer's FLOPs per sample and R the rate (CPU: 50 GFLOP/s per thread; cuda-2:4:
    20 TFLOP/s), a dense layer takes t_l(n) = n f_l / R + 20 us on n samples, and the model
    1.3 x sum_l t_l (time outside the layers).  Then:

    * timings: (warmup + repeats) x (0.6 x sparse levels + 1 dense + 1.3 base) x sum_l t_l(batch);
      a supplied table (hardware.timings) takes a second;
    * database: sum over stored cells of the layer's weights x a per-weight cost (obs 1.2 us,
      magnitude 0.15 us, adaprune 0.025 us per pass and 256 samples), plus one calibration pass,
      divided by the workers of the processes executor;
    * search: random_inits + 2.5 x window x k_max evaluations (k_max = round(layer_fraction x
      searchable layers)), each a calibration pass plus a DP solve, divided by search.workers;
    * baselines: each baseline scored on the calibration and held-out samples;
    * final: a held-out pass, plus 3 calibration passes (forward and backward) per gap pass;
    * verify: (warmup + repeats) x (dense + sparse model) on the hardware batch; with export.relax,
      one more search, final and measurement (the round that spends a surplus, when there is one);
    * export: writing the weights (200 MB/s) and a few files.
    """
    hardware, search, data, database = profile.hardware, profile.search, profile.data, profile.database
    rate = GPU_FLOPS if hardware.backend == "cuda-2:4" else CPU_FLOPS_PER_THREAD * hardware.threads
    flops = [layer_flops(loaded, layer) for layer in layers]

    def model_pass(samples: int) -> float:
        return OUTSIDE_SHARE * sum(samples * f / rate + CALL_SECONDS for f in flops)

    layer_sum = sum(hardware.batch_size * f / rate + CALL_SECONDS for f in flops)
    sparse_levels = max(0, len(profile.levels()) - 1)
    rounds = hardware.warmup + hardware.repeats
    timings = 1.0 if timings_given else rounds * (SPARSE_LEVEL_SHARE * sparse_levels + 1 + OUTSIDE_SHARE) * layer_sum

    per_weight = DATABASE_SECONDS_PER_WEIGHT[database.method]
    if database.method == "adaprune":
        per_weight *= database.passes * data.calibration_samples / 256
    weights = sum(layer.numel * len(layer_plan(layer.weight_shape, profile.levels())[0]) for layer in layers)
    parallel = database.workers if database.executor in ("processes", "ray") else 1
    reconstruction = data.reconstruction_samples or data.calibration_samples
    database_seconds = (weights * per_weight + model_pass(reconstruction)) / parallel

    searchable = max(1, len(layers) - len(skipped))
    k_max = max(1, round(search.layer_fraction * searchable))
    evaluations = search.random_inits + SEARCH_WINDOWS_PER_K * search.window * k_max
    evaluation = model_pass(data.calibration_samples) + DP_SECONDS
    search_seconds = evaluations * evaluation / search.workers

    baselines = len(search.baselines) * (evaluation + model_pass(data.heldout_samples))
    final = model_pass(data.heldout_samples) + (profile.export.gap_passes * 3 * model_pass(reconstruction) if profile.export.gap else 0.0)
    verify = rounds * 2 * model_pass(hardware.batch_size) if profile.export.verify else 0.0
    if profile.export.verify and profile.export.relax:
        verify += search_seconds + final + verify
    export = 2.0 + (4 * sum(layer.numel for layer in layers) / 200e6 if profile.export.weights else 0.0)
    values = (timings, database_seconds, search_seconds, baselines, final, verify, export)
    return {stage: round(float(value), 1) for stage, value in zip(ORDER, values)}
