"""Reference solvers of the SPDY DP, for tests and benchmarks (never on the search's path).

``solve_numpy``: the plain numpy version of ``engine.search.dp.solve`` (the full "at most" table
with back-pointers, no pruning); it returns exactly what ``solve`` returns.

``solve_rounded_up``: the previous solver, every time rounded up to its bucket, tau = ceil(t /
delta) with delta = T / B, over the exact-sum table.  Guaranteed in true time, but it wastes about
L/2 of its B buckets; at 100,000 buckets it is the reference ``solve`` is measured against.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from engine.search.dp import (
    DEFAULT_BUCKETS, InfeasibleTarget, Solution, _bucket_counts, _drop_dominated, _fastest_allocation, _finish, _relax, _usable, _validate,
)


def solve_numpy(times, costs, budget: float, buckets: int = DEFAULT_BUCKETS) -> Solution:
    """Plain numpy reference of ``solve``: the full "at most" table with back-pointers, no pruning."""
    times, costs = _validate(times, costs, budget, buckets)
    model = _bucket_counts(times, costs, budget, buckets)
    tau = model.tau
    if model.delta == 0:
        return _finish(_fastest_allocation(times, costs, tau >= 0), times, costs)
    n_layers, n_choices = tau.shape
    width = model.width
    prev = np.zeros(width + 1)
    pointer = np.full((n_layers, width + 1), -1, dtype=np.int32)
    for layer in range(n_layers):
        cur = np.full(width + 1, np.inf)
        for i in range(n_choices):
            t = tau[layer, i]
            if t < 0:
                continue
            cand = prev[: width + 1 - t] + costs[layer, i]
            better = cand < cur[t:]
            cur[t:][better] = cand[better]
            pointer[layer, t:][better] = i
        prev = cur

    def allocation(j: int) -> np.ndarray:
        choice = np.empty(n_layers, dtype=np.int64)
        for layer in range(n_layers - 1, -1, -1):
            choice[layer] = pointer[layer, j]
            j -= int(tau[layer, choice[layer]])
        return choice

    for j in range(width, model.sure - 1, -1):
        solution = _finish(allocation(j), times, costs)
        if solution.time <= budget:
            low = j
            while low > model.sure and prev[low - 1] == prev[j]:
                low -= 1
            if low < j:
                lower = _finish(allocation(low), times, costs)
                if lower.time <= budget:
                    return lower
            return solution
    raise AssertionError("R(G) must fit")  # pragma: no cover


# ---------------------------------------------------------------------------------------------
# The previous solver, every time rounded up: guaranteed, but it wastes about L/2 buckets.  Kept
# as the baseline of tests and benchmarks (and, at 100,000 buckets, as their reference).


def discretise(times: np.ndarray, costs: np.ndarray, budget: float, buckets: int) -> np.ndarray:
    """Rounded-up bucket counts tau = ceil(t / delta), delta = budget / B; -1 marks an unusable choice."""
    if not budget > 0:
        raise InfeasibleTarget(f"the budget for the layers is {budget:.6g} s (<= 0)", math.nan)
    delta = budget / buckets
    while delta * buckets > budget:  # guard the last ulp so that B * delta <= budget
        delta = np.nextafter(delta, 0.0)
    usable = np.isfinite(times) & np.isfinite(costs)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        ratio = np.where(usable, times / delta, 0.0)
    ratio = np.minimum(ratio, buckets + 1.0)
    tau = np.ceil(ratio).astype(np.int64)
    tau = np.where(usable & (tau * delta < times), tau + 1, tau)  # float division can land a hair low
    tau[~usable | (tau > buckets)] = -1
    return tau


@njit(cache=True, boundscheck=False)
def _exact_kernel(tau, cost, buckets, lo, hi):  # pragma: no cover - compiled
    """D[l + 1][j] = least cost of layers <= l with rounded sum exactly j; row 0 is the empty prefix."""
    n_layers, n_choices = tau.shape
    table = np.full((n_layers + 1, buckets + 1), np.inf)
    table[0, 0] = 0.0
    for layer in range(n_layers):
        stop = hi[layer] + 1
        for i in range(n_choices):
            t = tau[layer, i]
            if t < 0:
                continue
            start = max(lo[layer], t)
            if stop > start:
                _relax(table[layer + 1, start:stop], table[layer, start - t : stop - t], cost[layer, i])
    return table


@njit(cache=True, boundscheck=False)
def _exact_backtrack(table, tau, cost, j):  # pragma: no cover - compiled
    n_layers, n_choices = tau.shape
    choice = np.full(n_layers, -1, dtype=np.int64)
    for layer in range(n_layers - 1, -1, -1):
        target = table[layer + 1, j]
        for i in range(n_choices):
            t = tau[layer, i]
            if 0 <= t <= j and table[layer, j - t] + cost[layer, i] == target:
                choice[layer] = i
                j -= t
                break
    return choice


def solve_rounded_up(times, costs, budget: float, buckets: int = DEFAULT_BUCKETS) -> Solution:
    """The previous ``solve``: times rounded up over the whole budget, D[l][j] for sums of exactly j.

    Guaranteed (sum tau <= B implies sum t <= budget) and optimal for its rounded times, which
    waste about L/2 of the B buckets.  Raises ``InfeasibleTarget`` also when the fastest choices
    fit but their rounded-up times do not.
    """
    times, costs = _validate(times, costs, budget, buckets)
    usable = _usable(times, costs)
    min_time = math.fsum(np.where(usable, times, np.inf).min(axis=1))
    if budget <= 0:
        raise InfeasibleTarget(f"the budget for the layers is {budget:.6g} s (<= 0)", min_time)
    effective = float(budget)
    for _ in range(8):
        tau = discretise(times, costs, effective, buckets)
        min_tau = np.where(tau >= 0, tau, np.iinfo(np.int64).max).min(axis=1)
        if (tau < 0).all(axis=1).any() or min_tau.sum() > buckets:
            raise InfeasibleTarget(
                f"even the fastest choices need {min_time:.6g} s but the budget is {budget:.6g} s"
                + (" (within one bucket per layer of the limit; more buckets may help)" if min_time <= budget else ""),
                min_time,
            )
        tau = _drop_dominated(tau, costs)
        before = np.concatenate(([0], np.cumsum(min_tau)))
        lo = before[1:].astype(np.int64)
        hi = (buckets - (before[-1] - before[1:])).astype(np.int64)
        table = _exact_kernel(tau, costs, buckets, lo, hi)
        j = int(np.argmin(table[-1]))
        choice = _exact_backtrack(table, tau, costs, j)
        solution = _finish(choice, times, costs)
        if solution.time <= budget:
            return solution
        effective -= solution.time - budget  # float rounding only; shrink and solve again
    raise RuntimeError("could not meet the budget in true time")  # pragma: no cover
