"""TOML profiles -> frozen dataclasses.

A profile holds everything a run needs: the model, its data, the target hardware, the sparsity
grid, how the database is built, the search and the exports.  Every key has a default, a type,
and where it matters a range or a set of choices, declared once below with ``option(...)``;
the loader checks them all and reports the file, the key and what was expected.
``docs/profiles.md`` documents the same declarations (``engine.core.profile_toml.describe`` renders
them); ``engine.core.profile_toml`` also owns writing a profile back as TOML.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

from engine.core.learning_rate import LR_DECAYS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ProfileError(ValueError):
    """A profile is invalid; the message names the file and the key."""


def option(default, doc: str, *, choices=None, min=None, max=None, min_exclusive=False):
    """A profile key: its default, one line of documentation, allowed values or range."""
    meta = {"doc": doc, "choices": choices, "min": min, "max": max, "min_exclusive": min_exclusive}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class RunConfig:
    name: str = option("run", "Run name; the run directory is <out_dir>/<name>.")
    out_dir: str = option("runs", "Folder that holds run directories (relative to the working directory).")
    seed: int = option(0, "Seed of every random choice (data split, search, reconstruction).", min=0)


@dataclass(frozen=True)
class ModelConfig:
    source: str = option(
        "minilm",
        "Model source.",
        choices=["minilm", "hf", "torchvision", "python", "digits", "bert-base-random"],
    )
    path: str = option("", "hf: model directory; torchvision: weights file (.pth/.safetensors).")
    name: str = option("", "torchvision: architecture name (resnet18, resnet50, mobilenet_v2, ...).")
    python: str = option("", "python: 'package.module:function' returning (model, calibration, heldout) (see docs/profiles.md).")
    include: list[str] = option(["*"], "Globs of prunable layer names to consider (Linear and Conv2d).")
    exclude: list[str] = option([], "Globs of layer names never pruned (e.g. 'pooler.*').")


@dataclass(frozen=True)
class DataConfig:
    source: str = option(
        "stdlib-docstrings",
        "Calibration/held-out data.",
        choices=["stdlib-docstrings", "text", "imagefolder", "digits", "tensors", "model"],
    )
    path: str = option("", "text: file (one sample per line); imagefolder: folder; tensors: .pt/.npy/.safetensors.")
    calibration_samples: int = option(256, "Samples used for calibration (search loss, reconstruction).", min=1)
    heldout_samples: int = option(256, "Held-out samples, never used for calibration (final metrics).", min=0)
    reconstruction_samples: int = option(0, "Samples whose layer inputs build the database's Hessians (0: the calibration samples; more "
                                         "is cheap: one forward pass each); the search scores on calibration_samples.", min=0)
    heldout_path: str = option("", "Text models: a text file (one sample per line) to measure the final quality on instead of the "
                               "source's held-out split (its first data.heldout_samples distinct lines; none may be calibration text).")
    batch_size: int = option(32, "Batch size of the calibration and held-out batches.", min=1)
    seq_len: int = option(128, "Text models: tokens per sample (padded/truncated).", min=1, max=8192)
    trim_padding: bool = option(
        True,
        "Text models: score calibration batches, and collect the database's Hessians, over batches grouped "
        "by length and cut to their longest sample (the same result up to float rounding, less work on short samples).",
    )
    image_size: int = option(224, "imagefolder: images are resized and centre-cropped to this size.", min=1)


@dataclass(frozen=True)
class HardwareConfig:
    backend: str = option("cpu", "Target: CPU unstructured-sparse kernels or NVIDIA 2:4.", choices=["cpu", "cuda-2:4"])
    threads: int = option(2, "CPU threads for timing and verification (torch and numba).", min=1)
    batch_size: int = option(16, "Batch size the speedup is measured and promised at.", min=1)
    timings: str = option("", "Use this timing table file instead of measuring (SPDY text or JSON).")
    warmup: int = option(3, "Warm-up calls per kernel before timing (in-model: a warm-up round of passes, skipped at 0).", min=0)
    repeats: int = option(15, "Timed samples per (layer, level) (in-model: rounds of passes); the median is kept.", min=3)
    max_spread: float = option(0.15, "Re-measure a (layer, level) whose relative IQR exceeds this.", min=0.0, min_exclusive=True)
    layer_timing: str = option(
        "alone",
        "cpu: time each (layer, level) alone on its captured input, or inside forward passes of the whole model "
        "(slower to measure; no more accurate end to end on this machine, see docs/benchmarks.md).",
        choices=["alone", "in-model"],
    )
    dtype: str = option(
        "float32",
        "Timing and verification dtype (cuda-2:4: float16 or bfloat16, the dtypes of the 2:4 kernels).",
        choices=["float32", "float16", "bfloat16"],
    )
    runtime: str = option(
        "compiled",
        "cpu: what runs the pruned model: the whole model compiled (torch.compile with our sparse kernels as custom "
        "ops; Linear layers only) or eager PyTorch with our kernels; profiled, verified and deployed the same way.",
        choices=["compiled", "eager"],
    )
    reference_paths: list[str] = option(
        ["torch", "onednn", "compiled", "onnxruntime"],
        "cpu: dense paths measured as the speedup's reference; the fastest is the baseline (onnxruntime: encoders only).",
    )
    cuda_graphs: bool = option(
        False,
        "cuda-2:4: time each layer as a replayed CUDA graph (no kernel-launch overhead, which dominates small layers).",
    )


@dataclass(frozen=True)
class GridConfig:
    pattern: str = option("unstructured", "Sparsity pattern: geometric unstructured levels or N:M.", choices=["unstructured", "nm"])
    min_sparsity: float = option(0.40, "First sparse level (unstructured).", min=0.0, max=0.999, min_exclusive=True)
    max_sparsity: float = option(0.99, "Last sparse level (unstructured).", min=0.0, max=0.999, min_exclusive=True)
    steps: int = option(40, "Geometric steps between min and max (steps + 1 sparse levels).", min=1, max=1000)
    include_dense: bool = option(True, "Offer the dense level to every layer.")
    n: int = option(2, "N of N:M.", min=1)
    m: int = option(4, "M of N:M.", min=2)
    int8: bool = option(False, "Also offer int8 choices (unstructured pattern): int8 weights per output channel, activations per token.")
    int8_sparsities: list[float] = option(
        [0.0, 0.5, 0.75, 0.9], "int8: on the masks of the grid levels nearest these sparsities (0: dense int8).", min=0.0, max=0.999,
    )


@dataclass(frozen=True)
class DatabaseConfig:
    method: str = option("obs", "How pruned weights are reconstructed.", choices=["magnitude", "adaprune", "obs"])
    passes: int = option(10, "adaprune: passes over the calibration set per level.", min=1)
    batch_size: int = option(32, "adaprune: batch size.", min=1)
    lr: float = option(1e-3, "adaprune: Adam learning rate.", min=0.0, min_exclusive=True)
    damp: float = option(0.01, "obs: Hessian dampening, as a fraction of the mean diagonal.", min=0.0, min_exclusive=True)
    block_size: int = option(128, "obs: columns processed together.", min=1)
    executor: str = option("inline", "Where layers are built: this process, worker processes, or Ray ([ray]).", choices=["inline", "processes", "ray"])
    workers: int = option(1, "processes, ray: workers building layers (each gets threads / workers threads).", min=1, max=64)


@dataclass(frozen=True)
class SearchConfig:
    target: float = option(1.5, "Target end-to-end speedup over the fastest dense path.", min=1.0)
    loss: str = option(
        "auto",
        "Calibration loss (auto: embedding cosine for encoders, KL to dense logits for classifiers with no labels).",
        choices=["auto", "cross-entropy", "kl", "cosine", "mse"],
    )
    skip: list[str] = option([], "Globs of layers kept dense (their dense time is charged to the budget).")
    buckets: int = option(10_000, "DP time buckets.", min=10, max=1_000_000)
    random_inits: int = option(100, "Random coefficient vectors scored before the local search.", min=1)
    window: int = option(100, "Failed tries in a row before the mutation size shrinks.", min=1)
    layer_fraction: float = option(0.1, "Initial mutation size k = round(layer_fraction * layers).", min=0.0, max=1.0)
    workers: int = option(1, "Workers evaluating candidates (processes or Ray actors).", min=1, max=64)
    executor: str = option("auto", "Where candidates are scored (auto: inline for 1 worker, else processes).", choices=["auto", "inline", "processes", "ray"])
    early_abandon: bool = option(True, "Stop scoring a candidate once its loss exceeds the best (exact).")
    reuse_activations: bool = option(True, "Start a candidate's forward pass at its first changed block (exact).")
    baselines: list[str] = option(
        ["uniform", "global-magnitude", "prior", "squared-error"],
        "Baselines computed at the same target (uniform, uniform-int8 with grid.int8, global-magnitude, prior, squared-error).",
    )


@dataclass(frozen=True)
class RayConfig:
    address: str = option("", "executor 'ray': '' starts a local Ray with the run's workers as CPUs; 'auto' or 'ray://host:port' joins a cluster.")
    shared_path: str = option("", "Folder every Ray node mounts at the same path; the run directory must lie inside it (docs/cluster.md).")


@dataclass(frozen=True)
class ExportConfig:
    sequential: bool = option(False, "obs: rebuild the chosen allocation layer by layer from the inputs of the model with its earlier "
                              "layers pruned (SparseGPT's sequential mode) instead of stitching the database's dense-input cells.")
    gap: bool = option(False, "Run global AdaPrune on the final model: all its weights trained (masks fixed) so that every pruned "
                       "layer's output matches the dense model's, on the reconstruction samples (fp32 grids only).")
    gap_passes: int = option(4, "Global AdaPrune passes over the reconstruction samples.", min=1)
    gap_lr: float = option(1e-3, "Global AdaPrune Adam learning rate (at the start, with gap_decay = 'cosine').",
                           min=0.0, min_exclusive=True)
    gap_decay: str = option("cosine", "Global AdaPrune learning-rate schedule: 'cosine' decays it to 0 over the passes.",
                            choices=list(LR_DECAYS))
    verify: bool = option(True, "Re-measure the speedup end to end with sparse kernels.")
    tighten_rounds: int = option(3, "Closed loop: rounds of tightening the budget and continuing the search while the measured "
                                 "speedup falls short of the target (0: measure only).", min=0, max=20)
    relax: bool = option(False, "Closed loop: when the measured speedup exceeds the target beyond the noise, search once more at the "
                         "target lowered by the surplus and keep that model only if it still meets the target (spends speed on quality).")
    tighten_tolerance: float = option(0.02, "Closed loop: how far below the target a measurement may fall (relative) before the "
                                      "budget is tightened; half the measurement's relative IQR is added.", min=0.0, max=0.5)
    weights: bool = option(True, "Write pruned.safetensors.")


@dataclass(frozen=True)
class Profile:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    source: str = field(default="<defaults>", compare=False, metadata={"internal": True})
    notes: tuple[str, ...] = field(default=(), compare=False, metadata={"internal": True})  # e.g. a former key name

    def to_dict(self) -> dict:
        return {f.name: dataclasses.asdict(getattr(self, f.name)) for f in profile_sections()}

    def levels(self) -> list[str]:
        """The grid's level labels, ascending in sparsity."""
        from engine.core.grid import geometric_levels, nm_levels

        from engine.core.grid import with_int8

        if self.grid.pattern == "nm":
            return nm_levels(self.grid.n, self.grid.m, self.grid.include_dense)
        levels = geometric_levels(self.grid.min_sparsity, self.grid.max_sparsity, self.grid.steps, self.grid.include_dense)
        if not self.grid.int8:
            return levels
        return with_int8(levels, self.grid.int8_sparsities)


def profile_sections() -> list[dataclasses.Field]:
    """The profile's sections (its dataclass fields that are not internal)."""
    return [f for f in dataclasses.fields(Profile) if not f.metadata.get("internal")]


def _check_value(value, expected, meta, key: str, source: str):
    origin = typing.get_origin(expected)
    if origin is list and typing.get_args(expected) == (float,):
        if not isinstance(value, list) or not value:
            raise ProfileError(f"{source}: key '{key}' must be a non-empty list of numbers, got {value!r}")
        return [_check_value(item, float, meta, key, source) for item in value]
    if origin is list:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ProfileError(f"{source}: key '{key}' must be a list of strings, got {value!r}")
        return list(value)
    if expected is bool:
        if not isinstance(value, bool):
            raise ProfileError(f"{source}: key '{key}' must be true or false, got {value!r}")
        return value
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProfileError(f"{source}: key '{key}' must be an integer, got {value!r}")
    elif expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ProfileError(f"{source}: key '{key}' must be a number, got {value!r}")
        value = float(value)
    elif expected is str:
        if not isinstance(value, str):
            raise ProfileError(f"{source}: key '{key}' must be a string, got {value!r}")
    if meta.get("choices") and value not in meta["choices"]:
        raise ProfileError(f"{source}: key '{key}' must be one of {', '.join(meta['choices'])}; got {value!r}")
    low, high = meta.get("min"), meta.get("max")
    if low is not None and (value < low or (meta.get("min_exclusive") and value == low)):
        relation = ">" if meta.get("min_exclusive") else ">="
        raise ProfileError(f"{source}: key '{key}' must be {relation} {low}, got {value!r}")
    if high is not None and value > high:
        raise ProfileError(f"{source}: key '{key}' must be <= {high}, got {value!r}")
    return value


# former key -> its name now; a profile with the former name still loads, with a note saying so
RENAMED_KEYS = {"model.kind": "model.source", "grid.kind": "grid.pattern"}


def _renamed(name: str, body: dict, source: str, notes: list[str]) -> dict:
    """``body`` of section ``name`` with former key names replaced by their names now."""
    body = dict(body)
    for old, new in RENAMED_KEYS.items():
        section, _, old_key = old.partition(".")
        new_key = new.partition(".")[2]
        if section != name or old_key not in body:
            continue
        if new_key in body:
            raise ProfileError(f"{source}: keys '{old}' and '{new}' are the same key (its former and present name); keep '{new}'")
        body[new_key] = body.pop(old_key)
        notes.append(f"{source}: key '{old}' is now called '{new}'; the old name still works")
    return body


def from_dict(data: dict, source: str = "<dict>") -> Profile:
    """Build a Profile from parsed TOML, checking every key."""
    sections = {}
    notes: list[str] = []
    known = {f.name: f for f in profile_sections()}
    for name, body in data.items():
        if name not in known:
            raise ProfileError(f"{source}: unknown section [{name}] (known: {', '.join(known)})")
        if not isinstance(body, dict):
            raise ProfileError(f"{source}: [{name}] must be a table of keys")
        body = _renamed(name, body, source, notes)
        cls = known[name].default_factory  # type: ignore[misc]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        values = {}
        for key, value in body.items():
            if key not in fields:
                raise ProfileError(f"{source}: unknown key '{name}.{key}' (known: {', '.join(fields)})")
            values[key] = _check_value(value, hints[key], fields[key].metadata, f"{name}.{key}", source)
        sections[name] = cls(**values)
    profile = Profile(**sections, source=source, notes=tuple(notes))
    _check_consistency(profile)
    return profile


def _check_consistency(profile: Profile) -> None:
    src = profile.source
    name = profile.run.name
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name or name != name.strip():
        raise ProfileError(
            f"{src}: key 'run.name' must be a single plain folder name (the run directory is <run.out_dir>/<run.name>), "
            f"without '/', '\\' or surrounding spaces and not '.' or '..'; got {name!r}"
        )
    if not profile.model.include:
        raise ProfileError(f"{src}: key 'model.include' is empty, so no layer would be pruned; use [\"*\"] for every layer")
    grid = profile.grid
    if grid.pattern == "unstructured" and grid.min_sparsity > grid.max_sparsity:
        raise ProfileError(f"{src}: key 'grid.min_sparsity' ({grid.min_sparsity}) exceeds 'grid.max_sparsity' ({grid.max_sparsity})")
    if grid.pattern == "nm" and grid.n >= grid.m:
        raise ProfileError(f"{src}: key 'grid.n' must be less than 'grid.m' (got {grid.n}:{grid.m})")
    if grid.int8:
        if grid.pattern != "unstructured" or profile.hardware.backend != "cpu":
            raise ProfileError(f"{src}: key 'grid.int8' needs grid.pattern = 'unstructured' and hardware.backend = 'cpu'")
        if profile.export.sequential or profile.export.gap:
            raise ProfileError(
                f"{src}: key 'grid.int8' cannot be combined with export.sequential or export.gap "
                "(they would move int8 weights off their grid); set both to false"
            )
    hardware = profile.hardware
    unknown_paths = sorted(set(hardware.reference_paths) - {"torch", "onednn", "compiled", "onnxruntime"})
    if unknown_paths:
        raise ProfileError(f"{src}: key 'hardware.reference_paths' has unknown paths {unknown_paths} (torch, onednn, compiled, onnxruntime)")
    if hardware.runtime == "compiled" and hardware.layer_timing == "in-model" and hardware.backend == "cpu":
        raise ProfileError(f"{src}: hardware.layer_timing 'in-model' times the eager runtime; set hardware.runtime = 'eager' with it")
    if profile.hardware.backend == "cuda-2:4":
        if grid.pattern != "nm":
            raise ProfileError(f"{src}: hardware.backend 'cuda-2:4' needs grid.pattern = 'nm'")
        if (grid.n, grid.m) != (2, 4):
            raise ProfileError(f"{src}: hardware.backend 'cuda-2:4' runs 2:4 only; set grid.n = 2 and grid.m = 4 (got {grid.n}:{grid.m})")
        if not grid.include_dense:
            raise ProfileError(f"{src}: hardware.backend 'cuda-2:4' needs grid.include_dense = true (layers the 2:4 kernels cannot run stay dense)")
        if profile.hardware.dtype not in ("float16", "bfloat16"):
            raise ProfileError(
                f"{src}: hardware.backend 'cuda-2:4' needs hardware.dtype 'float16' or 'bfloat16' "
                f"(the 2:4 kernels have no float32 path); got {profile.hardware.dtype!r}"
            )
    model, data = profile.model, profile.data
    needs = {"hf": ("path", model.path), "torchvision": ("name", model.name), "python": ("python", model.python)}
    if model.source in needs and not needs[model.source][1]:
        raise ProfileError(f"{src}: model.source '{model.source}' needs key 'model.{needs[model.source][0]}'")
    if data.source in ("text", "imagefolder", "tensors") and not data.path:
        raise ProfileError(f"{src}: data.source '{data.source}' needs key 'data.path'")
    unknown = set(profile.search.baselines) - {"uniform", "uniform-int8", "global-magnitude", "prior", "squared-error"}
    if unknown:
        raise ProfileError(f"{src}: key 'search.baselines' has unknown names {sorted(unknown)}")
    if "uniform-int8" in profile.search.baselines and not grid.int8:
        raise ProfileError(f"{src}: search.baselines 'uniform-int8' needs grid.int8 = true")


def read_toml(path: str | Path) -> dict:
    """The parsed TOML of a profile file; a ProfileError naming the file if it cannot be read."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such profile file") from None
    except IsADirectoryError:
        raise ProfileError(f"{path}: is a directory, not a profile file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: invalid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: cannot read profile: {exc}") from None


def load_profile(path: str | Path) -> Profile:
    """Read and validate a TOML profile; relative paths in it are resolved against its folder."""
    path = Path(path)
    return _resolve_paths(from_dict(read_toml(path), str(path)), path.parent)


def _resolve_paths(profile: Profile, base: Path) -> Profile:
    def resolve(value: str) -> str:
        return str((base / value).resolve()) if value and not Path(value).is_absolute() else value

    model = dataclasses.replace(profile.model, path=resolve(profile.model.path))
    data = dataclasses.replace(profile.data, path=resolve(profile.data.path), heldout_path=resolve(profile.data.heldout_path))
    hardware = dataclasses.replace(profile.hardware, timings=resolve(profile.hardware.timings))
    return dataclasses.replace(profile, model=model, data=data, hardware=hardware)
