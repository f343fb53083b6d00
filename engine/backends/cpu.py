"""The CPU backend (``hardware.backend = "cpu"``): unstructured-sparse levels on our Numba kernels.

Profile: ``engine.timing.cpu.profile_cpu``.  Verify, the end-to-end proof of the speedup: the
sparse model is the final model (stitched at the chosen allocation, possibly fine-tuned) with
every layer at a sparse level replaced by its unstructured-sparse kernel, and every other
prunable layer on the same dense path as the baseline.  Before timing, its output is checked
against the same model computed densely with exact zeros (fp32 rounding only).  Dense and sparse
are then timed end to end, interleaved, on the profile's batch and threads:

    measured_speedup = median(dense seconds) / median(sparse seconds).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from engine.backends.verify import VerifyError, outcome
from engine.core.environment import fingerprint
from engine.core.grid import DENSE
from engine.core.measure import time_interleaved
from engine.runtime.csr import KERNEL_VERSION
from engine.runtime.execution import dense_paths, forward, set_threads
from engine.runtime.modules import replace_submodule, sparse_module
from engine.timing.cpu import profile_cpu
from engine.timing.table import TimingTable


def build_sparse_model(final: nn.Module, levels: dict[str, str], dense_baseline: str) -> nn.Module:
    """A copy of ``final`` with sparse kernels in pruned layers and the dense path elsewhere."""
    dense_names = [name for name, level in levels.items() if level == DENSE]
    model = dense_paths(copy.deepcopy(final), dense_names, only=dense_baseline)[dense_baseline]
    for name, level in levels.items():
        if level != DENSE:
            replace_submodule(model, name, sparse_module(final.get_submodule(name)))
    return model.eval()


def verify(loaded, final: nn.Module, levels: dict[str, str], example_inputs: Any, table, hardware, predicted: float) -> dict:
    """Check outputs, then measure dense vs sparse end to end; returns the ``verify`` event fields."""
    set_threads(hardware.threads)
    dense_name = table.dense_baseline or "torch"
    dense_model = dense_paths(copy.deepcopy(loaded.model), list(levels), only=dense_name)[dense_name].eval()
    sparse_model = build_sparse_model(final, levels, dense_name)
    expected = forward(loaded, final, example_inputs)
    got = forward(loaded, sparse_model, example_inputs)
    error = float((got - expected).abs().max())
    scale = float(expected.abs().max()) or 1.0
    if not torch.allclose(got, expected, rtol=1e-3, atol=1e-4 * scale):
        raise VerifyError(f"sparse kernels disagree with the pruned model: max abs difference {error:.3g}")
    stats = time_interleaved(
        {"dense": lambda: forward(loaded, dense_model, example_inputs), "sparse": lambda: forward(loaded, sparse_model, example_inputs)},
        warmup=hardware.warmup,
        repeats=hardware.repeats,
        max_spread=hardware.max_spread,
    )
    return outcome(predicted, stats["dense"], stats["sparse"], dense_name, error)


class CpuBackend:
    """``hardware.backend = "cpu"``: the levels of the grid on our unstructured-sparse kernels."""

    name = "cpu"

    def fingerprint(self, environment: dict, hardware, shapes: dict, levels: list[str]) -> str:
        """What a cached CPU table must match: machine, libraries, threads, batch, shapes, levels, our
        kernels' version, and the way layers were timed where it is not the default ("alone")."""
        extra: dict = {"kernel": KERNEL_VERSION}
        if getattr(hardware, "layer_timing", "alone") != "alone":
            extra["layer_timing"] = hardware.layer_timing
        if getattr(hardware, "cuda_graphs", False):
            extra["cuda_graphs"] = True
        return fingerprint(
            environment, threads=hardware.threads, batch=hardware.batch_size, dtype=hardware.dtype, shapes=shapes,
            levels=levels, **extra,
        )

    def profile(self, loaded, example_inputs: Any, layers: list, levels: list[str], hardware, log, seed: int) -> TimingTable:
        def progress(layer, level, seconds, done, total):
            log.emit("timing", layer=layer, level=level, seconds=seconds, done=done, total=total)

        table = profile_cpu(loaded, example_inputs, layers, levels, hardware, progress, seed=seed)
        shapes = {layer.name: list(layer.input_shape) for layer in layers}
        table.environment["fingerprint"] = self.fingerprint(table.environment, hardware, shapes, levels)
        return table

    def build(self, loaded, final: nn.Module, levels: dict[str, str], table: TimingTable, hardware) -> nn.Module:
        set_threads(hardware.threads)
        return build_sparse_model(final, levels, table.dense_baseline or "torch")

    def verify(self, loaded, final: nn.Module, levels: dict[str, str], example_inputs: Any, table: TimingTable,
               hardware, predicted: float) -> dict:
        return verify(loaded, final, levels, example_inputs, table, hardware, predicted)
