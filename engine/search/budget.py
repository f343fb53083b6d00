"""From a timing table and a target speedup to a DP problem, and back to a per-layer allocation.

The speedup promise, with every layer of the table counted (spdy-method.md §6.3):

    predicted_time = base - prunable + sum_l t[l][level_l]  <=  reference / target,

so the DP budget for the layers is ``reference / target - (base - prunable)``, where ``reference``
is the time of the fastest dense path a user could run (``TimingTable.reference_seconds``: ``base``
unless another runtime, such as ONNX Runtime, was faster than the one that runs the pruned model).  Skipped layers stay
in the problem with only their dense choice, so their dense time is charged to the budget (the
original CLI dropped them and overshot: a 2.0x target gave 1.88x on ResNet-50).

An N:M level ("2:4", the GPU choice) that is no faster than its layer's dense level is dropped
from the problem (its time set to inf): it would cost accuracy and gain no time, so every
allocation with it is dominated.  On the GPU this is common (2:4 is at or below 1x on small
shapes), and dropping it keeps such layers dense in the search and in every baseline, including
uniform and global magnitude, which would otherwise put them at 2:4.  Unstructured levels are
kept as measured (the DP already never picks one slower than dense).

The prior cost of a layer's i-th level (its own levels ascending in sparsity, n of them) is
(i / (n - 1))^2 (spdy-method.md §3.1); SPDY scales it per layer by a coefficient c_l.  A mixed
choice set (int8 levels beside fp32 ones) has no single order by sparsity, so there i is the
level's rank by the database's reconstruction error (``error_ranks``), which for fp32 levels
alone is the same order.

Inputs are refused with a ValueError naming the option, under the profile's own rules
(``engine.core.profile.SearchConfig``): a target below 1 (``--target``, ``search.target``),
buckets outside 10 ... 1,000,000 (``--buckets``, ``search.buckets``; below 10 the DP's
rounding can call a feasible target infeasible), and costs that are negative, not a number, or
for layers the table lacks (``--costs``; ``costs_from_mapping`` reads a {layer: [cost per
level]} mapping).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

import numpy as np

from engine.core.grid import DENSE, parse_nm
from engine.core.profile import SearchConfig
from engine.search import dp
from engine.timing.table import TimingTable


def _limits(key: str) -> tuple[float | None, float | None]:
    """(min, max) of a ``[search]`` key, as the profile declares it."""
    meta = SearchConfig.__dataclass_fields__[key].metadata
    return meta.get("min"), meta.get("max")


MIN_TARGET = _limits("target")[0]  # 1.0
MIN_BUCKETS, MAX_BUCKETS = _limits("buckets")  # 10, 1,000,000


def check_target(target) -> float:
    """The target speedup as a float; a ValueError naming the option unless finite and >= 1."""
    if isinstance(target, bool) or not isinstance(target, (int, float, np.integer, np.floating)) or not math.isfinite(target):
        raise ValueError(f"target speedup (--target, search.target) must be a number >= {MIN_TARGET:g}, got {target!r}")
    if target < MIN_TARGET:
        raise ValueError(
            f"target speedup (--target, search.target) must be >= {MIN_TARGET:g} (a speedup below 1 is a slowdown), got {target!r}"
        )
    return float(target)


def check_buckets(buckets) -> int:
    """The DP bucket count; a ValueError naming the option unless an integer in 10 ... 1,000,000."""
    if isinstance(buckets, bool) or not isinstance(buckets, (int, np.integer)) or not MIN_BUCKETS <= buckets <= MAX_BUCKETS:
        raise ValueError(
            f"buckets (--buckets, search.buckets) must be an integer from {MIN_BUCKETS:,} to {MAX_BUCKETS:,}, got {buckets!r}"
        )
    return int(buckets)


def prior_costs(levels: list[list[str]], width: int | None = None, ranks: list[list[int]] | None = None) -> np.ndarray:
    """(layers, width) array of (r_i / (n_l - 1))^2, inf beyond a layer's own n_l levels; r_i = i
    (its position, ascending in sparsity) unless ``ranks`` gives each level's rank."""
    width = width or max(len(row) for row in levels)
    costs = np.full((len(levels), width), np.inf)
    for row, labels in enumerate(levels):
        n = len(labels)
        rank = np.arange(n) if ranks is None else np.asarray(ranks[row], dtype=np.float64)
        costs[row, :n] = (rank / (n - 1)) ** 2 if n > 1 else 0.0
    return costs


def error_ranks(names: list[str], levels: list[list[str]], errors: dict[str, dict[str, float]]) -> list[list[int]]:
    """Each layer's levels ranked by their reconstruction error (the database's), ties and levels
    without an error in grid order; the dense fp32 level's error is 0.  For fp32 levels alone this
    is the grid order (nested masks: the error grows with the sparsity); with int8 levels it puts
    each one where its error falls among the fp32 levels."""
    ranks = []
    for name, labels in zip(names, levels):
        known = errors.get(name, {})
        ranks.append(ranks_by([(0.0 if label == DENSE else known.get(label, math.inf), i) for i, label in enumerate(labels)]))
    return ranks


def ranks_by(keys: list) -> list[int]:
    """Each item's position when the items are sorted by ``keys`` (distinct keys: ties broken inside them)."""
    rank = [0] * len(keys)
    for position, column in enumerate(sorted(range(len(keys)), key=keys.__getitem__)):
        rank[column] = position
    return rank


def scaled_costs(prior: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """costs[l, i] = scale[l] * prior[l, i]; a level a layer lacks stays inf (0 * inf would be NaN)."""
    return np.multiply(scale[:, None], prior, out=np.full_like(prior, np.inf), where=np.isfinite(prior))


def match_layers(names: list[str], patterns: list[str] | tuple[str, ...], what: str = "skip") -> list[bool]:
    """Which names match any pattern (exact name or glob); a pattern matching nothing is an error."""
    hits = [False] * len(names)
    for pattern in patterns:
        matched = [fnmatch.fnmatchcase(name, pattern) for name in names]
        if not any(matched):
            raise ValueError(f"{what} pattern {pattern!r} matches no layer (layers: {', '.join(names[:6])}, ...)")
        hits = [a or b for a, b in zip(hits, matched)]
    return hits


@dataclass(frozen=True)
class Allocation:
    """One level per layer of the table, with the additive-model prediction."""

    names: list[str]
    levels: list[str]
    times: list[float]
    predicted_time: float
    predicted_speedup: float
    cost: float

    def as_rows(self) -> list[dict]:
        return [{"name": n, "level": lv, "time": t} for n, lv, t in zip(self.names, self.levels, self.times)]


@dataclass(frozen=True)
class Problem:
    table: TimingTable
    target: float
    skipped: tuple[bool, ...]
    times: np.ndarray  # (layers, max levels); inf = unavailable (padding, a skipped layer's sparse levels, a slow N:M level)
    levels: list[list[str]]
    dropped: tuple[tuple[str, str], ...] = ()  # (layer, N:M level) dropped for being no faster than dense
    ranks: list[list[int]] | None = None  # the prior's rank of each level (``error_ranks``); None: grid order

    def prior(self) -> np.ndarray:
        """The prior costs (r_i / (n_l - 1))^2 of every (layer, level), shaped like ``times``."""
        return prior_costs(self.levels, self.times.shape[1], self.ranks)

    @property
    def budget(self) -> float:
        """reference / target - overhead, lowered by the odd ulp so that any layer time <= it also
        gives ``overhead + time <= reference / target`` and a speedup >= target in float arithmetic."""
        reference, overhead = self.table.reference_seconds, self.table.overhead
        limit = reference / self.target
        budget = limit - overhead
        while overhead + budget > 0 and (overhead + budget > limit or reference / (overhead + budget) < self.target):
            budget = math.nextafter(budget, -math.inf)
        return budget

    @property
    def min_time(self) -> float:
        return math.fsum(self.times.min(axis=1))

    @property
    def max_speedup(self) -> float:
        return self.table.reference_seconds / (self.table.overhead + self.min_time)

    @property
    def searchable(self) -> list[int]:
        """Indices of layers with more than one usable level."""
        return [row for row in range(len(self.levels)) if np.isfinite(self.times[row]).sum() > 1]

    def solve(self, costs: np.ndarray | None = None, buckets: int = dp.DEFAULT_BUCKETS) -> Allocation:
        """Least-cost allocation within the budget (prior costs when ``costs`` is None).

        ``costs`` must have the shape of ``times``, with no negative or NaN entry (inf marks a
        level not to choose); ``buckets`` must be 10 ... 1,000,000 (ValueError otherwise)."""
        buckets = check_buckets(buckets)
        costs = self.prior() if costs is None else self._checked_costs(costs)
        try:
            solution = dp.solve(self.times, costs, self.budget, buckets)
        except dp.InfeasibleTarget as exc:
            raise dp.InfeasibleTarget(
                f"target {self.target:g}x is infeasible: the maximum achievable speedup is "
                f"{self.max_speedup:.4f}x ({exc})",
                exc.min_time,
                self.max_speedup,
            ) from None
        return self.allocation(solution.choice, solution.cost)

    def _checked_costs(self, costs) -> np.ndarray:
        costs = np.asarray(costs, dtype=np.float64)
        if costs.shape != self.times.shape:
            raise ValueError(f"costs (--costs) must be a {self.times.shape} array (layers, levels), got shape {costs.shape}")
        if np.isnan(costs).any() or (costs < 0).any():
            bad = [self.table.names[row] for row in sorted(set(np.argwhere(np.isnan(costs) | (costs < 0))[:, 0].tolist()))]
            raise ValueError(f"costs (--costs) must be non-negative numbers; layer(s) {', '.join(bad[:5])} have negative or NaN costs")
        return costs

    def allocation(self, choice, cost: float = float("nan")) -> Allocation:
        levels = [self.levels[row][i] for row, i in enumerate(choice)]
        times = [float(self.times[row, i]) for row, i in enumerate(choice)]
        predicted = self.table.overhead + math.fsum(times)
        return Allocation(self.table.names, levels, times, predicted, self.table.reference_seconds / predicted, cost)


def make_problem(
    table: TimingTable, target: float, skip: list[str] | tuple[str, ...] = (), errors: dict[str, dict[str, float]] | None = None,
) -> Problem:
    """The DP problem for ``target``x on ``table``, with layers matching ``skip`` held dense; with
    ``errors`` (the database's, per layer and level) the prior ranks levels by them (``error_ranks``)."""
    target = check_target(target)
    times, levels = table.matrix()
    skipped = match_layers(table.names, list(skip), "skip (--skip, search.skip)")
    dropped = []
    for row, labels in enumerate(levels):
        if DENSE not in labels:
            continue
        dense_time = times[row, labels.index(DENSE)]
        for column, label in enumerate(labels):
            if parse_nm(label) is not None and times[row, column] >= dense_time:
                times[row, column] = np.inf
                dropped.append((table.names[row], label))
    for row, is_skipped in enumerate(skipped):
        if not is_skipped:
            continue
        if DENSE not in levels[row]:
            raise ValueError(f"layer {table.names[row]!r} is skipped but the table has no dense (0.0000) time for it")
        dense = levels[row].index(DENSE)
        times[row, :dense] = np.inf
        times[row, dense + 1 :] = np.inf
    ranks = error_ranks(table.names, levels, errors) if errors is not None else None
    return Problem(table, float(target), tuple(skipped), times, levels, tuple(dropped), ranks)


def costs_from_mapping(problem: Problem, mapping, source: str = "<costs>") -> np.ndarray:
    """A cost matrix for ``problem`` from ``{layer name: [cost per level]}`` (e.g. a --costs JSON file).

    Every layer of the table needs exactly one cost per level it has (its levels ascending in
    sparsity, as ``problem.levels``), each a finite number >= 0; a layer the table lacks is an
    error.  ``source`` names the file in messages (ValueError)."""
    if not isinstance(mapping, dict):
        raise ValueError(f"{source}: expected an object {{layer name: [cost per level]}}, got {type(mapping).__name__}")
    names = problem.table.names
    known = set(names)
    unknown = [name for name in mapping if name not in known]
    if unknown:
        raise ValueError(f"{source}: costs for layer(s) not in the timing table: {', '.join(map(repr, unknown[:5]))}")
    matrix = np.full(problem.times.shape, np.inf)
    for row, name in enumerate(names):
        if name not in mapping:
            raise ValueError(f"{source}: no costs for layer {name!r}")
        values, wanted = mapping[name], len(problem.levels[row])
        if not isinstance(values, list) or len(values) != wanted:
            raise ValueError(f"{source}: layer {name!r} needs a list of {wanted} costs (one per level: {', '.join(problem.levels[row][:3])}, ...)")
        for level, value in zip(problem.levels[row], values):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{source}: layer {name!r} level {level}: a cost must be a finite number >= 0, got {value!r}")
        matrix[row, :wanted] = values
    return matrix
