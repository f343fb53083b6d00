"""Timing every level of every layer inside the running model (``hardware.layer_timing = "in-model"``).

A layer timed alone on its captured input keeps its weights, input and output hot in cache from
one repeat to the next, and on the CPU it never hands the cores over between torch's thread pool
and our kernels' pool.  Inside the model it does both: timed with hooks, MiniLM's sparse levels
ran 11-59% slower there than alone (docs/benchmarks.md).  This profiler times the layers where
the speedup is promised, in whole forward passes of the model.  (Measured end to end, it did not
predict speedups better than the alone table, which stays the default: see
``engine.timing.cpu.profile_cpu``.  Its pass plan puts every layer's neighbours at random levels,
company a real allocation never keeps, e.g. the digits model's first convolution sparse, which
the search never picks because it is slower than dense.)

Every prunable layer is replaced by a ``LevelSwitch`` holding the layer on the dense path and one
sparse kernel per level; a pass sets each switch to a level and runs the model.  With L levels a
*round* is L passes in which every layer runs every one of its levels once, each layer in its own
random order (``pass_plan``, drawn from the run's seed), so a layer's neighbours run levels that
change from round to round.  Each round also runs one all-dense pass at a random position.  Then

    t[l][level] = median over rounds of layer l's module time in the pass where it ran level,
    base        = median over rounds of the all-dense pass, end to end,
    prunable    = sum_l t[l][dense],

and a cell's median is its time in the average company of the other layers' levels.  A cell (or
the base) whose relative interquartile range exceeds ``max_spread`` (and whose IQR exceeds
MIN_IQR_SECONDS) gets ``rounds`` more samples, up to ``retries`` times, and its median is taken
over all of them.  (Unlike ``engine.core.measure``, which keeps the steadiest attempt, samples
are pooled: much of a cell's spread here is real, its neighbours' levels changing, and more
samples make its median more precise.)  A retry's rounds only hold as many passes as the layer
with the most unsteady levels needs (the other layers run random levels in them), so
re-measuring a few noisy cells costs a few passes per round, not the whole table again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from engine.core.grid import DENSE
from engine.runtime.modules import replace_submodule
from engine.core.measure import Stats, summarise

Progress = Callable[[str, str, float, int, int], None]

# Quartiles closer than this are steady whatever their ratio: a layer of a few microseconds
# (a 10-way classifier) varies by tens of percent from clock reads and Python calls alone.
MIN_IQR_SECONDS = 20e-6


class LevelSwitch(nn.Module):
    """A prunable layer that runs one of its levels, chosen by ``active``, and times each call."""

    def __init__(self, variants: dict[str, nn.Module], clock: Callable[[], float] = time.perf_counter):
        super().__init__()
        self.variants = variants  # level -> module; a plain dict: level labels contain dots
        self.active = DENSE
        self.clock = clock
        self.started = self.finished = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.started = self.clock()
        out = self.variants[self.active](x)
        self.finished = self.clock()
        return out


def pass_plan(pending: list[list[int]], n_levels: int, rng: np.random.Generator) -> np.ndarray:
    """levels[p, i]: the level index layer i runs in pass p of one round.

    Layer i runs each of its ``pending[i]`` levels exactly once, in a random order, and random
    levels in the passes left over (company for the other layers); a round has as many passes as
    the longest pending list.  With every level pending, each layer runs
    every level once per round, its neighbours at levels that change from round to round."""
    passes = max(len(levels) for levels in pending)
    plan = np.empty((passes, len(pending)), dtype=np.int64)
    for column, levels in enumerate(pending):
        plan[: len(levels), column] = rng.permutation(np.asarray(levels, dtype=np.int64))
        plan[len(levels) :, column] = rng.integers(0, n_levels, size=passes - len(levels))
    return plan


@dataclass
class InModelTimes:
    """What the in-model profiler measured: per-layer, per-level stats and the all-dense pass."""

    cells: dict[str, dict[str, Stats]]  # layer -> level -> module time
    base: Stats  # the all-dense model, end to end
    attempts: int  # how many times the rounds ran (1 + retries used)
    passes: int  # forward passes timed, warm-up excluded
    outside: dict[str, float] = field(default_factory=dict)  # median time outside the layers, by pass kind

    def summary(self) -> dict:
        """JSON for the table's environment: the method and what it cost."""
        return {"attempts": self.attempts, "passes": self.passes, "outside_seconds": self.outside}


def switched_model(dense_model: nn.Module, variants: dict[str, dict[str, nn.Module]]) -> dict[str, LevelSwitch]:
    """Put a LevelSwitch over each named layer of ``dense_model`` (in place); returns the switches."""
    switches = {}
    for name, by_level in variants.items():
        switches[name] = LevelSwitch(by_level)
        replace_submodule(dense_model, name, switches[name])
    return switches


def time_in_model(
    run_model: Callable[[nn.Module], Any],
    model: nn.Module,
    switches: dict[str, LevelSwitch],
    levels: list[str],
    rounds: int,
    max_spread: float,
    seed: int,
    retries: int = 2,
    warmup: bool = True,
    on_progress: Progress | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> InModelTimes:
    """Time every (layer, level) of ``switches`` inside passes of ``run_model(model)`` (see module doc).

    ``on_progress(layer, level, seconds, done, total)`` follows every sample of a cell being
    measured; a retry adds its samples to ``total``."""
    names = list(switches)
    rng = np.random.default_rng(seed)
    everything = [list(range(len(levels)))] * len(names)

    def run_pass(row: np.ndarray | None) -> float:
        for index, name in enumerate(names):
            switches[name].active = DENSE if row is None else levels[row[index]]
        with torch.no_grad():
            started = clock()
            run_model(model)
            return clock() - started

    def layer_seconds() -> list[float]:
        return [switches[name].finished - switches[name].started for name in names]

    if warmup:  # every variant once: compiles the kernels and faults the weights in
        for row in pass_plan(everything, len(levels), rng):
            run_pass(row)
        run_pass(None)

    samples: dict[tuple[str, str], list[float]] = {(name, level): [] for name in names for level in levels}
    base_samples: list[float] = []
    outside: dict[str, list[float]] = {"dense": [], "mixed": []}
    pending = everything
    done = total = passes = attempts = 0
    for attempt in range(retries + 1):
        attempts = attempt + 1
        total += rounds * sum(len(indices) for indices in pending)
        wanted = [{levels[k] for k in indices} for indices in pending]
        for _round in range(rounds):
            plan = pass_plan(pending, len(levels), rng)
            dense_at = int(rng.integers(0, len(plan) + 1))
            for p in range(len(plan) + 1):
                row = None if p == dense_at else plan[p - (p > dense_at)]
                seconds = run_pass(row)
                passes += 1
                per_layer = layer_seconds()
                outside["dense" if row is None else "mixed"].append(seconds - sum(per_layer))
                if row is None:
                    base_samples.append(seconds)
                    continue
                for index, (name, layer_time) in enumerate(zip(names, per_layer)):
                    level = levels[row[index]]
                    if level not in wanted[index]:
                        continue  # company for the others, not a cell being measured
                    samples[(name, level)].append(layer_time)
                    done += 1
                    if on_progress is not None:
                        on_progress(name, level, layer_time, done, total)
        stats = {name: {level: summarise(samples[(name, level)]) for level in levels} for name in names}
        base = summarise(base_samples)
        pending = [[k for k, level in enumerate(levels) if not _steady(stats[name][level], max_spread)] for name in names]
        if not any(pending) and _steady(base, max_spread):
            break
    cells = {name: {level: _flag(stats[name][level], max_spread) for level in levels} for name in names}
    medians = {kind: float(np.median(values)) for kind, values in outside.items() if values}
    return InModelTimes(cells, _flag(base, max_spread), attempts, passes, medians)


def _steady(stats: Stats, max_spread: float) -> bool:
    """Relative IQR within ``max_spread``, or an IQR under MIN_IQR_SECONDS (timer jitter)."""
    return stats.spread <= max_spread or stats.q3 - stats.q1 < MIN_IQR_SECONDS


def _flag(stats: Stats, max_spread: float) -> Stats:
    return Stats(stats.median, stats.q1, stats.q3, stats.repeats, stable=_steady(stats, max_spread))
