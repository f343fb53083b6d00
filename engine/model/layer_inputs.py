"""Layer inputs: what each prunable layer sees on the calibration data, gathered with hooks.

Per layer, X (d x n) holds its calibration inputs as columns: every token for a Linear layer,
every unfolded patch (``torch.nn.functional.unfold`` with the conv's kernel, dilation, padding
and stride) for a Conv2d, so the layer's output is W X (bias aside) with W as (out, d).  The
reconstruction needs either

    H = 2 X X^T            (obs, magnitude: accumulated batch by batch, X never kept), or
    X itself               (adaprune: kept for the layers of one unit at a time).

Forward pre-hooks on the dense model see each layer's input; a batch's forward pass stops as soon
as every wanted layer has had its input.  Text batches with an ``attention_mask`` contribute
their real tokens only: padding positions never reach the model's output, and would otherwise
dominate short sentences padded to a long sequence length.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from engine.model.sources import LoadedModel


def input_rows(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The layer's inputs as (n, d) rows, one per token (Linear) or unfolded patch (Conv2d): X^T."""
    if isinstance(module, nn.Linear):
        return inputs.reshape(-1, module.in_features)
    if isinstance(module, nn.Conv2d):
        if isinstance(module.padding, str) or module.padding_mode != "zeros":
            raise ValueError("reconstruction supports Conv2d with numeric zero padding only")
        patches = F.unfold(inputs, module.kernel_size, module.dilation, module.padding, module.stride)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    raise TypeError(f"cannot reconstruct a {type(module).__name__}")


def hessian_of(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """2 X X^T of one batch of layer inputs, in float64 (summed over batches by the caller)."""
    rows = input_rows(module, inputs.detach()).float()
    return 2.0 * (rows.T @ rows).double()


class _AllInputsSeen(Exception):
    """Raised by a hook once every wanted layer has had its input: the rest of the forward is not needed."""


def padding_mask(inputs: Any) -> torch.Tensor | None:
    mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
    return mask.bool() if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None


def real_tokens(inputs: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Token inputs (batch, tokens, d) cut to the (real tokens, d) rows of ``mask``; others as they are."""
    if mask is not None and inputs.dim() == 3 and inputs.shape[:2] == mask.shape:
        return inputs[mask]
    return inputs


def feed_layer_inputs(
    loaded: LoadedModel,
    calibration_inputs: Sequence[Any],
    modules: dict[str, nn.Module],
    take: Callable[[str, torch.Tensor], None],
) -> None:
    """Run the dense model over the calibration batches, handing each wanted layer's input to ``take``.

    Token inputs (batch, tokens, d) of a batch with an ``attention_mask`` are handed over as the
    (real tokens, d) rows only; layers fed the same tensor are handed the same rows object.
    """
    seen: set[str] = set()
    mask: torch.Tensor | None = None  # the current batch's real tokens, read by the hooks

    cut: list = [None, None]  # (a layer's input, its real-token rows): layers fed the same tensor get the same rows

    def hook_for(name: str):
        def hook(_module, args):
            if args[0] is not cut[0]:
                cut[:] = (args[0], real_tokens(args[0].detach(), mask))
            take(name, cut[1])
            seen.add(name)
            if len(seen) == len(modules):
                raise _AllInputsSeen

        return hook

    handles = [module.register_forward_pre_hook(hook_for(name)) for name, module in modules.items()]
    try:
        with torch.no_grad():
            for inputs in calibration_inputs:
                seen.clear()
                mask = padding_mask(inputs)
                try:
                    loaded.run(inputs)
                except _AllInputsSeen:
                    pass
    finally:
        for handle in handles:
            handle.remove()


def collect_hessians(
    loaded: LoadedModel, calibration_inputs: Sequence[Any], modules: dict[str, nn.Module]
) -> dict[str, torch.Tensor]:
    """H = 2 X X^T of every layer, accumulated over the calibration batches in one dense pass; Linear
    layers handed the very same input tensor (a block's query, key and value) share one product."""
    hessians: dict[str, torch.Tensor] = {}
    last: list = [None, None]  # (inputs, their H) of the latest Linear: query, key and value share one input

    def accumulate(name: str, inputs: torch.Tensor) -> None:
        module = modules[name]
        if isinstance(module, nn.Linear) and inputs is last[0]:
            hessian = last[1]
        else:
            hessian = hessian_of(module, inputs)
            last[:] = (inputs, hessian) if isinstance(module, nn.Linear) else (None, None)
        hessians[name] = hessians[name] + hessian if name in hessians else hessian

    if modules:
        feed_layer_inputs(loaded, calibration_inputs, modules, accumulate)
    return hessians


def collect_inputs(
    loaded: LoadedModel, calibration_inputs: Sequence[Any], modules: dict[str, nn.Module]
) -> dict[str, torch.Tensor]:
    """Every layer's dense inputs over the calibration batches, concatenated along the sample axis."""
    batches: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
    feed_layer_inputs(loaded, calibration_inputs, modules, lambda name, inputs: batches[name].append(inputs))
    return {name: torch.cat(parts) for name, parts in batches.items()}
