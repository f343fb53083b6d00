"""Running a model on this machine: threads, dense paths, layer inputs, and forward passes.

The helpers every backend's profiler and verify share (CPU and GPU alike):

* ``set_threads``: our kernels (Numba) and torch on the same number of threads;
* ``dense_paths``: the model on each dense path ("torch" as loaded, "onednn" pre-packed Linears);
* ``capture_inputs``: the input tensor each named layer receives in one forward pass;
* ``forward``: ``loaded.run_model(model, inputs)`` under ``torch.no_grad()``.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import nn

from engine.runtime.dense import densify_fast, onednn_available


def set_threads(threads: int) -> None:
    """Both runtimes on ``threads`` threads.  Numba first: the first ``numba.set_num_threads`` launches
    its OpenMP pool, which resets the process's OpenMP thread count, torch's included (torch then
    ran the dense path on every core while our kernels ran on ``threads``)."""
    import numba

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    torch.set_num_threads(threads)


def dense_paths(model: nn.Module, names: list[str], only: str | None = None) -> dict[str, nn.Module]:
    """The model on each dense path: "torch" (as loaded) and "onednn" (the named Linears on oneDNN's
    pre-packed GEMM; convolutions already run on oneDNN in torch).  ``only`` builds just one."""
    paths: dict[str, nn.Module] = {}
    if only in (None, "torch"):
        paths["torch"] = model
    if only in (None, "onednn") and onednn_available():
        linears = [name for name in names if isinstance(model.get_submodule(name), nn.Linear)]
        paths["onednn"] = densify_fast(copy.deepcopy(model), linears)
    if only is not None and only not in paths:
        raise ValueError(f"dense path {only!r} is not available here")
    return paths


def capture_inputs(model_run: Callable[[], Any], model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """The input tensor each named layer receives during one forward pass."""
    inputs: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        def hook(_module, args, name=name):
            inputs.setdefault(name, args[0].detach())

        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model_run()
    finally:
        for handle in handles:
            handle.remove()
    return inputs


def forward(loaded, model: nn.Module, inputs: Any):
    """The output the losses compare (``loaded.run_model``), without autograd."""
    with torch.no_grad():
        return loaded.run_model(model, inputs)
