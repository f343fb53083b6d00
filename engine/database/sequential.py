"""Sequential OBS: the chosen allocation rebuilt layer by layer from the inputs the pruned model produces.

The database reconstructs every (layer, level) from the dense model's inputs X, so cells are
independent and the search can mix them freely.  Once the allocation is fixed, each layer can
instead be reconstructed from the inputs it will really see, X~, those of the model whose
earlier layers are already pruned (SparseGPT's sequential mode): in forward order, layer l's

    H~_l = 2 X~_l X~_l^T,   X~_l = layer l's inputs with layers 1 .. l-1 at their chosen weights,

and the same OBS sweep and refit as the database (``engine.database.reconstruct.ObsPruner``,
levels incremental from dense up to the chosen one) give its weight.  Layers that read the same
input tensor (a transformer's query, key and value) share one pass over the calibration batches.

``rebuild`` returns the weights and leaves the model dense; with ``sequential=False`` every
Hessian comes from one dense pass, which reproduces the database's cells exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import nn

from engine.core.grid import level_sparsity
from engine.core.profile import DatabaseConfig
from engine.database.reconstruct import ObsPruner, pruned_levels
from engine.model.layer_inputs import collect_hessians, hessian_of, padding_mask, real_tokens

if TYPE_CHECKING:
    from engine.model.sources import LoadedModel


class _PassDone(Exception):
    """Raised by a hook once the layers sharing the first layer's input have had it."""


def shared_input_hessians(
    loaded: LoadedModel, calibration_inputs: Sequence[Any], modules: dict[str, nn.Module], first: str
) -> dict[str, torch.Tensor]:
    """H = 2 X X^T of ``first`` and of every other layer in ``modules`` that reads the very same input
    tensor, over the calibration batches on the model as it is now; each forward pass stops at the
    first layer with another input after ``first``'s."""
    hessians: dict[str, torch.Tensor] = {}
    state: dict[str, Any] = {}

    def hook_for(name: str) -> Callable:
        def hook(_module, args):
            inputs = args[0]
            if name == first:
                state["input"] = inputs
            elif "input" not in state:
                return  # runs before the first layer: not part of this pass's group
            elif inputs is not state["input"]:
                raise _PassDone
            hessian = hessian_of(modules[name], real_tokens(inputs.detach(), state["mask"]))
            hessians[name] = hessians[name] + hessian if name in hessians else hessian

        return hook

    handles = [module.register_forward_pre_hook(hook_for(name)) for name, module in modules.items()]
    try:
        with torch.no_grad():
            for inputs in calibration_inputs:
                state.clear()
                state["mask"] = padding_mask(inputs)
                try:
                    loaded.run(inputs)
                except _PassDone:
                    pass
    finally:
        for handle in handles:
            handle.remove()
    return hessians


def _obs_weight(module: nn.Module, hessian: torch.Tensor, level: str, grid: list[str], config: DatabaseConfig) -> torch.Tensor:
    """The layer's weight at ``level``, through the grid's levels up to it as the database builds them."""
    dense = module.weight.detach()
    if level_sparsity(level) == 0.0:
        return dense.clone()
    pruner = ObsPruner(dense, hessian, config.damp, config.block_size)
    steps = grid[: grid.index(level) + 1]
    return dict(pruned_levels(pruner, dense, steps))[level]


def rebuild(
    loaded: LoadedModel,
    calibration_inputs: Sequence[Any],
    levels: dict[str, str],
    grids: dict[str, list[str]],
    config: DatabaseConfig,
    sequential: bool = True,
    on_layer: Callable[[str], None] | None = None,
) -> dict[str, torch.Tensor]:
    """OBS weights of every layer of ``levels`` (name -> level; ``grids`` gives each layer's levels in
    ascending sparsity), from the inputs of the progressively pruned model (``sequential``) or of the
    dense model.  The model is left with its dense weights."""
    names = [name for name in loaded.layer_names if name in levels]
    modules = {name: loaded.module(name) for name in names}
    dense = {name: module.weight.detach().clone() for name, module in modules.items()}
    weights: dict[str, torch.Tensor] = {}
    try:
        if not sequential:
            hessians = collect_hessians(loaded, calibration_inputs, modules)
            for name in names:
                weights[name] = _obs_weight(modules[name], hessians.pop(name), levels[name], grids[name], config)
                if on_layer:
                    on_layer(name)
            return weights
        remaining = list(names)
        while remaining:
            pending = {name: modules[name] for name in remaining}
            hessians = shared_input_hessians(loaded, calibration_inputs, pending, remaining[0])
            if remaining[0] not in hessians:
                raise RuntimeError(f"layer {remaining[0]}: no calibration batch reached it")
            for name in [name for name in remaining if name in hessians]:
                weights[name] = _obs_weight(modules[name], hessians[name], levels[name], grids[name], config)
                with torch.no_grad():
                    modules[name].weight.copy_(weights[name])  # later layers see this layer pruned
                remaining.remove(name)
                if on_layer:
                    on_layer(name)
        return weights
    finally:
        with torch.no_grad():
            for name, module in modules.items():
                module.weight.copy_(dense[name])
