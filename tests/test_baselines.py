import numpy as np
import pytest
import torch

from engine.search import baselines
from engine.search.budget import make_problem
from engine.search.dp import InfeasibleTarget
from engine.core.grid import level_sparsity
from engine.timing.table import load_table

from .conftest import TABLES


@pytest.fixture(scope="module")
def problem():
    return make_problem(load_table(TABLES / "rn50_unstr.txt"), 2.0, ["conv1", "fc"])


def test_uniform_is_the_least_sparse_shared_level_that_fits(problem):
    allocation = baselines.uniform(problem)
    chosen = {allocation.levels[row] for row in problem.searchable}
    assert len(chosen) == 1 and allocation.levels[0] == "0.0000" and allocation.levels[-1] == "0.0000"
    assert allocation.predicted_speedup >= 2.0
    level = chosen.pop()
    lower = problem.levels[1][problem.levels[1].index(level) - 1]
    rows = [lower if row in problem.searchable else "0.0000" for row in range(len(problem.levels))]
    assert problem.table.predicted_time(rows) > problem.table.base / 2.0  # one level less misses the target


def test_global_magnitude_meets_budget_with_one_threshold(problem):
    generator = torch.Generator().manual_seed(0)
    names = problem.table.names
    weights = {name: torch.randn(64, 32, generator=generator) * (1 + row % 3) for row, name in enumerate(names)}
    allocation = baselines.global_magnitude(problem, weights)
    assert allocation.predicted_speedup >= 2.0
    # layers with larger weights (scale 3) end up no sparser than same-shaped layers with scale 1
    by_scale = {s: [level_sparsity(allocation.levels[r]) for r in problem.searchable if r % 3 == s] for s in (0, 2)}
    assert np.mean(by_scale[0]) > np.mean(by_scale[2])


def test_prior_and_squared_error(problem):
    assert baselines.prior(problem).levels == problem.solve().levels
    errors = {name: {level: 1.0 for level in problem.levels[row]} for row, name in enumerate(problem.table.names)}
    errors[problem.table.names[5]] = {level: 0.0 for level in problem.levels[5]}  # free to prune
    allocation = baselines.squared_error(problem, errors)
    assert allocation.levels[5] != "0.0000" and allocation.predicted_speedup >= 2.0


def test_infeasible_baselines_raise(problem):
    too_far = make_problem(problem.table, 4.5)
    with pytest.raises(InfeasibleTarget):
        baselines.uniform(too_far)
