"""The CPU profiler: every prunable layer's time at every level, on this machine.

Each layer runs

* on the model's dense path (the fastest dense path measured end to end, e.g. oneDNN), and
* at every sparse level on our unstructured-sparse kernel, with the layer's own weights pruned
  by magnitude to that level,

fed the input it really sees (``hardware.batch_size`` real samples), and is timed either alone on
its captured input, levels interleaved (``engine.core.measure``, the default), or inside forward
passes of the whole model (``engine.timing.in_model``).  ``base`` is the dense model end to
end on the fastest dense path (sampled between the layers, or in the in-model passes, so over the
same minutes as them), and ``prunable`` the sum of the layers' dense times, so

    predicted_time = base - prunable + sum_l t[l][level_l]

counts everything outside the pruned layers (attention, norms, GELU, embeddings) at its real cost.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from engine.core.environment import describe_environment
from engine.core.grid import DENSE, is_int8, level_sparsity
from engine.core.masks import magnitude_mask
from engine.runtime.execution import capture_inputs, forward, set_threads
from engine.runtime.paths import reference_paths
from engine.runtime.int8 import quantize_weight
from engine.runtime.modules import CompiledInt8, int8_module, replace_submodule, sparse_module
from engine.timing.calibrate import DENSE_INT8, calibrate_int8
from engine.timing.in_model import Progress, switched_model, time_in_model
from engine.core.measure import Stats, summarise, time_interleaved
from engine.timing.table import LayerTimes, TimingTable


@dataclass
class DensePaths:
    """The dense model on every path measured here, end to end, side by side.

    ``layer_path``: the faster of torch and oneDNN, whose modules the layers' dense times are taken
    from (inductor runs the dense Linears of a compiled model on the same pre-packed GEMM);
    ``runtime_path``: the path of the runtime that will run the pruned model ("compiled", or
    ``layer_path`` for the eager runtime); ``reference``: the fastest of all, the speedup's baseline."""

    stats: dict
    layer_path: str
    layer_model: nn.Module
    runtime_path: str
    run_runtime: Callable[[], Any]
    reference: str
    missing: dict

    def reference_ratio(self) -> float:
        """reference time / runtime time, from the same interleaved rounds."""
        return self.stats[self.reference].median / self.stats[self.runtime_path].median


def measure_dense_paths(loaded, example_inputs, names: list[str], hardware, workdir=None) -> DensePaths:
    """Time the whole dense model on every available dense path, interleaved (``engine.runtime.paths``)."""
    runtime = getattr(hardware, "runtime", "eager")
    wanted = list(getattr(hardware, "reference_paths", ["torch", "onednn"]))
    if runtime == "compiled" and "compiled" not in wanted:
        wanted.append("compiled")  # our runtime's dense model: the base
    runners, eager, missing = reference_paths(
        loaded.model, names, example_inputs, loaded.run_model, hardware.threads, wanted, workdir=workdir,
    )
    stats = time_interleaved(
        runners, warmup=max(1, hardware.warmup), repeats=max(5, hardware.repeats // 2), max_spread=hardware.max_spread,
    )
    layer_path = min((name for name in eager), key=lambda name: stats[name].median)
    runtime_path = "compiled" if runtime == "compiled" else layer_path
    # the reference: the fastest of the wanted paths and of our own runtime's dense model
    reference = min((name for name in stats if name in wanted or name == runtime_path), key=lambda name: stats[name].median)
    return DensePaths(stats, layer_path, eager[layer_path], runtime_path, runners[runtime_path], reference, missing)


def profile_cpu(
    loaded, example_inputs: Any, layers: list, levels: list[str], hardware, on_progress: Progress | None = None, seed: int = 0
) -> TimingTable:
    """Measure the timing table of ``layers`` (execution order) at ``levels`` on this CPU.

    ``hardware.layer_timing`` says where each (layer, level) is timed: "alone" (the default: each
    layer on its captured input) or "in-model" (``engine.timing.in_model``: inside whole forward
    passes).  Measured side by side (benchmarks/bench_profiler.py, docs/benchmarks.md), the alone
    table predicts end-to-end speedups without bias (median measured/predicted 1.00 on MiniLM and
    on the digits model) and the in-model table does not do better (0.985 and 0.956), although
    layers are slower inside the model: the base is measured end to end, so the excess is
    counted once either way.  ``seed`` draws the in-model pass order."""
    set_threads(hardware.threads)
    names = [layer.name for layer in layers]
    paths = measure_dense_paths(loaded, example_inputs, names, hardware)
    dense_model = paths.layer_model
    if getattr(hardware, "layer_timing", "alone") == "alone":
        stats, base_stats = _time_alone(loaded, example_inputs, dense_model, names, levels, hardware, on_progress, paths.run_runtime)
        base, extra = base_stats.median, {"base": base_stats.to_json()}
    else:
        stats, base, extra = _time_in_model(loaded, example_inputs, dense_model, names, levels, hardware, on_progress, seed)
    rows = [LayerTimes(name, tuple(levels), tuple(stats[name][level].median for level in levels)) for name in names]
    unstable = {
        name: {level: round(s.spread, 4) for level, s in stats[name].items() if not s.stable} for name in names
    }
    environment = describe_environment()
    environment["end_to_end"] = {name: stat.to_json() for name, stat in paths.stats.items()}
    environment["dense_layer_path"] = paths.layer_path
    environment["runtime"] = getattr(hardware, "runtime", "eager")
    environment["reference_paths_missing"] = paths.missing
    environment["unstable_rows"] = {name: s for name, s in unstable.items() if s}
    environment["layer_timing"] = getattr(hardware, "layer_timing", "alone")
    environment.update(extra)
    prunable = sum(stats[name][DENSE].median for name in names)
    warnings = []
    if prunable > base:  # the layers' medians and the end-to-end median come from different samples
        warnings.append(
            f"the dense layers' times add up to {prunable * 1e3:.3f} ms, more than the dense model end to end "
            f"({base * 1e3:.3f} ms): measurement noise; re-measure with more repeats"
        )
    table = TimingTable(
        base, prunable, rows, backend="cpu", dense_baseline=paths.reference, environment=environment, warnings=warnings,
        baseline_seconds=base * paths.reference_ratio(),
    )
    if getattr(hardware, "runtime", "eager") == "compiled" and any(is_int8(level) for level in levels):
        uniform_int8 = stand_in_model(loaded.model, loaded.model, {name: DENSE_INT8 for name in names})
        table = calibrate_int8(table, uniform_int8, loaded.run_model, example_inputs, hardware, paths.run_runtime)
    return table


def _time_alone(loaded, example_inputs, dense_model, names, levels, hardware, on_progress, run_base) -> tuple[dict, Stats]:
    """Each layer alone on the input it sees in the model, its levels interleaved; and the base.

    The base (the dense model end to end) is sampled between the layers, ``ceil(repeats / layers)``
    passes after each, so that it is measured over the same minutes as the layers: on a shared
    machine the speed drifts over minutes (MiniLM's dense model measured 253-318 ms in five runs
    within three minutes), and a base taken in one burst before the layers can be off by 10% while
    the layers' sum is not (docs/benchmarks.md)."""
    inputs = capture_inputs(lambda: forward(loaded, dense_model, example_inputs), dense_model, names)
    compiled = getattr(hardware, "runtime", "eager") == "compiled"
    total, done = len(names) * len(levels), 0
    stats, base_samples = {}, []
    passes_per_layer = -(-hardware.repeats // max(1, len(names)))
    for name in names:
        x = inputs[name]
        variants = {
            level: (lambda m=layer_at_level(dense_model, loaded.model, name, level, compiled): m(x)) for level in _with_dense(levels)
        }
        with torch.no_grad():
            stats[name] = time_interleaved(variants, hardware.warmup, hardware.repeats, hardware.max_spread)
        for _ in range(passes_per_layer):
            started = time.perf_counter()
            run_base()
            base_samples.append(time.perf_counter() - started)
        for level in levels:
            done += 1
            if on_progress is not None:
                on_progress(name, level, stats[name][level].median, done, total)
    return stats, summarise(base_samples)


def _time_in_model(loaded, example_inputs, dense_model, names, levels, hardware, on_progress, seed):
    """Every level of every layer inside forward passes of the model (``engine.timing.in_model``)."""
    model = copy.deepcopy(dense_model)
    timed = _with_dense(levels)
    switches = switched_model(
        model, {name: {level: layer_at_level(dense_model, loaded.model, name, level) for level in timed} for name in names}
    )
    measured = time_in_model(
        lambda m: loaded.run_model(m, example_inputs), model, switches, timed,
        rounds=hardware.repeats, max_spread=hardware.max_spread, seed=seed, warmup=hardware.warmup > 0,
        on_progress=on_progress,
    )
    return measured.cells, measured.base.median, {"in_model": measured.summary()}


def _with_dense(levels: list[str]) -> list[str]:
    """The levels to time: ``levels`` and dense, always (prunable is the sum of the dense times)."""
    return list(levels) if DENSE in levels else [DENSE, *levels]


def layer_at_level(dense_model: nn.Module, original: nn.Module, name: str, level: str, compiled: bool = False) -> nn.Module:
    """Layer ``name`` as timed at ``level``: the dense-path module at DENSE, otherwise our sparse
    kernel on the original weights pruned by magnitude to the level's sparsity (its time depends on
    the number and layout of the non-zeros, not on their values); an int8 level on the module that
    runs it (``engine.runtime.modules.int8_module``), its weights rounded to int8, ``compiled`` for the
    compiled runtime (``CompiledInt8``: quantization fused as inductor fuses it in the model)."""
    if level == DENSE:
        return dense_model.get_submodule(name)
    pruned = copy.deepcopy(original.get_submodule(name))
    with torch.no_grad():
        pruned.weight.mul_(magnitude_mask(pruned.weight, level_sparsity(level)))
    if is_int8(level):
        module = int8_module(*quantize_weight(pruned.weight), pruned.bias, level)
        return CompiledInt8(module) if compiled else module
    return sparse_module(pruned)


def stand_in_model(dense_model: nn.Module, original: nn.Module, levels: dict[str, str]) -> nn.Module:
    """An allocation as the profiler times it: a copy of ``dense_model`` with every layer at a sparse
    level replaced by ``layer_at_level`` (magnitude-pruned original weights on our kernels)."""
    model = copy.deepcopy(dense_model)
    for name, level in levels.items():
        if level != DENSE:
            replace_submodule(model, name, layer_at_level(dense_model, original, name, level))
    return model
