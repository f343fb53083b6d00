"""A robust wall-clock timer for kernels on a noisy machine.

The variants being compared are timed *interleaved*: each round calls every variant once, in a
rotated order, so slow drift (frequency scaling, a neighbour's load) hits them all alike.  A
variant's time is the median of its rounds; its spread is the interquartile range relative to
the median.  A measurement whose spread exceeds ``max_spread`` is repeated (up to ``retries``
times) and the steadiest attempt kept; if none is steady the result says so (``stable=False``).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Mapping


@dataclass(frozen=True)
class Stats:
    median: float  # seconds
    q1: float
    q3: float
    repeats: int
    stable: bool = True

    @property
    def spread(self) -> float:
        """Relative interquartile range, (q3 - q1) / median."""
        return (self.q3 - self.q1) / self.median if self.median > 0 else 0.0

    def to_json(self) -> dict:
        return {"median": self.median, "q1": self.q1, "q3": self.q3, "repeats": self.repeats, "stable": self.stable}


def summarise(samples: list[float]) -> Stats:
    if len(samples) == 1:
        return Stats(samples[0], samples[0], samples[0], 1)
    q1, median, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return Stats(median, q1, q3, len(samples))


def time_interleaved(
    variants: Mapping[str, Callable[[], object]],
    warmup: int = 3,
    repeats: int = 15,
    max_spread: float = 0.15,
    retries: int = 2,
    clock: Callable[[], float] = time.perf_counter,
    timer: Callable[[Callable[[], object]], float] | None = None,
) -> dict[str, Stats]:
    """Median seconds per call of each variant, measured in rotated interleaved rounds.

    ``timer(call)`` returns the seconds of one call of ``call``; by default ``clock`` is read
    before and after it."""

    def wall(call: Callable[[], object]) -> float:
        started = clock()
        call()
        return clock() - started

    measure = timer or wall
    names = list(variants)
    for name in names:
        for _ in range(warmup):
            variants[name]()
    best: dict[str, Stats] = {}
    pending = names
    for _attempt in range(retries + 1):
        samples: dict[str, list[float]] = {name: [] for name in pending}
        for round_index in range(repeats):
            shift = round_index % len(pending)
            for name in pending[shift:] + pending[:shift]:
                samples[name].append(measure(variants[name]))
        for name in pending:
            stats = summarise(samples[name])
            if name not in best or stats.spread < best[name].spread:
                best[name] = stats
        pending = [name for name in pending if best[name].spread > max_spread]
        if not pending:
            break
    return {
        name: Stats(s.median, s.q1, s.q3, s.repeats, stable=s.spread <= max_spread) for name, s in best.items()
    }
