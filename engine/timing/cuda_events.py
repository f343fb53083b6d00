"""Timing GPU work with CUDA events, optionally replayed from a CUDA graph.

Kernels launch asynchronously, so a host clock around a call measures the launch, not the work.
A pair of CUDA events brackets ``calls`` back-to-back calls on the current stream, and one
sample is

    seconds per call = elapsed(start, end) / calls,

read once ``end`` has completed.  Several calls per sample lift a kernel of a few microseconds
well above the events' resolution (about half a microsecond); ``calls_for`` picks the count from
a first estimate.  ``CudaEventTimer`` plugs into ``engine.timing.measure.time_interleaved`` as its
``timer``, so GPU variants get the same warm-up, rotated interleaving, median and spread as the
CPU ones.

``graphed(call)`` captures one call into a CUDA graph and returns its replay: the same kernels
on the same (static) tensors without the CPU launch overhead, which dominates small layers.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from engine.runtime.cuda_graph import capture

SAMPLE_SECONDS = 2e-4  # a sample lasts at least this long (400x the event resolution)
MAX_CALLS = 1000


class CudaEventTimer:
    """Seconds per call of ``call``, averaged over ``calls`` back-to-back calls between two CUDA events."""

    def __init__(self, calls: int = 1):
        if calls < 1:
            raise ValueError(f"calls per sample must be >= 1, got {calls}")
        self.calls = calls
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)

    def __call__(self, call: Callable[[], object]) -> float:
        self.start.record()
        for _ in range(self.calls):
            call()
        self.end.record()
        self.end.synchronize()
        return self.start.elapsed_time(self.end) / 1000.0 / self.calls  # elapsed_time is in milliseconds


def calls_for(seconds: float, sample_seconds: float = SAMPLE_SECONDS, most: int = MAX_CALLS) -> int:
    """Calls per sample so that a sample lasts at least ``sample_seconds``: ceil(sample / seconds), in [1, most]."""
    if not seconds > 0:
        return most
    return max(1, min(most, math.ceil(sample_seconds / seconds)))


def estimate_seconds(call: Callable[[], object], tries: int = 3) -> float:
    """A quick first estimate of one call (the fastest of a few single-call samples, after one warm-up call)."""
    call()
    timer = CudaEventTimer(1)
    return min(timer(call) for _ in range(tries))


def graphed(call: Callable[[], object], warmup: int = 3) -> Callable[[], None]:
    """The replay of ``call`` captured in a CUDA graph (``engine.runtime.cuda_graph.capture``): the
    graph owns static copies of every tensor the call allocates."""
    graph, _ = capture(call, warmup)
    return graph.replay
