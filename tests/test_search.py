import math

import numpy as np
import pytest

from engine.search.budget import make_problem
from engine.search.spdy import Search, SearchSettings

from .conftest import TABLES


class SyntheticScorer:
    """A known loss: sum over layers of w_l * sparsity_l^2, with hidden sensitivities w_l.

    ``abandon`` mimics early abandon: losses >= bound come back as inf.
    """

    def __init__(self, weights, abandon=False):
        self.weights = np.asarray(weights)
        self.abandon = abandon
        self.calls = 0

    def exact(self, levels):
        return float(sum(w * float(level) ** 2 for w, level in zip(self.weights, levels)))

    def accept(self, levels):
        pass

    def score(self, allocations, bound):
        self.calls += len(allocations)
        losses = [self.exact(levels) for levels in allocations]
        return [math.inf if self.abandon and loss >= bound else loss for loss in losses]


@pytest.fixture(scope="module")
def problem():
    from engine.timing.table import load_table

    return make_problem(load_table(TABLES / "rn18_unstr.txt"), 2.0, ["conv1", "fc"])


def run(problem, scorer, **overrides):
    settings = SearchSettings(**({"random_inits": 20, "window": 15, "seed": 3} | overrides))
    return Search(problem, scorer, settings).run()


def sensitivities(problem, seed=1):
    return np.random.default_rng(seed).uniform(0.1, 10.0, len(problem.levels))


def test_search_beats_its_random_start_and_prior(problem):
    scorer = SyntheticScorer(sensitivities(problem))
    result = run(problem, scorer)
    inits = [e.loss for e in result.history if e.phase == "init"]
    assert result.loss < min(inits)
    assert result.loss < scorer.exact(problem.solve().levels)  # the learned costs beat the prior
    assert result.allocation.predicted_time <= problem.table.base / 2.0
    assert result.loss == scorer.exact(result.allocation.levels)
    skipped = [i for i, s in enumerate(problem.skipped) if s]
    assert all(result.allocation.levels[i] == "0.0000" for i in skipped)


def test_protocol_phases_and_acceptance(problem):
    result = run(problem, SyntheticScorer(sensitivities(problem)))
    phases = [e.phase for e in result.history]
    assert phases[:20] == ["init"] * 20
    k0 = round(0.1 * len(problem.searchable))
    assert [p for p in dict.fromkeys(phases[20:])] == [f"k={k}" for k in range(k0, 0, -1)]
    best = [e.best for e in result.history]
    assert all(b2 <= b1 for b1, b2 in zip(best, best[1:]))
    for before, e in zip(result.history[19:], result.history[20:]):
        assert e.accepted == (e.loss < before.best)  # strict improvement only
    # after the last acceptance, exactly `window` failed tries close each remaining k
    tail = result.history[-15:]
    assert not any(e.accepted for e in tail) and {e.phase for e in tail} == {"k=1"}


def test_same_seed_same_result_different_seed_differs(problem):
    weights = sensitivities(problem)
    a, b = run(problem, SyntheticScorer(weights)), run(problem, SyntheticScorer(weights))
    assert np.array_equal(a.coefficients, b.coefficients) and a.allocation.levels == b.allocation.levels
    c = run(problem, SyntheticScorer(weights), seed=4)
    assert not np.array_equal(a.coefficients, c.coefficients)


@pytest.mark.parametrize("batch", [2, 3, 7])
def test_batching_never_changes_the_trajectory(problem, batch):
    weights = sensitivities(problem)
    serial = run(problem, SyntheticScorer(weights))
    batched = run(problem, SyntheticScorer(weights), batch=batch)
    assert [e.levels for e in batched.history] == [e.levels for e in serial.history]
    assert np.array_equal(batched.coefficients, serial.coefficients)


def test_early_abandon_keeps_the_trajectory(problem):
    weights = sensitivities(problem)
    exact = run(problem, SyntheticScorer(weights))
    abandoning = run(problem, SyntheticScorer(weights, abandon=True))
    assert abandoning.allocation.levels == exact.allocation.levels and abandoning.loss == exact.loss
    assert [e.accepted for e in abandoning.history] == [e.accepted for e in exact.history]


def test_equal_allocations_are_scored_once_and_replay_skips_scoring(problem):
    weights = sensitivities(problem)
    scorer = SyntheticScorer(weights)
    first = run(problem, scorer)
    assert scorer.calls < first.evaluations  # duplicates come from the cache
    replay = {}
    from engine.search.spdy import allocation_key

    for e in first.history:
        replay[allocation_key(e.levels)] = e.loss
    again_scorer = SyntheticScorer(weights)
    settings = SearchSettings(random_inits=20, window=15, seed=3)
    again = Search(problem, again_scorer, settings, replay=replay).run()
    assert again_scorer.calls == 0 and again.allocation.levels == first.allocation.levels
