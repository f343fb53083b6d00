"""Allocations SPDY is compared against, all on the same timing table and at the same target.

* ``uniform``: one shared level for every searchable layer, the least sparse one whose predicted
  time meets the budget.
* ``global_magnitude``: one global magnitude threshold tau over all searchable layers; a layer's
  sparsity is the fraction of its weights with |w| <= tau, snapped up to the next level of its
  grid; tau is the smallest (by bisection over the sorted magnitudes) that meets the budget.
* ``prior``: the DP with every coefficient 1, i.e. costs (i / (n - 1))^2 (spdy-method.md §2.7).
* ``squared_error``: the DP with each (layer, level)'s relative reconstruction error
  ||W_s X - W X||^2 / ||W X||^2 as its cost (spdy-method.md §3.3).

Every baseline returns an ``Allocation`` within the budget or raises ``InfeasibleTarget``.
"""

from __future__ import annotations

import bisect

import numpy as np
import torch

from engine.search.budget import Allocation, Problem
from engine.search.dp import InfeasibleTarget
from engine.core.grid import DENSE, level_sparsity


def _fits(problem: Problem, allocation: Allocation) -> bool:
    return allocation.predicted_time <= problem.table.reference_seconds / problem.target


def _indices(problem: Problem, wanted: list[str]) -> list[int]:
    return [problem.levels[row].index(level) for row, level in enumerate(wanted)]


def uniform(problem: Problem) -> Allocation:
    searchable = set(problem.searchable)
    grid = sorted({level for row in searchable for level in problem.levels[row]}, key=level_sparsity)
    for level in grid:
        wanted = [
            _snap_up(problem.levels[row], level_sparsity(level)) if row in searchable else DENSE
            for row in range(len(problem.levels))
        ]
        allocation = problem.allocation(_indices(problem, wanted))
        if _fits(problem, allocation):
            return allocation
    raise InfeasibleTarget(f"no single level meets {problem.target:g}x", problem.min_time, problem.max_speedup)


def _snap_up(levels: list[str], sparsity: float) -> str:
    """The least sparse level of a layer with at least ``sparsity`` (its sparsest if none)."""
    for level in levels:
        if level_sparsity(level) >= sparsity - 1e-12:
            return level
    return levels[-1]


def global_magnitude(problem: Problem, weights: dict[str, torch.Tensor]) -> Allocation:
    """``weights``: the dense weight of every searchable layer, by name."""
    names = problem.table.names
    searchable = problem.searchable
    magnitudes = {names[row]: np.sort(weights[names[row]].detach().abs().flatten().numpy()) for row in searchable}
    pooled = np.unique(np.concatenate(list(magnitudes.values())))

    def allocation_at(threshold: float) -> Allocation:
        wanted = [DENSE] * len(names)
        for row in searchable:
            mags = magnitudes[names[row]]
            fraction = bisect.bisect_right(mags, threshold) / len(mags)
            wanted[row] = _snap_up(problem.levels[row], fraction) if fraction > 0 else problem.levels[row][0]
        return problem.allocation(_indices(problem, wanted))

    low, high = -1, len(pooled) - 1  # invariant: pooled[high] fits (checked), low does not
    if not _fits(problem, allocation_at(float(pooled[high]))):
        raise InfeasibleTarget(f"global magnitude cannot meet {problem.target:g}x", problem.min_time, problem.max_speedup)
    while high - low > 1:
        middle = (low + high) // 2
        if _fits(problem, allocation_at(float(pooled[middle]))):
            high = middle
        else:
            low = middle
    return allocation_at(float(pooled[high]))


def prior(problem: Problem, buckets: int = 10_000) -> Allocation:
    return problem.solve(None, buckets)


def squared_error(problem: Problem, errors: dict[str, dict[str, float]], buckets: int = 10_000) -> Allocation:
    """``errors[layer][level]``: relative output error of the reconstructed layer at that level."""
    costs = np.full(problem.times.shape, np.inf)
    for row, name in enumerate(problem.table.names):
        for column, level in enumerate(problem.levels[row]):
            costs[row, column] = 0.0 if level == DENSE else errors.get(name, {}).get(level, np.inf)
    return problem.solve(costs, buckets)
