"""SPDY over two choices per layer, {dense, 2:4}: the DP, the search and the baselines on GPU
timing tables measured on an NVIDIA H200 (tests/data/cuda24/README.md): all-MiniLM-L6-v2 in
float16, 256 sentences, every call replayed from a CUDA graph (every 2:4 layer faster alone), and
the same eagerly (every 2:4 layer slower: torch re-plans cuSPARSELt on each call).  Every
expected answer is computed from the table the test reads."""

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.search import baselines
from engine.search.budget import make_problem, prior_costs
from engine.search.dp import InfeasibleTarget
from engine.search.spdy import Search, SearchSettings
from engine.timing.table import LayerTimes, TimingTable, load_table

from .conftest import TABLES

FIXTURE = Path(__file__).parent / "data" / "cuda24" / "minilm-h200-graphs.json"
EAGER = Path(__file__).parent / "data" / "cuda24" / "minilm-h200-eager.json"
DENSE, TWO_FOUR = "0.0000", "2:4"


@pytest.fixture(scope="module")
def measured():
    return load_table(FIXTURE)


@pytest.fixture(scope="module")
def table(measured):
    """Both kinds of layer in one measured table: the FFN rows as replayed from CUDA graphs (2:4
    faster), the attention projections' 2:4 times as measured eagerly (2:4 slower)."""
    eager = load_table(EAGER)
    layers = [layer if "attention" not in layer.name else
              LayerTimes(layer.name, layer.levels, (layer.dense_seconds, eager.layers[row].seconds_at(TWO_FOUR)), "eager 2:4")
              for row, layer in enumerate(measured.layers)]
    return TimingTable(measured.base, measured.prunable, layers, backend="cuda-2:4", environment=measured.environment)


def between(table, fraction):
    """A target a fraction of the way from 1x to the table's largest speedup."""
    return 1 + fraction * (make_problem(table, 1.0).max_speedup - 1)


def faster(table):
    """Rows where 2:4 beats dense, read straight off the table."""
    return [row for row, layer in enumerate(table.layers) if layer.seconds_at(TWO_FOUR) < layer.dense_seconds]


def test_the_fixtures_name_the_gpu_and_runtime_they_were_measured_on(measured):
    eager = load_table(EAGER)
    for table, graphs in ((measured, True), (eager, False)):
        assert table.backend == "cuda-2:4" and table.environment["gpu"] == "NVIDIA H200"
        assert table.environment["cuda_graphs"] is graphs and table.environment["dtype"] == "float16"
        assert all(layer.levels == (DENSE, TWO_FOUR) for layer in table.layers) and len(table.layers) == 36
    assert len(faster(measured)) == 36 and faster(eager) == []  # replayed, every 2:4 layer pays; eagerly, none
    assert "NVIDIA H200" in (FIXTURE.parent / "README.md").read_text()


def test_the_mixed_table_has_both_kinds_of_layer(table):
    assert faster(table) == [row for row in range(36) if row % 6 in (4, 5)]  # the FFN layers


def test_slower_24_levels_are_dropped_and_their_layers_not_searched(table):
    problem = make_problem(table, between(table, 0.5))
    fast = faster(table)
    assert problem.searchable == fast
    assert {name for name, level in problem.dropped} == {table.names[row] for row in range(36) if row not in fast}
    assert all(level == TWO_FOUR for _, level in problem.dropped)
    for row in range(36):
        assert problem.times[row, 0] == table.layers[row].dense_seconds
        assert problem.times[row, 1] == (table.layers[row].seconds_at(TWO_FOUR) if row in fast else math.inf)


def test_unstructured_levels_slower_than_dense_are_kept():
    """Only N:M levels are dropped: the CPU tables' slow low-sparsity levels stay as measured."""
    rn50 = load_table(TABLES / "rn50_unstr.txt")
    problem = make_problem(rn50, 2.0)
    times, _ = rn50.matrix()
    assert problem.dropped == () and np.array_equal(problem.times, times)
    assert any(layer.seconds[1] > layer.dense_seconds for layer in rn50.layers)


def test_max_speedup_is_24_exactly_where_faster(table):
    problem = make_problem(table, 1.0)
    fast = faster(table)
    chosen = [TWO_FOUR if row in fast else DENSE for row in range(36)]
    assert problem.max_speedup == pytest.approx(table.base / table.predicted_time(chosen), rel=1e-12)
    # between the best allocation and the second best (one fast layer dense) only the best fits
    gains = [table.layers[row].dense_seconds - table.layers[row].seconds_at(TWO_FOUR) for row in fast]
    second = table.base / (table.predicted_time(chosen) + min(gains))
    target = (problem.max_speedup + second) / 2
    allocation = make_problem(table, target).solve(None, buckets=200_000)
    assert allocation.levels == chosen and allocation.predicted_speedup >= target
    with pytest.raises(InfeasibleTarget) as info:
        make_problem(table, problem.max_speedup * 1.001).solve()
    assert info.value.max_speedup == pytest.approx(problem.max_speedup)


def brute_force(problem, costs):
    """The least cost over all 2^L allocations whose true (unrounded) time fits the budget."""
    best, best_choice = math.inf, None
    options = [[i for i in range(2) if math.isfinite(problem.times[row, i]) and math.isfinite(costs[row, i])]
               for row in range(len(problem.levels))]
    for combo in itertools.product(*options):
        if math.fsum(problem.times[row, i] for row, i in enumerate(combo)) <= problem.budget:
            cost = sum(costs[row, i] for row, i in enumerate(combo))
            if cost < best:
                best, best_choice = cost, combo
    return best, best_choice


@pytest.mark.parametrize("seed", range(5))
def test_dp_over_binary_choices_matches_brute_force(table, seed):
    two_blocks = table.subset(table.names[:12])
    rng = np.random.default_rng(seed)
    problem = make_problem(two_blocks, 1.0)
    low, high = two_blocks.base / (two_blocks.overhead + problem.min_time), two_blocks.base / two_blocks.base
    problem = make_problem(two_blocks, float(rng.uniform(high, low)))
    costs = np.column_stack([np.zeros(12), rng.uniform(0.0, 1.0, 12)])
    best, _ = brute_force(problem, costs)
    solution = problem.solve(costs, buckets=500)
    assert solution.cost == pytest.approx(best, abs=1e-12)
    assert solution.predicted_time <= two_blocks.base / problem.target
    assert all(level == DENSE for row, level in enumerate(solution.levels) if row not in problem.searchable)


class BinaryScorer:
    """A known loss: the sum of hidden sensitivities w_l over the layers at 2:4."""

    def __init__(self, weights):
        self.weights = np.asarray(weights)

    def exact(self, levels):
        return float(sum(w for w, level in zip(self.weights, levels) if level == TWO_FOUR))

    def accept(self, levels):
        pass

    def score(self, allocations, bound):
        return [self.exact(levels) for levels in allocations]


def test_search_over_binary_choices(table):
    target = between(table, 0.6)
    problem = make_problem(table, target)
    weights = np.random.default_rng(7).uniform(0.1, 10.0, 36)
    scorer = BinaryScorer(weights)
    result = Search(problem, scorer, SearchSettings(seed=0)).run()  # the default 100 inits, windows of 100
    fast = problem.searchable
    assert all(result.allocation.levels[row] == DENSE for row in range(36) if row not in fast)
    assert result.allocation.predicted_time <= table.base / target
    assert result.loss == scorer.exact(result.allocation.levels)
    assert result.loss < scorer.exact(baselines.prior(problem).levels) < scorer.exact(baselines.uniform(problem).levels)
    # the true optimum over the layers that can gain (2^12), in unrounded time; the search is a
    # heuristic: on this table, over 4 weight draws x 3 search seeds it reached the optimum 8 times
    # out of 12, at most 1.10x of it; this one (weights 7, seed 0) reaches it
    best = math.inf
    for subset in itertools.product([DENSE, TWO_FOUR], repeat=len(fast)):
        levels = [DENSE] * 36
        for row, level in zip(fast, subset):
            levels[row] = level
        if table.predicted_time(levels) <= table.base / target:
            best = min(best, scorer.exact(levels))
    assert result.loss == pytest.approx(best, rel=1e-12)


def test_baselines_over_binary_choices(table):
    target = between(table, 0.6)
    problem = make_problem(table, target)
    fast = set(faster(table))
    uniform = baselines.uniform(problem)
    assert uniform.levels == [TWO_FOUR if row in fast else DENSE for row in range(36)]  # 2:4 wherever it pays
    assert uniform.predicted_time == pytest.approx(table.predicted_time(uniform.levels), rel=1e-15)
    prior = baselines.prior(problem)
    assert prior.levels == problem.solve().levels and prior.predicted_speedup >= target
    assert all(prior.levels[row] == DENSE for row in range(36) if row not in fast)
    errors = {name: {TWO_FOUR: 0.0 if row not in fast else 1.0 + row} for row, name in enumerate(table.names)}
    squared = baselines.squared_error(problem, errors)  # even free 2:4 stays off the slow layers
    assert all(squared.levels[row] == DENSE for row in range(36) if row not in fast)
    assert squared.predicted_speedup >= target
    generator = torch.Generator().manual_seed(0)
    weights = {name: torch.randn(64, 64, generator=generator) * (1 + row % 3) for row, name in enumerate(table.names)}
    magnitude = baselines.global_magnitude(problem, weights)
    assert magnitude.predicted_speedup >= target
    assert set(magnitude.levels) <= {DENSE, TWO_FOUR}
    assert all(magnitude.levels[row] == DENSE for row in range(36) if row not in fast)
    with pytest.raises(InfeasibleTarget):
        baselines.uniform(make_problem(table, problem.max_speedup * 1.001))


def test_dense_only_layers_from_the_profiler(table):
    """Layers the 2:4 kernels cannot run come with their dense level only: never searched, always dense."""
    layers = [LayerTimes(layer.name, (DENSE,), (layer.dense_seconds,), "dense only: test") if row % 6 == 4 else layer
              for row, layer in enumerate(table.layers)]  # every FFN-in layer dense-only
    reduced = TimingTable(table.base, table.prunable, layers, backend="cuda-2:4")
    problem = make_problem(reduced, between(reduced, 0.5))
    assert problem.searchable == [row for row in faster(table) if row % 6 != 4]
    assert prior_costs(problem.levels)[4].tolist() == [0.0, math.inf]
    result = Search(problem, BinaryScorer(np.ones(36)), SearchSettings(random_inits=5, window=5)).run()
    assert all(result.allocation.levels[row] == DENSE for row in range(4, 36, 6))
    for allocation in (baselines.uniform(problem), baselines.prior(problem)):
        assert all(allocation.levels[row] == DENSE for row in range(4, 36, 6))


def test_a_table_where_no_24_level_pays_is_refused_with_the_reason(tmp_path):
    """As measured on the H200 in eager PyTorch: every 2:4 time above dense."""
    from types import SimpleNamespace

    from engine.core.errors import RunError
    from engine.run.stages.search import run_search

    problem = make_problem(load_table(EAGER), 1.0)
    assert problem.searchable == [] and len(problem.dropped) == 36
    with pytest.raises(RunError, match=r"timings.json: no layer has a usable level besides dense \(36 levels slower"):
        run_search(SimpleNamespace(run_dir=tmp_path), problem)
