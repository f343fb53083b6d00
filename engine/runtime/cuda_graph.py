"""A model's forward pass replayed from a CUDA graph: the runtime of cuda-2:4 runs with ``hardware.cuda_graphs``.

In eager PyTorch every kernel launch costs CPU time, and torch's cuSPARSELt product sets up its
matmul plan again on every call: on an H200 a MiniLM 2:4 layer took about 0.5 ms eagerly against
20-120 us for the dense layer (docs/gpu.md).  A CUDA graph records the kernels of one call once
and replays them with a single launch, on the same (static) tensors, without that CPU work:

    capture:  out_static = f(x_static)            (kernels recorded, not re-planned)
    call(x):  x_static <- x;  replay;  return copy(out_static)

``capture`` records one call; ``CudaGraphModule(model, example)`` wraps a module so that calls
with inputs shaped like ``example`` (same keys, shapes, dtypes, device) replay its graph, and any
other call runs ``model`` eagerly (the same function, launch costs included).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import torch
from torch import nn


def capture(call: Callable[[], Any], warmup: int = 3) -> tuple[torch.cuda.CUDAGraph, Any]:
    """``call`` recorded in a CUDA graph, and the (static) output of the recorded call.

    The call is warmed up on a side stream first (lazy initialisation, workspace and plan
    allocation), as capture requires; replaying the graph rewrites the returned output in place."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = call()
    torch.cuda.synchronize()
    return graph, output


def copy_output(output: Any) -> Any:
    """A copy of every tensor in ``output`` (a tensor, a mapping such as a Hugging Face ModelOutput,
    a tuple or list), so that the next replay does not overwrite what a caller holds."""
    if isinstance(output, torch.Tensor):
        return output.clone()
    if isinstance(output, Mapping):
        return type(output)(**{key: copy_output(value) for key, value in output.items()})
    if isinstance(output, (tuple, list)):
        return type(output)(copy_output(value) for value in output)
    return output


def _same_kind(given: Any, static: torch.Tensor) -> bool:
    return (isinstance(given, torch.Tensor) and given.shape == static.shape and given.dtype == static.dtype
            and given.device == static.device)


class CudaGraphModule(nn.Module):
    """``model`` called through a CUDA graph captured for ``example`` (keyword tensors, or one tensor).

    ``graph_capture`` is ``capture`` (a parameter so the tests can run the wrapper's logic on the CPU)."""

    def __init__(self, model: nn.Module, example: Any, graph_capture: Callable = capture):
        super().__init__()
        self.model = model
        self.keyword = isinstance(example, Mapping)
        self.static = {key: value.clone() for key, value in example.items()} if self.keyword else example.clone()
        with torch.no_grad():
            self.graph, self.output = graph_capture(self._call_static)

    def _call_static(self) -> Any:
        return self.model(**self.static) if self.keyword else self.model(self.static)

    def replays(self, args: tuple, kwargs: dict) -> bool:
        """Whether a call with these arguments replays the graph (else it runs eagerly)."""
        if self.keyword:
            return not args and set(kwargs) == set(self.static) and all(
                _same_kind(kwargs[key], value) for key, value in self.static.items())
        return len(args) == 1 and not kwargs and _same_kind(args[0], self.static)

    def forward(self, *args, **kwargs) -> Any:
        if not self.replays(args, kwargs):
            return self.model(*args, **kwargs)
        with torch.no_grad():
            if self.keyword:
                for key, value in self.static.items():
                    value.copy_(kwargs[key])
            else:
                self.static.copy_(args[0])
            self.graph.replay()
        return copy_output(self.output)
