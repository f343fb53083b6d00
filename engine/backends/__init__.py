"""Backends: the target hardware a run makes the model fast on, looked up by ``hardware.backend``.

A backend is the one place that knows, for its hardware, how to

* ``profile``: measure every layer at every level (the timing table, its fingerprint set),
* ``fingerprint``: say what a cached timing table must match to be reused,
* ``build``: turn the final model and its allocation into the executable model (our kernels in
  the pruned layers, the dense path elsewhere), and
* ``verify``: check that model's output and measure its speedup end to end, and
* ``runtime``: name what runs that model ("compiled" or "eager"; result.json and
  ``engine.deploy`` read it).

Adding a backend: a module with a class that has these methods and a ``name``, and one
line in ``BACKENDS``.  Profile validation (``engine.core.profile``) lists the names.
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import nn

from engine.backends.cpu import CpuBackend
from engine.backends.cuda24 import Cuda24Backend
from engine.timing.table import TimingTable


class Backend(Protocol):
    name: str

    def fingerprint(self, environment: dict, hardware, shapes: dict, levels: list[str]) -> str: ...

    def profile(self, loaded, example_inputs: Any, layers: list, levels: list[str], hardware, log, seed: int) -> TimingTable: ...

    def build(self, loaded, final: nn.Module, levels: dict[str, str], table: TimingTable, hardware,
              example_inputs: Any = None) -> nn.Module: ...

    def verify(self, loaded, final: nn.Module, levels: dict[str, str], example_inputs: Any, table: TimingTable,
               hardware, predicted: float) -> dict: ...

    def runtime(self, hardware) -> str: ...


BACKENDS: dict[str, Backend] = {backend.name: backend for backend in (CpuBackend(), Cuda24Backend())}


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown hardware.backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name]
