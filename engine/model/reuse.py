"""Activation reuse: start a candidate's forward pass at the first unit whose weights changed.

The model is cut into *units* executed in order: the repeated blocks holding prunable layers
(the children of the ``nn.ModuleList`` that holds the most of them, e.g. ``encoder.layer.3``),
and any prunable layer outside such a block on its own.  If a candidate's allocation equals the
reference allocation on every layer of units 0..u-1, those units produce exactly the reference's
outputs, so their forward methods are temporarily replaced by "return the cached output" and the
real computation starts at unit u.  Nothing is approximated: the outputs are the same tensors
the full forward pass would compute.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from torch import nn


def find_units(model: nn.Module, layer_names: list[str]) -> list[str]:
    """Unit module names in execution order (layer_names must be in execution order)."""
    best_list, best_count = None, 0
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList):
            prefix = f"{name}."
            count = sum(layer.startswith(prefix) for layer in layer_names)
            if count > best_count:
                best_list, best_count = name, count
    units: list[str] = []
    for layer in layer_names:
        unit = layer
        if best_list is not None and layer.startswith(f"{best_list}."):
            unit = best_list + "." + layer[len(best_list) + 1 :].split(".")[0]
        if not units or units[-1] != unit:
            if unit in units:  # a unit re-entered later (shared module): fall back to per-layer units
                return list(dict.fromkeys(layer_names))
            units.append(unit)
    return units


def unit_of_layers(units: list[str], layer_names: list[str]) -> list[int]:
    """For each layer, the index of the unit that holds it."""
    index = []
    for layer in layer_names:
        for position, unit in enumerate(units):
            if layer == unit or layer.startswith(unit + "."):
                index.append(position)
                break
        else:
            raise ValueError(f"layer {layer} is in no unit")
    return index


class ActivationCache:
    """Outputs of every unit for every calibration batch under the reference allocation."""

    def __init__(self, model: nn.Module, units: list[str]):
        self.model = model
        self.units = units
        self.modules = [model.get_submodule(name) for name in units]
        self.outputs: dict[int, list[Any]] = {}  # batch -> output per unit (reference)

    @contextmanager
    def run(self, batch: int, start_unit: int, capture: dict[int, list[Any]] | None) -> Iterator[None]:
        """Within this context a forward pass of ``batch`` replays units < start_unit from the cache
        and records every unit's output into ``capture[batch]`` (if given)."""
        replayed, handles = [], []
        cached = self.outputs.get(batch)
        if start_unit > 0 and cached is None:
            raise RuntimeError("no cached activations for this batch")
        record: list[Any] = [None] * len(self.modules)
        for position, module in enumerate(self.modules):
            if position < start_unit:
                output = cached[position]
                record[position] = output
                module.forward = _constant(output)  # instance attribute shadows the class method
                replayed.append(module)
            elif capture is not None:
                handles.append(module.register_forward_hook(_recorder(record, position)))
        try:
            yield
        finally:
            for module in replayed:
                del module.forward
            for handle in handles:
                handle.remove()
        if capture is not None:
            capture[batch] = record


def _constant(output):
    def forward(*_args, **_kwargs):
        return output

    return forward


def _recorder(record: list, position: int):
    def hook(_module, _args, output):
        record[position] = output

    return hook
