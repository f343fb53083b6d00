"""The CPU profiler: every prunable layer's time at every level, on this machine.

For each layer the profiler feeds the input the layer really sees (captured from a forward pass
of the model on ``hardware.batch_size`` real samples) to

* the layer on the model's dense path (the fastest dense path measured end to end, e.g. oneDNN),
* the layer at every sparse level with our unstructured-sparse kernel, the weights being the
  layer's own weights pruned by magnitude to that level,

timed interleaved (``engine.timing.measure``).  ``base`` is the dense model end to end on the
fastest dense path, and ``prunable`` the sum of the layers' dense times, so

    predicted_time = base - prunable + sum_l t[l][level_l]

counts everything outside the pruned layers (attention, norms, GELU, embeddings) at its real cost.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import nn

from engine.environment import describe_environment, fingerprint
from engine.grid import DENSE, level_sparsity
from engine.masks import magnitude_mask
from engine.sparse.dense import densify_fast, onednn_available
from engine.sparse.modules import SparseConv2d, SparseLinear
from engine.timing.measure import time_interleaved
from engine.timing.table import LayerTimes, TimingTable

Progress = Callable[[str, str, float, int, int], None]


def set_threads(threads: int) -> None:
    """Both runtimes on ``threads`` threads.  Numba first: the first ``numba.set_num_threads`` launches
    its OpenMP pool, which resets the process's OpenMP thread count, torch's included (torch then
    ran the dense path on every core while our kernels ran on ``threads``)."""
    import numba

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    torch.set_num_threads(threads)


def sparse_module(layer: nn.Module) -> nn.Module:
    """Our unstructured-sparse kernel for a pruned Linear or Conv2d (its zeros are skipped)."""
    return SparseLinear.from_linear(layer) if isinstance(layer, nn.Linear) else SparseConv2d.from_conv(layer)


def dense_paths(model: nn.Module, names: list[str], only: str | None = None) -> dict[str, nn.Module]:
    """The model on each dense path: "torch" (as loaded) and "onednn" (the named Linears on oneDNN's
    pre-packed GEMM; convolutions already run on oneDNN in torch).  ``only`` builds just one."""
    paths: dict[str, nn.Module] = {}
    if only in (None, "torch"):
        paths["torch"] = model
    if only in (None, "onednn") and onednn_available():
        linears = [name for name in names if isinstance(model.get_submodule(name), nn.Linear)]
        paths["onednn"] = densify_fast(copy.deepcopy(model), linears)
    if only is not None and only not in paths:
        raise ValueError(f"dense path {only!r} is not available here")
    return paths


def capture_inputs(model_run: Callable[[], Any], model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """The input tensor each named layer receives during one forward pass."""
    inputs: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        def hook(_module, args, name=name):
            inputs.setdefault(name, args[0].detach())

        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model_run()
    finally:
        for handle in handles:
            handle.remove()
    return inputs


def choose_dense_path(loaded, example_inputs, names: list[str], hardware) -> tuple[str, nn.Module, dict]:
    """Time the whole dense model on every available dense path; return the fastest."""
    candidates = dense_paths(loaded.model, names)  # name -> model (torch default, oneDNN, ...)
    stats = time_interleaved(
        {path: (lambda m=model: _forward(loaded, m, example_inputs)) for path, model in candidates.items()},
        warmup=hardware.warmup,
        repeats=max(5, hardware.repeats // 2),
        max_spread=hardware.max_spread,
    )
    fastest = min(stats, key=lambda path: stats[path].median)
    return fastest, candidates[fastest], {path: s.to_json() for path, s in stats.items()}


def _forward(loaded, model: nn.Module, inputs: Any):
    with torch.no_grad():
        return loaded.run_model(model, inputs)


def profile_cpu(loaded, example_inputs: Any, layers: list, levels: list[str], hardware, on_progress: Progress | None = None) -> TimingTable:
    """Measure the timing table of ``layers`` (execution order) at ``levels`` on this CPU."""
    set_threads(hardware.threads)
    names = [layer.name for layer in layers]
    dense_name, dense_model, end_to_end = choose_dense_path(loaded, example_inputs, names, hardware)
    inputs = capture_inputs(lambda: _forward(loaded, dense_model, example_inputs), dense_model, names)
    total, done = len(names) * len(levels), 0
    rows, spreads = [], {}
    for name in names:
        module = dense_model.get_submodule(name)
        x = inputs[name]
        variants = {}
        for level in levels:
            if level == DENSE:
                variants[level] = lambda m=module: m(x)
            else:
                pruned = copy.deepcopy(loaded.model.get_submodule(name))
                with torch.no_grad():
                    pruned.weight.mul_(magnitude_mask(pruned.weight, level_sparsity(level)))
                kernel = sparse_module(pruned)
                variants[level] = lambda k=kernel: k(x)
        with torch.no_grad():
            stats = time_interleaved(variants, hardware.warmup, hardware.repeats, hardware.max_spread)
        rows.append(LayerTimes(name, tuple(levels), tuple(stats[level].median for level in levels)))
        spreads[name] = {level: round(stats[level].spread, 4) for level in levels if not stats[level].stable}
        for level in levels:
            done += 1
            if on_progress is not None:
                on_progress(name, level, stats[level].median, done, total)
    environment = describe_environment()
    shapes = {layer.name: list(layer.input_shape) for layer in layers}
    environment["fingerprint"] = timing_fingerprint(environment, hardware, shapes, levels)
    environment["end_to_end"] = end_to_end
    environment["unstable_rows"] = {name: s for name, s in spreads.items() if s}
    base = end_to_end[dense_name]["median"]
    prunable = sum(row.dense_seconds for row in rows)
    return TimingTable(base, prunable, rows, backend="cpu", dense_baseline=dense_name, environment=environment)


def timing_fingerprint(environment: dict, hardware, shapes: dict, levels: list[str]) -> str:
    """What a cached table must match to be reused: machine, libraries, threads, shapes, levels,
    and the backend and CUDA graphs where they differ from the defaults (cpu, off), so that CPU
    fingerprints stay what they were."""
    extra = {}
    if getattr(hardware, "backend", "cpu") != "cpu":
        extra["backend"] = hardware.backend
    if getattr(hardware, "cuda_graphs", False):
        extra["cuda_graphs"] = True
    return fingerprint(
        environment, threads=hardware.threads, batch=hardware.batch_size, dtype=hardware.dtype, shapes=shapes,
        levels=levels, **extra,
    )
