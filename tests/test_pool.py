
import numpy as np
import pytest

from engine.search.budget import make_problem
from engine.executors.processes import PooledScorer, WorkerError, _split
from engine.search.spdy import Search, SearchSettings
from engine.timing.table import load_table

from .conftest import TABLES


class LevelSumScorer:
    """Loss = weighted sum of squared sparsities; built in the worker from its arguments."""

    def __init__(self, seed, fail=False):
        if fail:
            raise RuntimeError("cannot load the model")
        self.weights = None
        self.seed = seed
        self.accepted = []

    def score(self, allocations, bound):
        if self.weights is None:
            self.weights = np.random.default_rng(self.seed).uniform(0.1, 10, len(allocations[0]))
        return [float(sum(w * float(level) ** 2 for w, level in zip(self.weights, levels))) for levels in allocations]

    def accept(self, levels):
        self.accepted.append(levels)


def make_scorer(seed, fail=False):
    return LevelSumScorer(seed, fail)


def test_split_is_contiguous_and_balanced():
    assert _split(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert _split([1], 2) == [[1], []]


def test_two_workers_give_the_single_process_trajectory():
    problem = make_problem(load_table(TABLES / "rn18_unstr.txt"), 2.0, ["conv1", "fc"])
    settings = SearchSettings(random_inits=10, window=8, seed=5)
    serial = Search(problem, make_scorer(1), settings).run()
    with PooledScorer(make_scorer, (1,), workers=2) as pooled:
        parallel = Search(problem, pooled, SearchSettings(random_inits=10, window=8, seed=5, batch=2)).run()
    assert parallel.allocation.levels == serial.allocation.levels and parallel.loss == serial.loss
    assert [e.levels for e in parallel.history] == [e.levels for e in serial.history]


def test_worker_start_failure_is_reported():
    with pytest.raises(WorkerError, match="cannot load the model"):
        PooledScorer(make_scorer, (1, True), workers=1)
