"""Allocations SPDY is compared against, all on the same timing table and at the same target.

* ``uniform``: one shared fp32 level for every searchable layer, the least sparse one whose predicted
  time meets the budget; ``uniform(int8=True)`` ("uniform-int8") the same over the int8 levels.
* ``global_magnitude``: one global magnitude threshold tau over all searchable layers; a layer's
  sparsity is the fraction of its weights with |w| <= tau, snapped up to the next fp32 level of its
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
from engine.core.grid import DENSE, is_int8, level_sparsity


def _fits(problem: Problem, allocation: Allocation) -> bool:
    return allocation.predicted_time <= problem.table.reference_seconds / problem.target


def _indices(problem: Problem, wanted: list[str]) -> list[int]:
    return [problem.levels[row].index(level) for row, level in enumerate(wanted)]


def uniform(problem: Problem, int8: bool = False) -> Allocation:
    """One fp32 level for all (``int8``: one int8 level for all, "uniform-int8"), the least sparse that fits."""
    searchable = set(problem.searchable)
    grid = sorted({level for row in searchable for level in problem.levels[row] if is_int8(level) == int8}, key=level_sparsity)
    for level in grid:
        wanted = [
            _snap_up(problem.levels[row], level_sparsity(level), int8) if row in searchable else DENSE
            for row in range(len(problem.levels))
        ]
        allocation = problem.allocation(_indices(problem, wanted))
        if _fits(problem, allocation):
            return allocation
    kind = "int8 level" if int8 else "level"
    raise InfeasibleTarget(f"no single {kind} meets {problem.target:g}x", problem.min_time, problem.max_speedup)


def _snap_up(levels: list[str], sparsity: float, int8: bool = False) -> str:
    """The least sparse fp32 (``int8``: int8) level of a layer with at least ``sparsity`` (its sparsest if none)."""
    kind = [level for level in levels if is_int8(level) == int8] or levels
    for level in kind:
        if level_sparsity(level) >= sparsity - 1e-12:
            return level
    return kind[-1]


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
