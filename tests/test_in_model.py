"""The in-model profiler: the pass plan, exact medians on a scripted clock, retries.
(A real table of the digits model, both ways: tests/test_profiler.py.)"""

import numpy as np
import pytest
import torch
from torch import nn

from engine.core.grid import DENSE
from engine.timing.in_model import MIN_IQR_SECONDS, LevelSwitch, pass_plan, switched_model, time_in_model

LEVELS = [DENSE, "0.5000", "0.9000"]


class Clock:
    """A clock that only moves when a scripted module says so."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Costs(nn.Module):
    """Advances the clock by ``cost(call number)`` seconds per call and passes x through."""

    def __init__(self, clock: Clock, cost):
        super().__init__()
        self.clock, self.cost, self.calls = clock, cost, 0

    def forward(self, x):
        self.clock.now += self.cost(self.calls)
        self.calls += 1
        return x


def scripted_model(clock: Clock, seconds: dict[str, dict[str, float]], outside: float, noisy: str | None = None):
    """A chain of layers a, b, c with an 'outside' operator before each; a layer's levels cost
    ``seconds[layer][level]``, except that the ``noisy`` level of layer a alternates 1x / 3x."""
    model = nn.Sequential()
    for name, by_level in seconds.items():
        model.add_module(f"pre_{name}", Costs(clock, lambda _i: outside))
        model.add_module(name, nn.Identity())
    variants = {}
    for name, by_level in seconds.items():
        variants[name] = {}
        for level, cost in by_level.items():
            if name == "a" and level == noisy:
                variants[name][level] = Costs(clock, lambda i, c=cost: c * (3 if i % 2 else 1) if i < 6 else c)
            else:
                variants[name][level] = Costs(clock, lambda _i, c=cost: c)
    switches = switched_model(model, variants)
    for switch in switches.values():
        switch.clock = clock
    return model, switches


SECONDS = {name: {level: scale * (1.0 - float(level) * 0.8) for level in LEVELS} for name, scale in (("a", 4.0), ("b", 2.0), ("c", 1.0))}


def test_pass_plan_runs_every_pending_level_once_and_is_seeded():
    plan = pass_plan([list(range(7))] * 5, 7, np.random.default_rng(3))
    assert plan.shape == (7, 5)
    for column in plan.T:
        assert sorted(column) == list(range(7))
    assert np.array_equal(plan, pass_plan([list(range(7))] * 5, 7, np.random.default_rng(3)))
    assert not np.array_equal(plan, pass_plan([list(range(7))] * 5, 7, np.random.default_rng(4)))
    # a retry: only the pending levels are owed, the longest list sets the number of passes
    retry = pass_plan([[2], [], [0, 5, 6]], 7, np.random.default_rng(0))
    assert retry.shape == (3, 3) and retry[0, 0] == 2 and sorted(retry[:, 2]) == [0, 5, 6]
    assert ((retry >= 0) & (retry < 7)).all()


def test_in_model_medians_base_and_outside_are_exact():
    clock = Clock()
    model, switches = scripted_model(clock, SECONDS, outside=0.5)
    seen = []
    times = time_in_model(lambda m: m(torch.zeros(1)), model, switches, LEVELS, rounds=5, max_spread=0.1, seed=0,
                          clock=clock, on_progress=lambda *event: seen.append(event))
    for name, by_level in SECONDS.items():
        for level, cost in by_level.items():
            stats = times.cells[name][level]
            assert stats.median == pytest.approx(cost) and stats.repeats == 5 and stats.stable
    dense_layers = sum(by_level[DENSE] for by_level in SECONDS.values())
    assert times.base.median == pytest.approx(dense_layers + 3 * 0.5)
    assert times.outside == pytest.approx({"dense": 1.5, "mixed": 1.5})
    assert times.attempts == 1 and times.passes == 5 * (len(LEVELS) + 1)
    # one progress event per (layer, level) sample, counted up to the total
    assert len(seen) == 5 * 3 * len(LEVELS) and [event[3] for event in seen] == list(range(1, len(seen) + 1))
    assert {event[4] for event in seen} == {len(seen)}


def test_a_noisy_cell_gets_more_samples_until_its_median_is_steady():
    clock = Clock()
    model, switches = scripted_model(clock, SECONDS, outside=0.5, noisy="0.5000")
    # the noisy level alternates cost and 3x cost for its first 6 calls (one warm-up and 5 rounds):
    # 5 samples with 3 of them at 3x are unsteady, 10 pooled samples (3 at 3x) still are, and 15
    # pooled samples (3 at 3x) are steady, at the true cost
    times = time_in_model(lambda m: m(torch.zeros(1)), model, switches, LEVELS, rounds=5, max_spread=0.1, seed=0, clock=clock,
                          retries=2)
    cell = times.cells["a"]["0.5000"]
    assert times.attempts == 3 and cell.repeats == 15 and cell.stable and cell.median == pytest.approx(SECONDS["a"]["0.5000"])
    assert times.cells["b"]["0.9000"].repeats == 5 and times.cells["b"]["0.9000"].median == pytest.approx(SECONDS["b"]["0.9000"])
    # a retry round is the one owed cell's pass and the dense pass
    assert times.passes == 5 * (len(LEVELS) + 1) + 2 * 5 * 2


def test_a_cell_that_stays_noisy_is_flagged_after_the_retries():
    clock = Clock()
    model, switches = scripted_model(clock, SECONDS, outside=0.5, noisy="0.5000")
    switches["a"].variants["0.5000"].cost = lambda i: 0.001 * (3 if i % 2 else 1)  # 1 ms vs 3 ms, for ever
    times = time_in_model(lambda m: m(torch.zeros(1)), model, switches, LEVELS, rounds=4, max_spread=0.1, seed=0,
                          clock=clock, retries=1)
    assert times.attempts == 2 and not times.cells["a"]["0.5000"].stable
    assert times.cells["a"][DENSE].stable


def test_jitter_below_the_floor_counts_as_steady():
    clock = Clock()
    model, switches = scripted_model(clock, SECONDS, outside=0.5)
    tiny = MIN_IQR_SECONDS / 4
    switches["c"].variants["0.9000"].cost = lambda i: tiny * (3 if i % 2 else 1)  # 200% spread, 10 us apart
    times = time_in_model(lambda m: m(torch.zeros(1)), model, switches, LEVELS, rounds=4, max_spread=0.1, seed=0, clock=clock)
    assert times.attempts == 1 and times.cells["c"]["0.9000"].stable


def test_level_switch_runs_the_active_level_and_times_it():
    clock = Clock()
    switch = LevelSwitch({DENSE: Costs(clock, lambda _i: 2.0), "0.5000": Costs(clock, lambda _i: 1.0)}, clock)
    switch.active = "0.5000"
    assert torch.equal(switch(torch.ones(2)), torch.ones(2))
    assert (switch.started, switch.finished) == (0.0, 1.0)
