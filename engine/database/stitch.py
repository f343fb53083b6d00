"""Stitching: a model's layers pointed at the database's weights of their levels, and back.

A layer at an fp32 level gets the level's weight; a layer at an int8 level ("q8:...") gets the
level's weight, q * scale, and is marked int8 (``engine.runtime.int8.mark_int8``: its scales as a
buffer, its input quantized per token), so the stitched float model computes what the int8 kernels
compute, up to float32 rounding, and the calibration loss the search minimises is the deployed one.
"""

from __future__ import annotations

import copy
from typing import Sequence

from torch import nn

from engine.core.grid import DENSE, is_int8
from engine.database.store import Database
from engine.runtime.int8 import mark_int8, unmark_int8


class Stitcher:
    """Point each layer's weight at the database tensor of its level; ``restore`` puts the dense ones back.

    Tensors are swapped by reference (``module.weight.data = tensor``), never copied into the
    model, and only for layers whose level changed since the last ``apply``.  The model must be in
    eval mode, so BatchNorm keeps the dense running statistics.
    """

    def __init__(self, model: nn.Module, layer_names: Sequence[str], database: Database):
        if model.training:
            raise ValueError("stitch a model in eval mode: BatchNorm must keep the dense running statistics")
        self.database = database
        self.model = model
        self.modules = {name: model.get_submodule(name) for name in layer_names}
        self.dense = {name: module.weight.data for name, module in self.modules.items()}
        self.current = {name: DENSE for name in layer_names}

    def apply(self, levels: dict[str, str]) -> int:
        """Stitch the given layers at their levels; returns how many weights were swapped."""
        swapped = 0
        for name, level in levels.items():
            if self.current[name] == level:
                continue
            dense, module = self.dense[name], self.modules[name]
            weight = dense if level == DENSE else self.database.get(name, level)
            module.weight.data = weight.to(device=dense.device, dtype=dense.dtype)
            if is_int8(level):
                mark_int8(module, self.database.scale(name, level))
            else:
                unmark_int8(module)
            self.current[name] = level
            swapped += 1
        return swapped

    def copy(self, levels: dict[str, str]) -> nn.Module:
        """A deep copy of the model stitched at ``levels`` (int8 layers marked), in eval mode; the model
        itself is left at the levels it had."""
        before = dict(self.current)
        self.apply(levels)
        try:
            return copy.deepcopy(self.model).eval()
        finally:
            self.apply(before)

    def restore(self) -> None:
        """Put every original dense tensor back (the very same tensors: bit-identical)."""
        for name, module in self.modules.items():
            module.weight.data = self.dense[name]
            unmark_int8(module)
            self.current[name] = DENSE

    def __enter__(self) -> "Stitcher":
        return self

    def __exit__(self, *_exc) -> None:
        self.restore()
