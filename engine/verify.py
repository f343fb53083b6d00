"""End-to-end proof of the speedup: the pruned model with sparse kernels against the dense model.

The sparse model is the final model (stitched at the chosen allocation, possibly fine-tuned) with
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

from engine.grid import DENSE
from engine.sparse.modules import replace_submodule
from engine.timing.cpu import dense_paths, set_threads, sparse_module
from engine.timing.measure import time_interleaved


class VerifyError(RuntimeError):
    """The sparse-kernel model does not compute what the pruned model computes."""


def build_sparse_model(final: nn.Module, levels: dict[str, str], dense_baseline: str) -> nn.Module:
    """A copy of ``final`` with sparse kernels in pruned layers and the dense path elsewhere."""
    dense_names = [name for name, level in levels.items() if level == DENSE]
    model = dense_paths(copy.deepcopy(final), dense_names, only=dense_baseline)[dense_baseline]
    for name, level in levels.items():
        if level != DENSE:
            replace_submodule(model, name, sparse_module(final.get_submodule(name)))
    return model.eval()


def _run(loaded, model: nn.Module, inputs: Any) -> torch.Tensor:
    with torch.no_grad():
        return loaded.run_model(model, inputs)


def verify(loaded, final: nn.Module, levels: dict[str, str], example_inputs: Any, table, hardware, predicted: float) -> dict:
    """Check outputs, then measure dense vs sparse end to end; returns the ``verify`` event fields."""
    set_threads(hardware.threads)
    dense_name = table.dense_baseline or "torch"
    dense_model = dense_paths(copy.deepcopy(loaded.model), list(levels), only=dense_name)[dense_name].eval()
    sparse_model = build_sparse_model(final, levels, dense_name)
    expected = _run(loaded, final, example_inputs)
    got = _run(loaded, sparse_model, example_inputs)
    error = float((got - expected).abs().max())
    scale = float(expected.abs().max()) or 1.0
    if not torch.allclose(got, expected, rtol=1e-3, atol=1e-4 * scale):
        raise VerifyError(f"sparse kernels disagree with the pruned model: max abs difference {error:.3g}")
    stats = time_interleaved(
        {"dense": lambda: _run(loaded, dense_model, example_inputs), "sparse": lambda: _run(loaded, sparse_model, example_inputs)},
        warmup=hardware.warmup,
        repeats=hardware.repeats,
        max_spread=hardware.max_spread,
    )
    return outcome(predicted, stats["dense"], stats["sparse"], dense_name, error)


def outcome(predicted: float, dense, sparse, dense_baseline: str, error: float) -> dict:
    """The ``verify`` event fields from the dense and sparse end-to-end ``Stats``."""
    return {
        "predicted": predicted,
        "measured": dense.median / sparse.median,
        "dense_seconds": dense.median,
        "sparse_seconds": sparse.median,
        "dense_spread": dense.spread,
        "sparse_spread": sparse.spread,
        "dense_baseline": dense_baseline,
        "max_abs_difference": error,
    }
