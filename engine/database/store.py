"""The reconstruction database: a pruned weight for every (layer, level), built, stored, stitched.

Building (``build_database``): each layer is pruned level after level in ascending sparsity,
each unstructured level from the previous one (masks nested), each N:M level from the dense
weight (a layer whose input dimension is not a multiple of M skips it, with the reason), by the
profile's method (``engine.database.reconstruct``: magnitude, obs, adaprune).  Layer inputs come from
forward hooks on the dense model (``engine.model.layer_inputs``): obs and magnitude only need
H = 2 X X^T, accumulated for all layers in one pass; adaprune keeps the inputs of one unit
(transformer block) at a time.  Every (layer, level) reports

    error = ||W_s X - W X||^2 / ||W X||^2

on the calibration inputs, through ``on_progress(layer, level, error, done, total)`` (the run
log's ``db`` event) and in ``index.json``.

Storage (``<run>/db/``): one safetensors file per layer holding all its levels (the dense level as
it is, pruned ones as non-zeros and a bitmask: ``engine.database.compact``), written atomically, plus ``index.json`` with, per layer, the file, the levels, the sha256
of the file, the settings and a fingerprint of (settings, levels, dense weight, calibration
inputs).  A build resumes after any interruption: it rebuilds exactly the layers whose file is
missing, whose hash differs (a corrupt file) or whose fingerprint differs.  Nothing is pickled.

Reading (``Database``) is lazy, one tensor at a time, with a small LRU cache bounded in bytes;
``engine.database.stitch`` points layer weights at database tensors and back, by reference.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from engine.core import atomic
from engine.core.profile import DatabaseConfig
from engine.core.digest import digest
from engine.core.grid import is_int8, mask_level, parse_nm, sort_levels
from engine.core.masks import nm_ineligibility
from engine.database import compact
from engine.database.quantize import int8_cells
from engine.database.reconstruct import REFIT_MAX_STEPS, REFIT_TOLERANCE, OutputError, layer_pruners, pruned_levels

if TYPE_CHECKING:
    from engine.model.sources import Layer, LoadedModel

FORMAT = 2  # 2: pruned levels as non-zeros and a bitmask (engine.database.compact)
INDEX = "index.json"
ENTRY_KEYS = ("file", "levels", "skipped", "sha256", "fingerprint", "settings", "errors")
DEFAULT_CACHE_BYTES = 256 << 20
Progress = Callable[[str, str, float, int, int], None]


# ---------------------------------------------------------------------------- fingerprints
def method_settings(config: DatabaseConfig, seed: int = 0) -> dict[str, Any]:
    """The settings a method's results depend on (and only those)."""
    if config.method == "obs":
        refit = {"refit_tolerance": REFIT_TOLERANCE, "refit_max_steps": REFIT_MAX_STEPS}
        return {"method": "obs", "damp": config.damp, "block_size": config.block_size, **refit}
    if config.method == "adaprune":
        return {
            "method": "adaprune", "passes": config.passes, "batch_size": config.batch_size, "lr": config.lr, "seed": seed,
        }
    return {"method": config.method}


def layer_plan(weight_shape: tuple[int, ...], levels: list[str]) -> tuple[list[str], dict[str, str]]:
    """(levels stored for this layer, {N:M level: why it is skipped})."""
    stored, skipped = [], {}
    for level in levels:
        nm = parse_nm(level)
        reason = nm_ineligibility(weight_shape, nm) if nm is not None else None
        if is_int8(level) and len(weight_shape) != 2:
            reason = "int8 levels run Linear layers only"
        if reason is None:
            stored.append(level)
        else:
            skipped[level] = reason
    return stored, skipped


# ---------------------------------------------------------------------------- index
def layer_file_name(layer: str) -> str:
    """A file name for the layer: its own name when that is safe, else a sanitised name plus a hash."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in layer).lstrip(".")
    if safe != layer or not safe:
        safe = f"{safe}-{hashlib.sha256(layer.encode()).hexdigest()[:8]}"
    return f"{safe}.safetensors"


def _read_index(directory: Path) -> dict:
    try:
        index = json.loads((directory / INDEX).read_text())
    except (OSError, ValueError):
        return {"format": FORMAT, "layers": {}}
    if not isinstance(index, dict) or index.get("format") != FORMAT or not isinstance(index.get("layers"), dict):
        return {"format": FORMAT, "layers": {}}
    return index


def _file_sha256(path: Path) -> str | None:
    hasher = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                hasher.update(chunk)
    except OSError:
        return None
    return hasher.hexdigest()


def _well_formed(entry: Any) -> bool:
    return isinstance(entry, dict) and all(key in entry for key in ENTRY_KEYS)


def _entry_intact(directory: Path, entry: Any) -> bool:
    """The entry is well formed and its file exists with the recorded sha256."""
    return _well_formed(entry) and _file_sha256(directory / entry["file"]) == entry["sha256"]


# ---------------------------------------------------------------------------- building
@dataclass
class BuildPlan:
    """What a build must do: per layer the levels to store (and skip, with why) and its fingerprint;
    ``todo`` the layers whose stored file is missing, corrupt or stale."""

    directory: Path
    settings: dict
    layer_levels: dict[str, tuple[list[str], dict[str, str]]]
    fingerprints: dict[str, str]
    todo: list[str]

    @property
    def total(self) -> int:
        return sum(len(stored) for stored, _ in self.layer_levels.values())

    @property
    def already_done(self) -> int:
        return self.total - sum(len(self.layer_levels[name][0]) for name in self.todo)


def plan_database(
    loaded: LoadedModel, calibration_inputs: Sequence[Any], layers: Sequence[Layer | str], levels: Sequence[str],
    config: DatabaseConfig, out_dir: str | os.PathLike, seed: int = 0,
) -> BuildPlan:
    """Plan (or re-plan, after an interruption) the database of ``layers`` at ``levels``."""
    names = [getattr(layer, "name", layer) for layer in layers]
    levels = sort_levels(list(dict.fromkeys(levels)))
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    index = _read_index(directory)
    settings = method_settings(config, seed)
    calibration = digest(list(calibration_inputs))
    layer_levels, fingerprints = {}, {}
    for name in names:
        weight = loaded.module(name).weight
        layer_levels[name] = layer_plan(tuple(weight.shape), levels)
        fingerprints[name] = digest([FORMAT, settings, layer_levels[name][0], weight, calibration])
    todo = [
        name for name in names
        if not _entry_intact(directory, index["layers"].get(name)) or index["layers"][name]["fingerprint"] != fingerprints[name]
    ]
    return BuildPlan(directory, settings, layer_levels, fingerprints, todo)


def remove_temporaries(directory: str | os.PathLike) -> None:
    """Delete the temporaries of a killed writer (before a build starts, never during one)."""
    for leftover in Path(directory).glob(".*.tmp"):
        leftover.unlink()


def build_layers(
    loaded: LoadedModel, calibration_inputs: Sequence[Any], names: Sequence[str], plan: BuildPlan, config: DatabaseConfig,
    seed: int = 0, on_cell: Callable[[str, str, float], None] | None = None,
    hessians: dict[str, torch.Tensor] | None = None,
) -> Iterator[tuple[str, dict]]:
    """Build the layers ``names`` of ``plan``: write each layer's file and yield (name, its index entry).

    Independent of every other layer's build, so any executor may run any subset anywhere that
    reads and writes ``plan.directory``; only ``record_layer`` touches the index.  ``hessians``:
    the layers' H when collected once for the whole build (obs, magnitude)."""
    pruners = layer_pruners(loaded, calibration_inputs, list(names), config, seed, hessians)
    for name, pruner, hessian in pruners:
        dense = loaded.module(name).weight.detach()
        stored, skipped = plan.layer_levels[name]
        output_error = OutputError(dense, hessian)
        weights, errors, masks = {}, {}, {mask_level(level): None for level in stored if is_int8(level)}

        def cell(level: str, weight: torch.Tensor, scale: torch.Tensor | None = None) -> None:
            weights.update(compact.encode(level, weight.to(dense.dtype), scale))
            errors[level] = output_error(weight)
            if on_cell is not None:
                on_cell(name, level, errors[level])

        for level, weight in pruned_levels(pruner, dense, [level for level in stored if not is_int8(level)]):
            cell(level, weight)
            if level in masks:
                masks[level] = weight
        for level, quantized in int8_cells(stored, masks, hessian, config.method, config.damp, config.block_size):
            cell(level, quantized.dequantized, quantized.scale)
        # one metadata key: safetensors writes several in a random order, and the file's sha256 must not vary
        provenance = json.dumps({"layer": name, "fingerprint": plan.fingerprints[name]}, sort_keys=True)
        data = safetensors_bytes(weights, metadata={"spdy": provenance})
        atomic.write_bytes(plan.directory / layer_file_name(name), data)
        yield name, {
            "file": layer_file_name(name), "levels": stored, "skipped": skipped,
            "sha256": hashlib.sha256(data).hexdigest(), "fingerprint": plan.fingerprints[name],
            "settings": plan.settings, "errors": errors,
        }


def record_layer(directory: Path, name: str, entry: dict, order: Sequence[str] = ()) -> None:
    """Add a built layer to ``index.json`` (atomically; the one writer of the index), the layers
    listed in ``order`` (the model's) whatever order they were built in."""
    index = _read_index(directory)
    index["layers"][name] = entry
    if order:
        rank = {layer: position for position, layer in enumerate(order)}
        index["layers"] = dict(sorted(index["layers"].items(), key=lambda item: rank.get(item[0], len(rank))))
    atomic.write_text(directory / INDEX, json.dumps(index, indent=1))


def build_database(
    loaded: LoadedModel,
    calibration_inputs: Sequence[Any],
    layers: Sequence[Layer | str],
    levels: Sequence[str],
    config: DatabaseConfig,
    out_dir: str | os.PathLike,
    on_progress: Progress | None = None,
    seed: int = 0,
) -> "Database":
    """Build (or finish building) the database of ``layers`` (Layer objects or names) at ``levels``, here."""
    remove_temporaries(out_dir)
    plan = plan_database(loaded, calibration_inputs, layers, levels, config, out_dir, seed)
    done = plan.already_done

    def on_cell(name, level, error):
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(name, level, error, done, plan.total)

    for name, entry in build_layers(loaded, calibration_inputs, plan.todo, plan, config, seed, on_cell):
        record_layer(plan.directory, name, entry)
    return Database.open(plan.directory)


# ---------------------------------------------------------------------------- reading
class Database:
    """Lazy reader of a built database: tensors are read one at a time, a few kept in an LRU cache."""

    def __init__(self, directory: Path, entries: dict[str, dict], cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.directory = directory
        self.entries = entries
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._cached_bytes = 0
        self._scales: dict[tuple[str, str], torch.Tensor] = {}

    @classmethod
    def open(cls, directory: str | os.PathLike, cache_bytes: int = DEFAULT_CACHE_BYTES) -> "Database":
        directory = Path(directory)
        entries = _read_index(directory)["layers"]
        if not entries:
            raise FileNotFoundError(f"{directory}: no database (missing or unreadable {INDEX})")
        return cls(directory, entries, cache_bytes)

    @staticmethod
    def is_built(directory: str | os.PathLike) -> bool:
        """True if ``directory`` holds a database index with at least one layer."""
        return bool(_read_index(Path(directory))["layers"])

    @staticmethod
    def is_complete(
        directory: str | os.PathLike, layer_names: Sequence[str], levels: Sequence[str], config: DatabaseConfig,
        seed: int | None = None,
    ) -> bool:
        """True if every layer is stored, intact, at ``levels``, with ``config`` (and ``seed`` when given)."""
        directory = Path(directory)
        entries = _read_index(directory)["layers"]
        wanted = method_settings(config, seed or 0)
        if seed is None:  # the caller does not know the seed: compare everything else
            wanted.pop("seed", None)
        for name in layer_names:
            entry = entries.get(name)
            if not _well_formed(entry):
                return False
            settings = {key: value for key, value in entry["settings"].items() if seed is not None or key != "seed"}
            if settings != wanted or set(entry["levels"]) | set(entry["skipped"]) != set(levels):
                return False
            if not _entry_intact(directory, entry):
                return False
        return True

    @property
    def cached_bytes(self) -> int:
        """Bytes of the tensors held in the cache now (never more than ``cache_bytes``)."""
        return self._cached_bytes

    def layers(self) -> list[str]:
        return list(self.entries)

    def levels(self, layer: str) -> list[str]:
        return list(self._entry(layer)["levels"])

    def errors(self) -> dict[str, dict[str, float]]:
        """Relative output error on the calibration inputs, per layer and level."""
        return {name: dict(entry["errors"]) for name, entry in self.entries.items()}

    def disk_bytes(self) -> int:
        files = [self.directory / entry["file"] for entry in self.entries.values()] + [self.directory / INDEX]
        return sum(path.stat().st_size for path in files if path.exists())

    def verify(self) -> list[str]:
        """Layers whose file is missing or does not match its recorded sha256."""
        return [name for name, entry in self.entries.items() if not _entry_intact(self.directory, entry)]

    def scale(self, layer: str, level: str) -> torch.Tensor:
        """The per-output-channel scales of ``layer`` at an int8 ``level`` (its weight is q * scale)."""
        if (layer, level) not in self._scales:  # a few floats per row: kept for good
            with safe_open(str(self.directory / self._entry(layer)["file"]), framework="pt") as handle:
                self._scales[layer, level] = compact.decode_scale(handle, level)
        return self._scales[layer, level]

    def _entry(self, layer: str) -> dict:
        if layer not in self.entries:
            raise KeyError(f"layer {layer!r} is not in the database at {self.directory}")
        return self.entries[layer]

    def get(self, layer: str, level: str) -> torch.Tensor:
        """The pruned weight of ``layer`` at ``level`` (shared with the cache: do not modify in place)."""
        key = (layer, level)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        entry = self._entry(layer)
        if level not in entry["levels"]:
            reason = entry["skipped"].get(level, "not built")
            raise KeyError(f"level {level!r} of layer {layer!r} is not in the database: {reason}")
        with safe_open(str(self.directory / entry["file"]), framework="pt") as handle:
            tensor = compact.decode(handle, level)
        size = tensor.numel() * tensor.element_size()
        if size <= self.cache_bytes:
            self._cache[key] = tensor
            self._cached_bytes += size
            while self._cached_bytes > self.cache_bytes:
                _, evicted = self._cache.popitem(last=False)
                self._cached_bytes -= evicted.numel() * evicted.element_size()
        return tensor
