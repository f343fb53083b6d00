"""The SPDY dynamic program: least total cost under a time budget, guaranteed in true time.

Given per-layer choices with times t[l][i] (seconds) and costs e[l][i], find one choice per layer

    minimise  sum_l e[l][i_l]   subject to   sum_l t[l][i_l] <= T.

A missing choice is marked by an ``inf`` time or cost.  ``solve`` returns an allocation whose
unrounded time, summed exactly (``math.fsum``), is <= T, whatever the rounding; its cost is within
the DP's resolution of the true optimum (measured in docs/benchmarks.md, "DP: guaranteed and
optimal").

**Discretisation.**  Every allocation pays each layer's fastest usable time m_l, so only the
slack S = T - sum_l m_l is shared out.  Times are shifted, t'[l][i] = t[l][i] - m_l, and rounded
to the *nearest* bucket

    tau[l][i] = round(t'[l][i] / delta),   delta = min( max(S, T_v / 2) / B,  S / (4 L_v) ),

where B is ``buckets``, L_v the number of layers with a choice left (two or more usable choices)
and T_v = T minus the time of the other layers (skipped layers, which have only their dense
choice).  So B buckets span the slack while it is at least T_v / 2; below that a bucket stays
T_v / (2B) wide (twice as fine as the original code's T / B) instead of shrinking with the slack,
which keeps the work within about twice the original's where the slack is a small part of the
budget (high targets).  A bucket is never wider than S / (4 L_v), so G below is >= 2.  A layer
with a single choice takes no bucket and no DP row: it is charged its exact time.  A choice with
t' > S is unusable.

Rounding to nearest makes errors of either sign, which mostly cancel, so a rounded sum alone does
not decide feasibility.  With r_l = t'/delta - tau in [-1/2, 1/2] for the chosen choice,
E+ = sum_l max_i r_l[i] and E- = sum_l max_i (-r_l[i]) (both <= L_v / 2):

    sum tau <= G = floor(S / delta - E+) - 1   =>  the allocation fits (in true time, surely);
    sum tau >  W = floor(S / delta + E-) + 1   =>  it does not.

**Recurrence** ("at most" form, over the layers with a choice; rows are nonincreasing in j):

    D[0][j] = 0                                                      for j in [0, W]
    D[l][j] = min_i  D[l-1][j - tau[l][i]] + e[l][i]                 (over tau[l][i] <= j)

D[l][j] is the least cost of layers < l whose rounded times sum to at most j.

**Answer.**  R(j) is the allocation backtracked from final cell j (at each layer the first choice,
in ascending index, whose candidate equals the entry).  ``solve`` scans j = W, W - 1, ..., G and
returns R(j*) for the first j* whose R(j*) fits T in true time (exactly summed): R(G) always
fits, and a lower cell cannot be cheaper.  Among the cells in [G, j*] with R(j*)'s cost, the
lowest whose R fits is returned instead (the least time among equal costs).  Within a cell, ties
between choices go to the lowest index (the lowest sparsity).  If S = 0 only the fastest choices
fit, and the cheapest of them is returned; if the fastest choices exceed T, ``InfeasibleTarget``.

Compared to the original code (nearest rounding over the whole budget, no check: can overshoot
by up to L/2 buckets) and to rounding every time up (the previous version here, kept as
``solve_rounded_up``: guaranteed but leaves on average L/2 of its B buckets unused, +0.2% to
+4.9% in cost on the original tables), the exact check replaces the worst-case margin, and the
shift gives the buckets to the time that choices can actually trade.

The Numba kernel drops strictly dominated choices (another choice of the layer is no slower in
buckets and strictly cheaper), computes each row only on the cells that are reachable
(j <= sum of the layers' largest tau so far; beyond, the row is flat) and that can still reach a
final cell >= G, and works in chunks of cells with four choices per pass.  None of this changes
the answer (up to float ties): it returns exactly what the plain numpy reference
(``solve_numpy``) returns, which builds the full table with back-pointers.
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


def _finish(choice: np.ndarray, times: np.ndarray, costs: np.ndarray) -> Solution:
    rows = np.arange(len(choice))
    return Solution(choice, math.fsum(times[rows, choice]), math.fsum(costs[rows, choice]))


def _usable(times: np.ndarray, costs: np.ndarray) -> np.ndarray:
    usable = np.isfinite(times) & np.isfinite(costs)
    if not usable.any(axis=1).all():
        bad = int(np.flatnonzero(~usable.any(axis=1))[0])
        raise ValueError(f"layer {bad} has no usable choice")
    return usable


def _drop_dominated(tau: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """Mark unusable (-1) every choice that another choice of its layer strictly dominates.

    If tau[i'] <= tau[i] and e[i'] < e[i], swapping i for i' in any allocation keeps its rounded
    sum within any cell and makes it strictly cheaper, so i is never the choice of a DP cell:
    dropping it changes no result, only the work.
    """
    usable = tau >= 0
    faster_or_equal = tau[:, :, None] <= tau[:, None, :]  # [l, i', i]: tau[i'] <= tau[i]
    cheaper = costs[:, :, None] < costs[:, None, :]
    dominated = (faster_or_equal & cheaper & usable[:, :, None]).any(axis=1)
    return np.where(dominated, -1, tau)


# ---------------------------------------------------------------------------------------------
# The model: shifted times, nearest rounding, the sure-fit and cannot-fit cells G and W.


@dataclass(frozen=True)
class Buckets:
    """The discretised problem of ``bucket_counts`` (see the module docstring)."""

    tau: np.ndarray  # (layers, choices) bucket counts of t - m_l; -1 = unusable
    delta: float  # bucket width (s); 0 when the slack is 0
    sure: int  # G: every allocation with sum tau <= G fits the budget
    width: int  # W: no allocation with sum tau > W fits
    fixed: np.ndarray  # (layers,) bool: the layer has a single usable choice (no DP row)
    min_time: float  # sum_l m_l, exactly summed


def bucket_counts(times, costs, budget: float, buckets: int = DEFAULT_BUCKETS) -> Buckets:
    """Shift each layer's times by its fastest, round to the nearest bucket; raise if infeasible."""
    times, costs = _validate(times, costs, budget, buckets)
    return _bucket_counts(times, costs, budget, buckets)


def _bucket_counts(times: np.ndarray, costs: np.ndarray, budget: float, buckets: int) -> Buckets:
    usable = _usable(times, costs)
    masked = np.where(usable, times, np.inf)
    fastest = masked.min(axis=1)
    min_time = math.fsum(fastest)
    if min_time > budget:
        raise InfeasibleTarget(f"even the fastest choices need {min_time:.6g} s but the budget is {budget:.6g} s", min_time)
    slack = budget - min_time  # >= 0: float subtraction is monotone
    shifted = masked - fastest[:, None]
    usable &= shifted <= slack  # a choice slower than its fastest by more than the slack never fits
    fixed = usable.sum(axis=1) == 1
    n_variable = int((~fixed).sum())
    if slack == 0 or n_variable == 0:
        tau = np.where(usable & (shifted == 0), 0, -1)
        return Buckets(tau.astype(np.int64), 0.0, 0, 0, fixed, min_time)
    fixed_time = math.fsum(masked[fixed].min(axis=1)) if fixed.any() else 0.0
    variable_budget = budget - fixed_time
    delta = min(max(slack, variable_budget / 2) / buckets, slack / (4 * n_variable))
    ratio = np.where(usable, shifted / delta, 0.0)
    tau = np.floor(ratio + 0.5)
    error = np.where(usable, ratio - tau, 0.0)  # r = t'/delta - tau, in [-1/2, 1/2]
    variable = ~fixed
    over = math.fsum(np.where(usable, error, -np.inf)[variable].max(axis=1))  # E+
    under = math.fsum(np.where(usable, -error, -np.inf)[variable].max(axis=1))  # E-
    span = slack / delta
    sure = max(math.floor(span - over) - 1, 0)
    width = math.floor(span + under) + 1
    usable &= tau <= width
    tau = np.where(usable, tau, -1).astype(np.int64)
    tau[fixed] = np.where(usable[fixed], 0, -1)
    return Buckets(tau, float(delta), sure, width, fixed, min_time)


def _fastest_allocation(times: np.ndarray, costs: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Per layer the cheapest of its fastest usable choices (lowest index on ties)."""
    masked = np.where(usable, times, np.inf)
    fastest = masked == masked.min(axis=1, keepdims=True)
    return np.argmin(np.where(fastest & usable, costs, np.inf), axis=1).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Numba kernels.


@njit(cache=True, boundscheck=False, inline="always")
def _relax(dst, src, c):  # pragma: no cover - compiled
    """dst = min(dst, src + c) elementwise; a plain loop that LLVM vectorises."""
    for j in range(dst.shape[0]):
        candidate = src[j] + c
        current = dst[j]
        dst[j] = candidate if candidate < current else current


@njit(cache=True, boundscheck=False, inline="always")
def _relax4(dst, s1, s2, s3, s4, c1, c2, c3, c4):  # pragma: no cover - compiled
    """dst = min(dst, s1 + c1, ..., s4 + c4): four choices per pass over dst."""
    for j in range(dst.shape[0]):
        a = s1[j] + c1
        b = s2[j] + c2
        c = s3[j] + c3
        d = s4[j] + c4
        a = a if a < b else b
        c = c if c < d else d
        a = a if a < c else c
        current = dst[j]
        dst[j] = a if a < current else current


@njit(cache=True, boundscheck=False)
def _forward(tau, cost, width, sure):  # pragma: no cover - compiled
    """The "at most" table D over the rows of ``tau`` (row 0: the empty prefix), with its bands.

    Row r is computed on [lo[r], hi[r]]: hi[r] = min(W, sum of the largest tau of layers < r)
    (beyond it the row is flat, and it is extended flat on demand), lo[r] = the least cell that
    can still reach a final cell >= ``sure``.
    """
    n_layers, n_choices = tau.shape
    largest = np.zeros(n_layers, dtype=np.int64)
    for layer in range(n_layers):
        for i in range(n_choices):
            largest[layer] = max(largest[layer], tau[layer, i])
    lo = np.zeros(n_layers + 1, dtype=np.int64)
    hi = np.zeros(n_layers + 1, dtype=np.int64)
    reach = 0
    for r in range(n_layers + 1):
        hi[r] = min(width, reach)
        if r < n_layers:
            reach += largest[r]
    rest = 0
    for r in range(n_layers, -1, -1):
        lo[r] = min(max(0, sure - rest), hi[r])
        if r > 0:
            rest += largest[r - 1]
    table = np.empty((n_layers + 1, width + 1))
    table[0, 0] = 0.0
    chunk = 512
    full_tau = np.empty(n_choices, dtype=np.int64)
    full_cost = np.empty(n_choices)
    for r in range(1, n_layers + 1):
        layer = r - 1
        a, b = lo[r], hi[r]
        src_lo, src_hi = lo[r - 1], hi[r - 1]
        src = table[r - 1]
        dst = table[r]
        if b > src_hi:
            src[src_hi + 1 : b + 1] = src[src_hi]  # flat beyond the reachable cells
        for c0 in range(a, b + 1, chunk):
            c1 = min(b, c0 + chunk - 1)
            n = c1 + 1 - c0
            dst[c0 : c1 + 1] = np.inf
            n_full = 0
            for i in range(n_choices):
                t = tau[layer, i]
                if t < 0:
                    continue
                start = max(c0, t + src_lo)
                if start == c0:  # the choice covers the whole chunk: batch it
                    full_tau[n_full] = t
                    full_cost[n_full] = cost[layer, i]
                    n_full += 1
                elif start <= c1:
                    _relax(dst[start : c1 + 1], src[start - t : c1 + 1 - t], cost[layer, i])
            k = 0
            while k + 4 <= n_full:
                t1, t2, t3, t4 = full_tau[k], full_tau[k + 1], full_tau[k + 2], full_tau[k + 3]
                _relax4(
                    dst[c0 : c1 + 1],
                    src[c0 - t1 : c0 - t1 + n],
                    src[c0 - t2 : c0 - t2 + n],
                    src[c0 - t3 : c0 - t3 + n],
                    src[c0 - t4 : c0 - t4 + n],
                    full_cost[k],
                    full_cost[k + 1],
                    full_cost[k + 2],
                    full_cost[k + 3],
                )
                k += 4
            while k < n_full:
                t1 = full_tau[k]
                _relax(dst[c0 : c1 + 1], src[c0 - t1 : c0 - t1 + n], full_cost[k])
                k += 1
    return table, lo, hi


@njit(cache=True, boundscheck=False)
def _backtrack_at_most(table, lo, hi, tau, cost, j, choice):  # pragma: no cover - compiled
    """R(j): at each layer the first choice whose candidate equals the entry (rows are flat past hi)."""
    n_layers, n_choices = tau.shape
    for r in range(n_layers, 0, -1):
        layer = r - 1
        j = min(j, hi[r])
        target = table[r, j]
        choice[layer] = -1
        for i in range(n_choices):
            t = tau[layer, i]
            if t < 0 or j - t < lo[r - 1]:
                continue
            k = min(j - t, hi[r - 1])
            if table[r - 1, k] + cost[layer, i] == target:
                choice[layer] = i
                j = k
                break


@njit(cache=True, boundscheck=False)
def _true_time(times, choice, fixed_time):  # pragma: no cover - compiled
    """fixed_time + sum of the chosen times, compensated (Neumaier) so it is within an ulp or so."""
    total = fixed_time
    compensation = 0.0
    for layer in range(choice.shape[0]):
        x = times[layer, choice[layer]]
        s = total + x
        if abs(total) >= abs(x):
            compensation += (total - s) + x
        else:
            compensation += (x - s) + total
        total = s
    return total + compensation


@njit(cache=True, boundscheck=False)
def _scan(table, lo, hi, tau, cost, times, fixed_time, limit, top):  # pragma: no cover - compiled
    """The first cell j <= top (downwards to lo) whose R(j) fits ``limit``, then the tie rule.

    Returns (j, choice); j = -1 if no cell in [lo, top] fits.
    """
    n_layers = tau.shape[0]
    final = table[n_layers]
    bottom = lo[n_layers]
    choice = np.empty(n_layers, dtype=np.int64)
    top = min(top, hi[n_layers])
    for j in range(top, bottom - 1, -1):
        _backtrack_at_most(table, lo, hi, tau, cost, j, choice)
        if _true_time(times, choice, fixed_time) <= limit:
            low = j
            while low > bottom and final[low - 1] == final[j]:
                low -= 1
            if low < j:
                lower = np.empty(n_layers, dtype=np.int64)
                _backtrack_at_most(table, lo, hi, tau, cost, low, lower)
                if _true_time(times, lower, fixed_time) <= limit:
                    return low, lower
            return j, choice
    return -1, choice


# ---------------------------------------------------------------------------------------------
# Solvers.


def solve(times, costs, budget: float, buckets: int = DEFAULT_BUCKETS) -> Solution:
    """Least-cost choice per layer that fits ``budget`` in true time (see the module docstring)."""
    times, costs = _validate(times, costs, budget, buckets)
    model = _bucket_counts(times, costs, budget, buckets)
    if model.delta == 0:  # no slack, or no layer with a choice: the fastest choices it is
        return _finish(_fastest_allocation(times, costs, model.tau >= 0), times, costs)
    tau = _drop_dominated(model.tau, costs)
    kept = tau >= 0
    single = kept.sum(axis=1) == 1  # one choice left (its tau is 0): no DP row needed
    variable = np.flatnonzero(~single)
    choice = np.argmax(kept, axis=1).astype(np.int64)
    fixed_time = math.fsum(times[single, choice[single]]) if single.any() else 0.0
    tau_v = np.ascontiguousarray(tau[variable])
    cost_v = np.ascontiguousarray(costs[variable])
    times_v = np.ascontiguousarray(np.where(tau_v >= 0, times[variable], np.inf))
    table, lo, hi = _forward(tau_v, cost_v, model.width, model.sure)
    top = model.width
    while True:
        j, chosen = _scan(table, lo, hi, tau_v, cost_v, times_v, fixed_time, float(budget), top)
        if j < 0:  # pragma: no cover - R(G) fits by construction; float safety net only
            return _finish(_fastest_allocation(times, costs, model.tau >= 0), times, costs)
        choice[variable] = chosen
        solution = _finish(choice.copy(), times, costs)
        if solution.time <= budget:
            return solution
        top = j - 1  # pragma: no cover - the compensated sum said it fits, fsum did not
