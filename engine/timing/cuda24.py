"""The GPU 2:4 profiler (``hardware.backend = "cuda-2:4"``; its verify is ``engine.backends.cuda24``).

Every layer has two choices, dense and "2:4" (spdy-method.md §7; field-notes "GPU 2:4").  The
model runs on the GPU in ``hardware.dtype`` (float16 or bfloat16) and, for each prunable layer,
on the input it really sees (captured from a forward pass on ``hardware.batch_size`` samples),
the profiler times, interleaved (``engine.core.measure`` with CUDA events,
``engine.timing.cuda_events``):

* the layer dense, in the same dtype (cuBLAS through ``F.linear``),
* every candidate 2:4 kernel of the layer's own weight pruned to magnitude 2:4
  (``engine.runtime.semi24``: cuSPARSELt at alg_id 0 and at its searched alg_id, CUTLASS),

and keeps the fastest candidate as the layer's 2:4 time, recording which kernel won
(``environment["kernels"]``; ``verify_cuda24`` rebuilds exactly that kernel).  A layer the kernels
cannot run (a Conv2d, a shape that is not a multiple of the kernels' tiles) keeps only its dense
level, and its row's note says why.  A 2:4 time above the dense one is kept as measured: the DP
then leaves the layer dense.  As on the CPU,

    base = the dense model end to end on the GPU in that dtype,   prunable = sum_l t[l][dense],

so that  predicted_time = base - prunable + sum_l t[l][level_l].

``device`` and ``kernels`` are parameters so that the whole flow also runs on the CPU with
stand-in kernels in the tests; on the CPU the wall clock replaces the CUDA events.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Protocol

import torch
from torch import nn

from engine.core.environment import describe_environment
from engine.core.grid import DENSE, nm_levels
from engine.core.masks import nm_mask
from engine.core.errors import RunError
from engine.runtime.semi24 import DTYPES, TWO_FOUR, Semi24Kernels, error_line, unavailable_reason
from engine.runtime.execution import capture_inputs, forward
from engine.core.measure import Stats, time_interleaved
from engine.timing.table import LayerTimes, TimingTable

LEVELS = nm_levels(2, 4)  # ["0.0000", "2:4"]
TWO_FOUR_LEVEL = TWO_FOUR.label


class Kernels(Protocol):
    """What the profiler needs from a 2:4 kernel family (``engine.runtime.semi24.Semi24Kernels``)."""

    def ineligibility(self, module: nn.Module) -> str | None: ...

    def candidates(self, module: nn.Linear, x: torch.Tensor) -> tuple[dict[str, nn.Module], dict]: ...

    def build(self, module: nn.Linear, info: dict | None = None) -> nn.Module: ...


# ---------------------------------------------------------------------------- shared helpers
def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"hardware.dtype {name!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[name]


def check_device(device: torch.device) -> None:
    """Fail early, with the reason and what to do, where the 2:4 kernels cannot run (a user error, exit code 2)."""
    if device.type == "cuda":
        reason = unavailable_reason()
        if reason is not None:
            raise RunError(
                f"hardware.backend 'cuda-2:4' cannot run here: {reason}. Run on an NVIDIA GPU with compute "
                "capability >= 8.0, or set hardware.timings to a table measured on one"
            )


def on_device(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A copy of ``model`` with its floating-point parameters and buffers in ``dtype`` on ``device``."""
    return copy.deepcopy(model).to(device=device, dtype=dtype).eval()


def inputs_on(inputs: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Model inputs on ``device``; floating tensors (images) in ``dtype``, integer ones (token ids) as they are."""
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device=device, dtype=dtype) if inputs.is_floating_point() else inputs.to(device)
    if isinstance(inputs, dict):
        return {key: inputs_on(value, device, dtype) for key, value in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(inputs_on(value, device, dtype) for value in inputs)
    return inputs


def device_timer(device: torch.device, calls: int):
    """CUDA events on the GPU (``calls`` per sample); the wall clock (None) on the CPU."""
    if device.type != "cuda":
        return None
    from engine.timing.cuda_events import CudaEventTimer

    return CudaEventTimer(calls)


def _calls_per_sample(device: torch.device, call: Callable[[], object]) -> int:
    if device.type != "cuda":
        return 1
    from engine.timing.cuda_events import calls_for, estimate_seconds

    return calls_for(estimate_seconds(call))


def graphed_variants(variants: dict[str, Callable[[], object]]) -> tuple[dict[str, Callable[[], object]], str]:
    """Each variant replayed from a CUDA graph; the eager variants and a note if one cannot be captured."""
    from engine.timing.cuda_events import graphed

    try:
        return {label: graphed(call) for label, call in variants.items()}, ""
    except Exception as exc:  # e.g. an op that cannot be captured
        torch.cuda.synchronize()
        return variants, f"not timed as a CUDA graph ({error_line(exc)})"


def _two_four_weight(dense: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The layer's weight pruned to magnitude 2:4 (mask chosen in float32 on the CPU), in ``dtype`` on ``device``."""
    weight = dense.detach().float().cpu()
    return (weight * nm_mask(weight, TWO_FOUR)).to(device=device, dtype=dtype)


# ---------------------------------------------------------------------------- the profiler
def profile_cuda24(
    loaded, example_inputs: Any, layers: list, hardware, log=None, *, device: str | torch.device = "cuda",
    kernels: Kernels | None = None,
) -> TimingTable:
    """Measure the dense and 2:4 times of ``layers`` (execution order) on this GPU in ``hardware.dtype``.

    ``log``: the run log (``timing`` events, as the CPU profiler emits), or None."""
    device = torch.device(device)
    check_device(device)
    dtype = torch_dtype(hardware.dtype)
    kernels = kernels or Semi24Kernels(dtype)
    use_graphs = bool(getattr(hardware, "cuda_graphs", False)) and device.type == "cuda"
    model = on_device(loaded.model, device, dtype)
    inputs = inputs_on(example_inputs, device, dtype)
    names = [layer.name for layer in layers]

    def whole_model():
        return forward(loaded, model, inputs)

    end_to_end_call, end_to_end_note = whole_model, ""
    if use_graphs:  # base as a graph too, so that base - prunable holds no launch costs the layers' times lack
        replays, end_to_end_note = graphed_variants({"dense": whole_model})
        if end_to_end_note:  # the whole model cannot be captured: everything eager, so base and layers agree
            use_graphs = False
        else:
            end_to_end_call = replays["dense"]
    end_to_end = time_interleaved(
        {"dense": end_to_end_call}, hardware.warmup, max(5, hardware.repeats // 2), hardware.max_spread,
        timer=device_timer(device, 1),
    )["dense"]
    captured = capture_inputs(whole_model, model, names)
    rows, kernel_records, unstable = [], {}, {}
    total = sum(len(LEVELS) if kernels.ineligibility(model.get_submodule(name)) is None else 1 for name in names)
    done = 0
    for name in names:
        row, record, stats = _profile_layer(loaded, model, name, captured[name], hardware, device, dtype, kernels, use_graphs)
        rows.append(row)
        if record:
            kernel_records[name] = record
        spreads = {label: round(s.spread, 4) for label, s in stats.items() if not s.stable}
        if spreads:
            unstable[name] = spreads
        for level, seconds in zip(row.levels, row.seconds):
            done += 1
            if log is not None:
                kernel = "dense" if level == DENSE else record.get("label", "")
                log.emit("timing", layer=name, level=level, seconds=seconds, done=done, total=max(total, done), kernel=kernel)
    environment = describe_environment()
    environment.update(
        device=str(device), dtype=hardware.dtype, cuda_graphs=use_graphs, timer="cuda events" if device.type == "cuda" else "wall clock",
        end_to_end={"dense": end_to_end.to_json(), **({"note": f"whole model {end_to_end_note}"} if end_to_end_note else {})},
        kernels=kernel_records, unstable_rows=unstable,
        backends=kernels.library_report() if hasattr(kernels, "library_report") else {},
    )
    prunable = math.fsum(row.dense_seconds for row in rows)
    return TimingTable(
        end_to_end.median, prunable, rows, backend="cuda-2:4", dense_baseline=f"torch-{hardware.dtype}",
        environment=environment,
    )


def _profile_layer(
    loaded, model: nn.Module, name: str, x: torch.Tensor, hardware, device: torch.device, dtype: torch.dtype,
    kernels: Kernels, use_graphs: bool,
) -> tuple[LayerTimes, dict, dict[str, Stats]]:
    """One layer's row: dense and (if a kernel can run it) the fastest 2:4 candidate, timed interleaved."""
    module = model.get_submodule(name)
    variants: dict[str, Callable[[], object]] = {"dense": lambda: module(x)}
    reason = kernels.ineligibility(module)
    candidates: dict[str, nn.Module] = {}
    notes: dict = {}
    if reason is None:
        pruned = copy.deepcopy(module)
        with torch.no_grad():
            pruned.weight.copy_(_two_four_weight(loaded.model.get_submodule(name).weight, device, dtype))
        candidates, notes = kernels.candidates(pruned, x)
        if not candidates:
            reason = "no 2:4 kernel accepted the layer"
        for label, kernel in candidates.items():
            variants[label] = lambda kernel=kernel: kernel(x)
    graph_note = ""
    with torch.no_grad():
        calls = _calls_per_sample(device, variants["dense"])
        if use_graphs:
            variants, graph_note = graphed_variants(variants)
        stats = time_interleaved(variants, hardware.warmup, hardware.repeats, hardware.max_spread, timer=device_timer(device, calls))
    dense_seconds = stats["dense"].median
    if not candidates:
        note = f"dense only: {reason}"
        return LayerTimes(name, (DENSE,), (dense_seconds,), "; ".join(filter(None, [note, graph_note]))), {}, stats
    best = min(candidates, key=lambda label: stats[label].median)
    record = {
        **getattr(candidates[best], "info", {}), "label": best, "calls_per_sample": calls,
        "candidates": {label: stats[label].median for label in candidates}, **notes,
    }
    note = f"2:4 kernel: {best}"
    row = LayerTimes(name, tuple(LEVELS), (dense_seconds, stats[best].median), "; ".join(filter(None, [note, graph_note])))
    return row, record, stats
