"""SPDY search: learn one sensitivity coefficient per layer (spdy-method.md §4).

A candidate is a coefficient vector c in [0, 1]^L over the searchable layers.  Its allocation is
the DP optimum for the costs e[l][i] = c_l * (r_i / (n_l - 1))^2 (r_i: the level's rank, ``Problem.prior``) under the time budget, and its
score is the calibration loss of the model stitched at that allocation.  The search:

1. scores ``random_inits`` vectors c ~ U(0, 1)^L (after ``start``, when given) and keeps the best;
2. for k = round(layer_fraction * L) down to 1: opens a window of up to ``window`` tries, each
   copying the best c and re-sampling k coordinates (indices drawn with replacement) uniformly
   in [0, 1]; the first try that strictly lowers the loss is accepted and a new window opens at
   the same k; a window with no improvement moves on to k - 1.

Reproducibility: every random draw of try t in window w of phase k comes from its own stream
``default_rng([seed, k, w, t])`` (random inits: ``[seed, 0, 0, i]``), so a candidate does not
depend on how many candidates were evaluated together.  Candidates of a window are evaluated in
order, ``batch`` at a time (one per worker), and the lowest-index improvement is accepted, so
the trajectory is identical for any number of workers.  Equal allocations are scored once.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from engine.search.budget import Allocation, Problem, scaled_costs


class Scorer(Protocol):
    def score(self, allocations: list[list[str]], bound: float) -> list[float]:
        """Calibration loss of each allocation (levels per table layer).

        A scorer may stop early on an allocation whose loss is certainly >= ``bound`` and return
        ``math.inf`` for it (early abandon); every other value must be exact.
        """

    def accept(self, levels: list[str]) -> None:
        """Told of every new best allocation (a scorer may cache its activations)."""


@dataclass(frozen=True)
class SearchSettings:
    random_inits: int = 100
    window: int = 100
    layer_fraction: float = 0.1
    buckets: int = 10_000
    batch: int = 1  # candidates scored together (one per worker); never changes the result
    seed: int = 0


@dataclass
class Evaluation:
    n: int
    phase: str  # "init" or "k=<size>"
    k: int
    loss: float
    best: float
    accepted: bool
    predicted_speedup: float
    levels: list[str]


@dataclass
class SearchResult:
    coefficients: np.ndarray
    allocation: Allocation
    loss: float
    evaluations: int
    history: list[Evaluation] = field(default_factory=list)


def allocation_key(levels: list[str]) -> str:
    return hashlib.sha1("\n".join(levels).encode()).hexdigest()[:16]


class Search:
    def __init__(
        self,
        problem: Problem,
        scorer: Scorer,
        settings: SearchSettings,
        on_evaluation: Callable[[Evaluation], None] | None = None,
        replay: dict[str, float] | None = None,
        start: np.ndarray | None = None,
    ):
        self.problem = problem
        self.scorer = scorer
        self.settings = settings
        self.on_evaluation = on_evaluation or (lambda _e: None)
        self.searchable = problem.searchable
        self.prior = problem.prior()
        self.cache: dict[str, float] = dict(replay or {})  # allocation key -> loss (or a bound >= the best then)
        self.evaluations = 0
        self.history: list[Evaluation] = []
        self.best_loss = math.inf
        self.best_c: np.ndarray | None = None
        self.start = start  # coefficients scored before the random inits (the closed loop: the previous best)

    # ------------------------------------------------------------------ one candidate
    def allocate(self, c: np.ndarray) -> Allocation:
        """The DP allocation for coefficients c (one per searchable layer; others keep cost 0)."""
        scale = np.zeros(len(self.problem.levels))
        scale[self.searchable] = c
        return self.problem.solve(scaled_costs(self.prior, scale), self.settings.buckets)

    def _score_batch(self, candidates: list[np.ndarray], phase: str, k: int) -> bool:
        """Score candidates in order against the running best; True if one improved it.

        Random inits are all scored; in a window the first improvement is accepted and the rest
        of the batch is dropped, exactly as if the candidates had been scored one by one.
        """
        allocations = [self.allocate(c) for c in candidates]
        keys = [allocation_key(a.levels) for a in allocations]
        fresh = list(dict.fromkeys(key for key in keys if key not in self.cache))
        if fresh:
            levels = {key: allocations[keys.index(key)].levels for key in fresh}
            self.cache.update(zip(fresh, self.scorer.score([levels[key] for key in fresh], self.best_loss)))
        improved_any = False
        for candidate, allocation, key in zip(candidates, allocations, keys):
            loss = self.cache[key]
            improved = loss < self.best_loss
            if improved:
                self.best_loss, self.best_c, improved_any = loss, candidate, True
                self.scorer.accept(allocation.levels)
            self.evaluations += 1
            self._record(
                Evaluation(self.evaluations, phase, k, loss, self.best_loss, improved, allocation.predicted_speedup, allocation.levels)
            )
            if improved and phase != "init":
                return True
        return improved_any

    def _record(self, event: Evaluation) -> None:
        self.history.append(event)
        self.on_evaluation(event)

    # ------------------------------------------------------------------ the search
    def run(self) -> SearchResult:
        settings, n_layers = self.settings, len(self.searchable)
        if n_layers == 0:
            raise ValueError("no layer has more than one usable level: nothing to search")
        inits = [np.random.default_rng([settings.seed, 0, 0, i]).uniform(0, 1, n_layers) for i in range(settings.random_inits)]
        if self.start is not None:
            inits.insert(0, np.asarray(self.start, dtype=float))
        for start in range(0, len(inits), settings.batch):
            self._score_batch(inits[start : start + settings.batch], "init", 0)
        window_index = 0
        for k in range(max(1, round(settings.layer_fraction * n_layers)), 0, -1):
            improved = True
            while improved:
                window_index += 1
                improved = self._window(k, window_index)
        assert self.best_c is not None
        allocation = self.allocate(self.best_c)
        return SearchResult(self.best_c, allocation, self.best_loss, self.evaluations, self.history)

    def _window(self, k: int, window_index: int) -> bool:
        """Up to ``window`` tries at mutation size k; True if one was accepted."""
        settings = self.settings
        for start in range(0, settings.window, settings.batch):
            tries = range(start, min(start + settings.batch, settings.window))
            if self._score_batch([self._mutate(k, window_index, t) for t in tries], f"k={k}", k):
                return True
        return False

    def _mutate(self, k: int, window_index: int, try_index: int) -> np.ndarray:
        rng = np.random.default_rng([self.settings.seed, k, window_index, try_index])
        assert self.best_c is not None
        candidate = self.best_c.copy()
        for index in rng.integers(0, len(candidate), size=k):  # with replacement, as in the original
            candidate[index] = rng.uniform(0, 1)
        return candidate
