import itertools
import math

import numpy as np
import pytest

from engine.search import dp
from engine.search.budget import make_problem, prior_costs


def brute_force(times, costs, budget, buckets):
    """Every combination, judged on the same discretised times as the DP."""
    tau = dp.discretise(times, costs, budget, buckets)
    best = math.inf
    options = [[i for i in range(times.shape[1]) if tau[row, i] >= 0] for row in range(times.shape[0])]
    for combo in itertools.product(*options):
        if sum(tau[row, i] for row, i in enumerate(combo)) <= buckets:
            best = min(best, sum(costs[row, i] for row, i in enumerate(combo)))
    return best


def random_instance(rng, layers, choices, missing=0.0):
    times = rng.uniform(0.1, 1.0, (layers, choices))
    costs = rng.uniform(0.0, 1.0, (layers, choices))
    times[rng.random((layers, choices)) < missing] = np.inf
    times[:, 0] = rng.uniform(0.5, 1.0, layers)  # every layer keeps one usable choice
    budget = rng.uniform(times.min(axis=1).sum(), times[:, 0].sum())
    return times, costs, budget


@pytest.mark.parametrize("seed", range(40))
def test_matches_brute_force_on_small_instances(seed):
    rng = np.random.default_rng(seed)
    layers, choices = int(rng.integers(1, 7)), int(rng.integers(1, 5))
    times, costs, budget = random_instance(rng, layers, choices, missing=0.2)
    buckets = int(rng.choice([7, 50, 1000]))
    try:
        solution = dp.solve(times, costs, budget, buckets)
    except dp.InfeasibleTarget:
        assert brute_force(times, costs, budget, buckets) == math.inf
        return
    assert solution.cost == pytest.approx(brute_force(times, costs, budget, buckets), abs=1e-12)
    assert solution.time <= budget


@pytest.mark.parametrize("seed", range(10))
def test_matches_numpy_reference_on_random_tables(seed):
    rng = np.random.default_rng(100 + seed)
    times, costs, budget = random_instance(rng, 30, 12, missing=0.1)
    costs[rng.random(costs.shape) < 0.3] = 0.5  # ties: both must break them the same way
    fast, reference = dp.solve(times, costs, budget, 2000), dp.solve_numpy(times, costs, budget, 2000)
    assert np.array_equal(fast.choice, reference.choice) and fast.cost == reference.cost


@pytest.mark.parametrize("target", [1.5, 2.0, 3.0])
def test_matches_numpy_reference_and_budget_on_shipped_tables(shipped_tables, target):
    for name, table in shipped_tables.items():
        problem = make_problem(table, target)
        if target >= problem.max_speedup:
            continue
        costs = prior_costs(problem.levels, problem.times.shape[1])
        fast = dp.solve(problem.times, costs, problem.budget)
        reference = dp.solve_numpy(problem.times, costs, problem.budget)
        assert np.array_equal(fast.choice, reference.choice), name
        allocation = problem.allocation(fast.choice)
        assert allocation.predicted_time <= table.base / target, name  # the promise, in true time
        assert allocation.predicted_speedup >= target


def test_rounding_up_never_overshoots_where_nearest_would():
    # 3 layers of 0.34 s dense (cost 0) or 0 s pruned (cost 1), budget 1.0 s, 3 buckets: nearest
    # rounding makes each dense time 1 bucket and keeps all three dense (1.02 s > 1.0 s).
    times = np.array([[0.34, 0.0]] * 3)
    costs = np.array([[0.0, 1.0]] * 3)
    tau_nearest = np.round(times / (1.0 / 3))
    assert tau_nearest[:, 0].sum() <= 3 and times[:, 0].sum() > 1.0
    solution = dp.solve(times, costs, 1.0, buckets=3)
    assert solution.time <= 1.0 and solution.cost > 0


def test_skipped_layers_are_charged_their_dense_time(shipped_tables):
    table = shipped_tables["rn50_unstr"]
    problem = make_problem(table, 2.0, ["conv1", "fc"])
    allocation = problem.solve()
    assert allocation.levels[0] == "0.0000" and allocation.levels[-1] == "0.0000"
    assert allocation.predicted_time <= table.base / 2.0
    assert 2.0 <= allocation.predicted_speedup < 2.01  # the original CLI reached only 1.88x here


def test_skip_globs_and_unknown_names(shipped_tables):
    problem = make_problem(shipped_tables["rn50_unstr"], 1.5, ["layer1.*"])
    assert sum(problem.skipped) == 10
    with pytest.raises(ValueError, match="matches no layer"):
        make_problem(shipped_tables["rn50_unstr"], 1.5, ["nolayer"])


def test_infeasible_target_carries_the_maximum(shipped_tables):
    problem = make_problem(shipped_tables["yolov5s_unstr"], 3.0)
    with pytest.raises(dp.InfeasibleTarget) as info:
        problem.solve()
    assert info.value.max_speedup == pytest.approx(problem.max_speedup)
    assert 1.9 < info.value.max_speedup < 2.0


def test_layer_with_single_choice_and_padding():
    times = np.array([[1.0, np.inf, np.inf], [2.0, 1.0, 0.5]])
    costs = np.array([[0.0, 0.0, 0.0], [0.0, 0.1, 0.2]])
    solution = dp.solve(times, costs, 2.1)
    assert list(solution.choice) == [0, 1] and solution.time == 2.0


def test_bad_inputs():
    with pytest.raises(ValueError):
        dp.solve(np.ones((2, 2)), np.ones((2, 3)), 1.0)
    with pytest.raises(ValueError):
        dp.solve(np.full((2, 2), np.nan), np.ones((2, 2)), 1.0)
    with pytest.raises(dp.InfeasibleTarget):
        dp.solve(np.ones((2, 2)), np.ones((2, 2)), -1.0)


def test_non_positive_budget_is_infeasible_not_a_hang():
    for budget in (0.0, -0.5):
        with pytest.raises(dp.InfeasibleTarget):
            dp.solve(np.ones((2, 2)), np.ones((2, 2)), budget)
        with pytest.raises(dp.InfeasibleTarget):
            dp.solve_numpy(np.ones((2, 2)), np.ones((2, 2)), budget)
