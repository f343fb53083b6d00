"""The little-data N:M pipeline (spdy-method.md §5, §7): magnitude N:M, layer-wise AdaPrune, global AdaPrune.

For the chosen layers l (every eligible layer: ``uniform_24``; the 2:4 layers of an SPDY
allocation: ``allocation_nm``):

1. magnitude mask: in every group of M consecutive inputs keep the N largest |w|
   (``engine.masks.nm_mask``), M_l fixed from here on;
2. layer-wise AdaPrune on the dense model's inputs X_l (``engine.database.reconstruct.AdaPruner``),

       min over W_s (W_s = W_s * M_l)  of  ||(W_s - W_l) X_l||^2 / ||W_l X_l + b_l||^2,

   Adam (lr 1e-3), each layer independently;
3. global AdaPrune on the model's own activations (``engine.gap.global_adaprune``),

       min over all parameters  of  sum_k ||y_k^sparse - y_k^dense||^2 / ||y_k^dense||^2,

   the sum over every prunable layer k (pruned or not), all masks re-applied after every step.

Each pruned layer's relative output error err = ||(W_s - W) X||^2 / ||W X||^2 on the calibration
inputs is reported after magnitude pruning, after AdaPrune and after global AdaPrune
(``engine.database.reconstruct.OutputError``), so the gain of every step is visible.  The N:M database of
``spdy run`` (``database.method = "adaprune"``, ``grid.pattern = "nm"``) holds step 2's weights and
``export.gap`` runs step 3 on the final model; this module runs the same steps outside a run.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import nn

from engine.core.profile import DatabaseConfig
from engine.database.gap import global_adaprune
from engine.core.grid import DENSE, NM, parse_nm
from engine.core.masks import nm_ineligibility, nm_mask
from engine.database.reconstruct import OutputError, layer_pruners

if TYPE_CHECKING:
    from engine.model.sources import LoadedModel

Eligibility = Callable[[str, nn.Module], "str | None"]  # (name, module) -> why it stays dense, or None


@dataclass(frozen=True)
class NMSettings:
    n: int = 2
    m: int = 4
    passes: int = 10  # layer-wise AdaPrune passes over the calibration set (spdy-method.md §5.1)
    batch_size: int = 32  # layer-wise AdaPrune batch size
    lr: float = 1e-3  # layer-wise AdaPrune Adam learning rate
    gap_passes: int = 2  # global AdaPrune passes over the calibration batches (0: skip it)
    gap_lr: float = 1e-5  # global AdaPrune Adam learning rate
    seed: int = 0

    @property
    def nm(self) -> NM:
        return NM(self.n, self.m)


@dataclass
class NMResult:
    model: nn.Module  # a pruned copy; the loaded model is left dense
    pruned: list[str]  # layers at N:M, execution order
    dense: dict[str, str] = field(default_factory=dict)  # layers left dense -> why
    errors: dict[str, dict[str, float]] = field(default_factory=dict)  # layer -> {"magnitude", "adaprune", "gap"}

    def mean_error(self, step: str) -> float:
        values = [errors[step] for errors in self.errors.values() if step in errors]
        return math.fsum(values) / len(values) if values else float("nan")


def prune_nm(
    loaded: LoadedModel,
    calibration_inputs: Sequence[Any],
    names: list[str],
    settings: NMSettings = NMSettings(),
    dense: dict[str, str] | None = None,
    on_layer: Callable[[str, dict[str, float]], None] | None = None,
) -> NMResult:
    """Run the three steps on ``names`` (execution order); every other layer stays dense."""
    nm = settings.nm
    for name in names:
        reason = nm_ineligibility(tuple(loaded.module(name).weight.shape), nm)
        if reason is not None:
            raise ValueError(f"layer {name} cannot be pruned to {nm.label}: {reason}")
    config = DatabaseConfig(method="adaprune", passes=settings.passes, batch_size=settings.batch_size, lr=settings.lr)
    weights: dict[str, torch.Tensor] = {}
    errors: dict[str, dict[str, float]] = {}
    hessians: dict[str, torch.Tensor] = {}
    for name, pruner, hessian in layer_pruners(loaded, calibration_inputs, names, config, settings.seed):
        original = loaded.module(name).weight.detach()
        error = OutputError(original, hessian)
        magnitude = original * nm_mask(original, nm)
        weights[name] = pruner.prune_nm(original, nm)
        errors[name] = {"magnitude": error(magnitude), "adaprune": error(weights[name])}
        hessians[name] = hessian
        if on_layer is not None:
            on_layer(name, errors[name])
    model = copy.deepcopy(loaded.model).eval()
    with torch.no_grad():
        for name, weight in weights.items():
            model.get_submodule(name).weight.copy_(weight)
    if settings.gap_passes > 0 and names:
        loss_layers = loaded.layer_names or names
        global_adaprune(
            loaded.model, model, loss_layers, list(calibration_inputs), loaded.run_model,
            passes=settings.gap_passes, lr=settings.gap_lr,
        )
        for name in names:
            after = model.get_submodule(name).weight.detach()
            errors[name]["gap"] = OutputError(loaded.module(name).weight.detach(), hessians[name])(after)
    return NMResult(model.eval(), list(names), dict(dense or {}), errors)


def eligible_layers(
    loaded: LoadedModel, nm: NM, first_last_dense: bool = True, kernel_check: Eligibility | None = None
) -> tuple[list[str], dict[str, str]]:
    """(layers to prune, {layer kept dense: why}) over ``loaded.layers`` in execution order.

    A layer stays dense if it is the first or last prunable layer (``first_last_dense``, as the
    original N:M pipeline keeps ``conv1`` and ``fc``), if its input dimension is not a multiple
    of M, or if ``kernel_check`` gives a reason (e.g. the GPU kernels cannot run its shape)."""
    names = loaded.layer_names
    if not names:
        raise ValueError("the model has no traced prunable layers (load it with engine.models.load, or trace_layers)")
    chosen, dense = [], {}
    for position, name in enumerate(names):
        module = loaded.module(name)
        if first_last_dense and position in (0, len(names) - 1):
            dense[name] = "first layer" if position == 0 else "last layer"
            continue
        reason = nm_ineligibility(tuple(module.weight.shape), nm)
        if reason is None and kernel_check is not None:
            reason = kernel_check(name, module)
        if reason is None:
            chosen.append(name)
        else:
            dense[name] = reason
    return chosen, dense


def uniform_24(
    loaded: LoadedModel,
    calibration_inputs: Sequence[Any],
    settings: NMSettings = NMSettings(),
    first_last_dense: bool = True,
    kernel_check: Eligibility | None = None,
    on_layer: Callable[[str, dict[str, float]], None] | None = None,
) -> NMResult:
    """Every eligible layer at N:M (2:4 by default), the original uniform N:M pipeline."""
    names, dense = eligible_layers(loaded, settings.nm, first_last_dense, kernel_check)
    return prune_nm(loaded, calibration_inputs, names, settings, dense, on_layer)


def allocation_nm(
    loaded: LoadedModel,
    calibration_inputs: Sequence[Any],
    levels: dict[str, str],
    settings: NMSettings = NMSettings(),
    on_layer: Callable[[str, dict[str, float]], None] | None = None,
) -> NMResult:
    """The layers an allocation (layer -> level, e.g. an SPDY result over {dense, 2:4}) puts at N:M."""
    order = loaded.layer_names or list(levels)
    unknown = [name for name in levels if name not in order]
    if unknown:
        raise ValueError(f"allocation names layer(s) the model does not list: {', '.join(unknown[:5])}")
    names, dense = [], {}
    for name in order:
        level = levels.get(name, DENSE)
        if level == DENSE:
            dense[name] = "dense in the allocation"
        elif parse_nm(level) == settings.nm:
            names.append(name)
        else:
            raise ValueError(f"layer {name}: level {level!r} is neither dense nor {settings.nm.label}")
    return prune_nm(loaded, calibration_inputs, names, settings, dense, on_layer)
