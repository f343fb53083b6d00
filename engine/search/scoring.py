"""Scoring an allocation: the calibration loss of the model stitched at it.

    loss(a) = (1 / B) * sum_b  L(f_a(x_b), f_dense(x_b), y_b),

the mean over the B cached calibration batches of a per-batch loss that is never negative.  Two
exact accelerations, each switchable off (the search trajectory is bit-identical either way):

* early abandon: the partial sums only grow, so once (1 / B) * sum_{b <= k} L_b >= the best loss
  so far, the candidate cannot be strictly better; it is reported as ``inf``;
* activation reuse (``engine.model.reuse``): units before the first layer whose level differs from the
  current best allocation replay the best allocation's cached outputs.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from engine.model.reuse import ActivationCache, find_units, unit_of_layers
from engine.search.spdy import allocation_key

LossFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


class ModelScorer:
    def __init__(
        self,
        loaded,
        batches: list,
        loss_fn: LossFn,
        stitcher,
        layer_names: list[str],
        early_abandon: bool = True,
        reuse_activations: bool = True,
    ):
        self.loaded = loaded
        self.batches = batches
        self.loss_fn = loss_fn
        self.stitcher = stitcher
        self.layer_names = layer_names
        self.early_abandon = early_abandon
        self.reuse = reuse_activations
        self.units = find_units(loaded.model, layer_names)
        self.layer_unit = unit_of_layers(self.units, layer_names)
        self.cache = ActivationCache(loaded.model, self.units)
        self.reference: list[str] | None = None  # the allocation whose activations are cached
        self.reference_ready = False
        self._captures: dict[str, dict[int, list]] = {}
        self.stitcher.restore()
        with torch.no_grad():
            self.dense_outputs = [loaded.run(batch.inputs) for batch in batches]
        self.forward_units = 0  # units actually computed (for the benchmark)

    # ------------------------------------------------------------------ helpers
    def _start_unit(self, levels: list[str]) -> int:
        if not (self.reuse and self.reference_ready):
            return 0
        changed = [self.layer_unit[i] for i, (a, b) in enumerate(zip(levels, self.reference)) if a != b]
        return min(changed) if changed else len(self.units)

    def _evaluate(self, levels: list[str], bound: float, capture: dict | None) -> float:
        self.stitcher.apply(dict(zip(self.layer_names, levels)))
        start = self._start_unit(levels) if self.reuse else 0
        total, count = 0.0, len(self.batches)
        with torch.no_grad():
            for index, batch in enumerate(self.batches):
                with self.cache.run(index, start, capture):
                    output = self.loaded.run(batch.inputs)
                self.forward_units += len(self.units) - start
                total += float(self.loss_fn(output, self.dense_outputs[index], batch.labels))
                if self.early_abandon and total / count >= bound:
                    return math.inf
        return total / count

    # ------------------------------------------------------------------ Scorer protocol
    def score(self, allocations: list[list[str]], bound: float) -> list[float]:
        self._captures = {}
        self._ensure_reference()
        losses = []
        for levels in allocations:
            capture: dict[int, list] | None = {} if self.reuse else None
            loss = self._evaluate(levels, bound, capture)
            if capture is not None and math.isfinite(loss):
                self._captures[allocation_key(levels)] = capture
            losses.append(loss)
        return losses

    def accept(self, levels: list[str]) -> None:
        """The search accepted ``levels`` as its new best: cache its activations for reuse."""
        self.reference = list(levels)
        capture = self._captures.pop(allocation_key(levels), None)
        self._captures = {}
        if capture is not None:
            self.cache.outputs = capture
            self.reference_ready = True
        else:
            self.reference_ready = False  # computed on the next score() call

    def _ensure_reference(self) -> None:
        if self.reuse and self.reference is not None and not self.reference_ready:
            capture: dict[int, list] = {}
            self._evaluate(self.reference, math.inf, capture)
            self.cache.outputs = capture
            self.reference_ready = True

    def loss(self, levels: list[str]) -> float:
        """The exact calibration loss, computed in full (no abandon, no reuse)."""
        reuse, self.reuse = self.reuse, False
        try:
            return self._evaluate(levels, math.inf, None)
        finally:
            self.reuse = reuse
