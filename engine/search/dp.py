"""The SPDY dynamic program: least total cost under a time budget, guaranteed in true time.

Given per-layer choices with times t[l][i] (seconds) and costs e[l][i], find one choice per layer

    minimise  sum_l e[l][i_l]   subject to   sum_l t[l][i_l] <= budget.

Times are discretised into B buckets of width delta = budget / B.  Unlike the original code,
which rounds to the nearest bucket and can overshoot the budget by up to L/2 buckets, every time
is rounded **up**: tau[l][i] = ceil(t[l][i] / delta).  Then sum tau <= B implies
sum t <= sum tau * delta <= B * delta <= budget, so every returned allocation meets the budget
in unrounded time (and ``solve`` re-checks this with an exactly rounded sum before returning).

D[l][j] is the least cost of layers 0..l whose bucket counts sum to exactly j:

    D[-1][0] = 0,  D[-1][j>0] = inf
    D[l][j]  = min_i  D[l-1][j - tau[l][i]] + e[l][i]

Choices are visited in ascending order and replaced only on strict improvement (the lowest index,
i.e. the lowest sparsity, wins a tie); the answer is the first j minimising D[L-1][j] (the least
time among equal costs).  A missing choice is marked by an ``inf`` time or cost.

The Numba kernel drops strictly dominated choices (another choice of the layer is no slower in
buckets and strictly cheaper), stores D (no pointer table: the backtrack re-derives each choice),
and restricts layer l to the buckets that can still be part of a feasible allocation,
[sum_{m<=l} min tau_m, B - sum_{m>l} min tau_m].  None of this changes the answer: it returns
exactly what the plain numpy reference (``solve_numpy``) returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

DEFAULT_BUCKETS = 10_000


class InfeasibleTarget(ValueError):
    """No allocation fits the budget.  ``max_speedup`` is the best the table allows (if known)."""

    def __init__(self, message: str, min_time: float, max_speedup: float | None = None):
        super().__init__(message)
        self.min_time = min_time
        self.max_speedup = max_speedup


@dataclass(frozen=True)
class Solution:
    choice: np.ndarray  # one choice index per layer
    time: float  # sum of the chosen (unrounded) times, <= budget
    cost: float  # sum of the chosen costs


def _validate(times: np.ndarray, costs: np.ndarray, budget: float, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    times = np.asarray(times, dtype=np.float64)
    costs = np.asarray(costs, dtype=np.float64)
    if times.ndim != 2 or times.shape != costs.shape or times.shape[0] == 0:
        raise ValueError(f"times and costs must be equal (layers, choices) arrays, got {times.shape} and {costs.shape}")
    if np.isnan(times).any() or np.isnan(costs).any():
        raise ValueError("times and costs must not contain NaN (use inf for a missing choice)")
    if (times < 0).any():
        raise ValueError("times must be non-negative")
    if np.isneginf(costs).any():
        raise ValueError("costs must not be -inf")
    if not (isinstance(buckets, (int, np.integer)) and 1 <= buckets <= 1_000_000):
        raise ValueError(f"buckets must be an integer in [1, 10^6], got {buckets!r}")
    if not math.isfinite(budget):
        raise ValueError(f"budget must be finite, got {budget}")
    return times, costs


def discretise(times: np.ndarray, costs: np.ndarray, budget: float, buckets: int) -> np.ndarray:
    """Bucket counts tau = ceil(t / delta) (so tau * delta >= t); -1 marks an unusable choice."""
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


@njit(cache=True, boundscheck=False, inline="always")
def _relax(dst, src, c):  # pragma: no cover - compiled
    """dst = min(dst, src + c) elementwise; a plain loop that LLVM vectorises."""
    for j in range(dst.shape[0]):
        candidate = src[j] + c
        current = dst[j]
        dst[j] = candidate if candidate < current else current


@njit(cache=True, boundscheck=False)
def _dp_kernel(tau, cost, buckets, lo, hi):  # pragma: no cover - compiled
    """D[l + 1] from D[l] for every layer; row 0 is the empty prefix (0 at bucket 0)."""
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
def _backtrack(table, tau, cost, j):  # pragma: no cover - compiled
    """Recover the choices: at each layer the first choice whose candidate equals the table entry.

    The candidate D[l][j - tau] + e is the same float sum the forward pass computed, so the first
    equal one is exactly the choice a strict-improvement pointer would have recorded.
    """
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


def _feasibility(tau: np.ndarray, times: np.ndarray, costs: np.ndarray, budget: float, buckets: int) -> np.ndarray:
    """Least bucket count per layer; raises InfeasibleTarget when even the fastest choices do not fit."""
    usable = np.isfinite(times) & np.isfinite(costs)
    if not usable.any(axis=1).all():
        bad = int(np.flatnonzero(~usable.any(axis=1))[0])
        raise ValueError(f"layer {bad} has no usable choice")
    min_time = math.fsum(np.where(usable, times, np.inf).min(axis=1))
    if budget <= 0:
        raise InfeasibleTarget(f"the budget for the layers is {budget:.6g} s (<= 0)", min_time)
    masked = np.where(tau >= 0, tau, np.iinfo(np.int64).max)
    min_tau = masked.min(axis=1)
    if (tau < 0).all(axis=1).any() or min_tau.sum() > buckets:
        raise InfeasibleTarget(
            f"even the fastest choices need {min_time:.6g} s but the budget is {budget:.6g} s"
            + (" (within one bucket per layer of the limit; more buckets may help)" if min_time <= budget else ""),
            min_time,
        )
    return min_tau


def _drop_dominated(tau: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """Mark unusable every choice that another choice of its layer strictly dominates.

    If tau[i'] <= tau[i] and e[i'] < e[i], swapping i for i' in any allocation keeps it feasible
    and makes it strictly cheaper, so i is in no optimal allocation and is never picked by the
    backtrack from an optimal cell: dropping it changes no result, only the work.
    """
    usable = tau >= 0
    faster_or_equal = tau[:, :, None] <= tau[:, None, :]  # [l, i', i]: tau[i'] <= tau[i]
    cheaper = costs[:, :, None] < costs[:, None, :]
    dominated = (faster_or_equal & cheaper & usable[:, :, None]).any(axis=1)
    return np.where(dominated, -1, tau)


def _finish(choice: np.ndarray, times: np.ndarray, costs: np.ndarray) -> Solution:
    rows = np.arange(len(choice))
    return Solution(choice, math.fsum(times[rows, choice]), math.fsum(costs[rows, choice]))


def solve(times, costs, budget: float, buckets: int = DEFAULT_BUCKETS) -> Solution:
    """Optimal choice per layer for the discretised problem; ``Solution.time <= budget`` always."""
    times, costs = _validate(times, costs, budget, buckets)
    effective = float(budget)
    for _ in range(8):
        tau = discretise(times, costs, effective, buckets)
        min_tau = _feasibility(tau, times, costs, effective, buckets)
        tau = _drop_dominated(tau, costs)
        before = np.concatenate(([0], np.cumsum(min_tau)))
        lo = before[1:]
        hi = buckets - (before[-1] - before[1:])
        table = _dp_kernel(tau, costs, buckets, lo.astype(np.int64), hi.astype(np.int64))
        j = int(np.argmin(table[-1]))
        if not np.isfinite(table[-1, j]):
            raise InfeasibleTarget("no allocation fits the budget", math.fsum(times.min(axis=1)))
        choice = _backtrack(table, tau, costs, j)
        assert (choice >= 0).all(), "DP backtrack failed"
        solution = _finish(choice, times, costs)
        if solution.time <= budget:
            return solution
        effective -= solution.time - budget  # float rounding only; shrink and solve again
    raise RuntimeError("could not meet the budget in true time")  # pragma: no cover


def solve_numpy(times, costs, budget: float, buckets: int = DEFAULT_BUCKETS) -> Solution:
    """Plain numpy reference: the full L x (B+1) table, vectorised over buckets, no pruning."""
    times, costs = _validate(times, costs, budget, buckets)
    tau = discretise(times, costs, budget, buckets)
    _feasibility(tau, times, costs, budget, buckets)
    n_layers, n_choices = tau.shape
    prev = np.full(buckets + 1, np.inf)
    prev[0] = 0.0
    pointer = np.full((n_layers, buckets + 1), -1, dtype=np.int32)
    for layer in range(n_layers):
        cur = np.full(buckets + 1, np.inf)
        for i in range(n_choices):
            t = tau[layer, i]
            if t < 0:
                continue
            cand = prev[: buckets + 1 - t] + costs[layer, i]
            better = cand < cur[t:]
            cur[t:][better] = cand[better]
            pointer[layer, t:][better] = i
        prev = cur
    j = int(np.argmin(prev))
    if not np.isfinite(prev[j]):
        raise InfeasibleTarget("no allocation fits the budget", math.fsum(times.min(axis=1)))
    choice = np.empty(n_layers, dtype=np.int64)
    for layer in range(n_layers - 1, -1, -1):
        choice[layer] = pointer[layer, j]
        j -= int(tau[layer, choice[layer]])
    return _finish(choice, times, costs)
