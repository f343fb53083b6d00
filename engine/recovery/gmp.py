"""Gradual magnitude pruning masks: one keep mask per pruned layer, following a ``GMPSchedule``.

At the start of every update epoch t of the schedule, each unstructured layer's mask is
recomputed by magnitude among the weights it still keeps:

    pruned_t = pruned_prev  ∪  {the k_t - k_prev smallest |w| of the kept weights},
    k_t = round(numel * s_t)                                    (``engine.masks.prune_more``)

so exactly k_t weights are pruned, a pruned weight never comes back, and after the update at
``end_epoch`` every layer holds exactly its level's round(numel * s_f) zeros.  An N:M layer gets
its pattern (``engine.masks.nm_mask``) at the first update and keeps it: it starts at its final
sparsity, and with its pruned weights held at zero a recomputation could only trade ties.

Between updates the masks are enforced around every optimiser step: ``mask_gradients`` before
it (pruned weights get no gradient, so no optimiser state builds up for them) and ``apply``
after it (pruned weights are exact zeros again even if momentum moved them).

``FixedMasks`` holds the masks of one-shot reconstructed weights fixed instead (``spdy finetune
--start one-shot``).  ``one_shot_magnitude`` is the reference without training: every layer magnitude-pruned to its
final level at once.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from engine.core.grid import level_sparsity, parse_nm
from engine.core.masks import magnitude_mask, nm_mask, prune_more, pruned_count
from engine.export.schedule import GMPSchedule


class GradualMasks:
    """The keep masks of ``model``'s pruned layers (``levels``: layer name -> final level)."""

    def __init__(self, model: nn.Module, levels: dict[str, str], schedule: GMPSchedule):
        self.model = model
        self.levels = {name: level for name, level in levels.items() if level_sparsity(level) > 0.0}
        self.schedule = schedule
        self.keep: dict[str, torch.Tensor] = {}  # filled by the first update

    def _weight(self, name: str) -> torch.Tensor:
        return self.model.get_submodule(name).weight

    def update(self, epoch: int) -> dict[str, float] | None:
        """Recompute the masks if ``epoch`` is an update epoch and apply them; returns each pruned
        layer's sparsity afterwards, or None when ``epoch`` is not an update epoch."""
        if epoch not in self.schedule.update_epochs():
            return None
        with torch.no_grad():
            for name, level in self.levels.items():
                weight = self._weight(name)
                nm = parse_nm(level)
                if nm is not None:
                    if name not in self.keep:
                        self.keep[name] = nm_mask(weight, nm)
                    continue
                count = pruned_count(weight.numel(), self.schedule.sparsity(epoch, level))
                keep = self.keep.get(name, torch.ones_like(weight, dtype=torch.bool))
                self.keep[name] = prune_more(weight, keep, count)
        self.apply()
        return self.sparsities()

    def apply(self) -> None:
        """Multiply every masked weight by its mask (pruned weights become exact zeros)."""
        with torch.no_grad():
            for name, keep in self.keep.items():
                self._weight(name).mul_(keep)

    def mask_gradients(self) -> None:
        """Zero the gradients of pruned weights."""
        for name, keep in self.keep.items():
            grad = self._weight(name).grad
            if grad is not None:
                grad.mul_(keep)

    def sparsities(self) -> dict[str, float]:
        """Fraction of pruned weights of every layer that has a mask."""
        return {name: 1.0 - int(keep.sum()) / keep.numel() for name, keep in self.keep.items()}

    def pruned_counts(self) -> dict[str, int]:
        return {name: keep.numel() - int(keep.sum()) for name, keep in self.keep.items()}

    def state(self) -> dict[str, torch.Tensor]:
        """The masks as tensors (for a checkpoint)."""
        return {name: keep.clone() for name, keep in self.keep.items()}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        unknown = sorted(set(state) - set(self.levels))
        if unknown:
            raise ValueError(f"checkpoint masks name layers the allocation does not prune: {', '.join(unknown)}")
        for name, keep in state.items():
            if keep.shape != self._weight(name).shape or keep.dtype != torch.bool:
                raise ValueError(f"checkpoint mask of {name} does not fit its weight {tuple(self._weight(name).shape)}")
        self.keep = {name: keep.clone() for name, keep in state.items()}


class FixedMasks(GradualMasks):
    """Masks fixed at the start: a pruned layer keeps exactly its non-zero weights of the model it is
    given (the one-shot reconstructed weights), for every epoch; nothing is ever pruned again."""

    def __init__(self, model: nn.Module, levels: dict[str, str]):
        self.model = model
        self.levels = {name: level for name, level in levels.items() if level_sparsity(level) > 0.0}
        self.keep = {}

    def update(self, epoch: int) -> dict[str, float] | None:
        """Take the masks from the weights' zeros the first time (not after a resume, which loads them)."""
        if self.keep:
            return None
        self.keep = {name: self._weight(name).detach() != 0 for name in self.levels}
        self.apply()
        return self.sparsities()


def one_shot_magnitude(loaded, levels: dict[str, str]):
    """The dense model with every layer magnitude-pruned to its level at once (no training)."""
    model = copy.deepcopy(loaded.model).eval()
    with torch.no_grad():
        for name, level in levels.items():
            if level_sparsity(level) > 0:
                weight = model.get_submodule(name).weight
                nm = parse_nm(level)
                weight.mul_(nm_mask(weight, nm) if nm else magnitude_mask(weight, level_sparsity(level)))
    return model
