"""The GPU 2:4 backend (``hardware.backend = "cuda-2:4"``): dense or 2:4 per layer on sparse tensor cores.

Profile: ``engine.timing.cuda24.profile_cuda24``.  Verify builds the final model with
``Semi24Linear`` in its 2:4 layers, checks its output against the same weights computed densely
in the same dtype,

    max |y_sparse - y_dense_with_zeros| <= tol(dtype) * max |y_dense_with_zeros|,

(the kernels only reorder the float16/bfloat16 accumulation), then times dense and sparse end
to end, interleaved: measured_speedup = median(dense) / median(sparse); with ``hardware.cuda_graphs``
both are replayed from CUDA graphs, as the table was measured and as ``engine.deploy`` runs it.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from engine.backends.verify import VerifyError, outcome
from engine.core.environment import fingerprint
from engine.core.grid import DENSE
from engine.core.measure import time_interleaved
from engine.core.masks import satisfies_nm
from engine.runtime.execution import forward
from engine.runtime.semi24 import TWO_FOUR, Semi24Kernels
from engine.timing.cuda24 import (
    LEVELS, TWO_FOUR_LEVEL, Kernels, check_device, device_timer, graphed_variants, inputs_on, on_device, profile_cuda24,
    torch_dtype,
)
from engine.timing.table import TimingTable

# verify: allowed max |sparse - dense-with-zeros| as a fraction of max |dense-with-zeros|
TOLERANCE = {torch.float16: 2e-2, torch.bfloat16: 6e-2, torch.float32: 1e-4}


def build_semi24_model(model: nn.Module, levels: dict[str, str], kernels: Kernels, recorded: dict) -> nn.Module:
    """A copy of ``model`` (already on the device, in the dtype) with a 2:4 kernel in every layer at "2:4".

    ``recorded``: the timing table's ``environment["kernels"]`` (backend and alg_id per layer)."""
    sparse = copy.deepcopy(model)
    for name, level in levels.items():
        if level == DENSE:
            continue
        if level != TWO_FOUR_LEVEL:
            raise VerifyError(f"layer {name}: level {level!r} has no kernel on hardware.backend 'cuda-2:4' (dense or 2:4 only)")
        module = sparse.get_submodule(name)
        reason = kernels.ineligibility(module)
        if reason is not None:
            raise VerifyError(f"layer {name} is at 2:4 but cannot run 2:4 here: {reason}")
        if not satisfies_nm(module.weight, TWO_FOUR):
            raise VerifyError(f"layer {name} is at 2:4 but its weight is not 2:4 (more than 2 non-zeros in a group of 4)")
        parent_name, _, child = name.rpartition(".")
        parent = sparse.get_submodule(parent_name) if parent_name else sparse
        setattr(parent, child, kernels.build(module, recorded.get(name)))
    return sparse.eval()


def verify_cuda24(
    loaded, final: nn.Module, levels: dict[str, str], example_inputs: Any, table, hardware, predicted: float, *,
    device: str | torch.device = "cuda", kernels: Kernels | None = None,
) -> dict:
    """Check the 2:4 model's output, then measure dense vs 2:4 end to end; the ``verify`` event fields
    (the same keys as ``engine.verify.verify``)."""
    device = torch.device(device)
    check_device(device)
    dtype = torch_dtype(hardware.dtype)
    kernels = kernels or Semi24Kernels(dtype)
    inputs = inputs_on(example_inputs, device, dtype)
    with_zeros = on_device(final, device, dtype)
    sparse_model = build_semi24_model(with_zeros, levels, kernels, (table.environment or {}).get("kernels", {}))
    expected = forward(loaded, with_zeros, inputs).float()
    got = forward(loaded, sparse_model, inputs).float()
    del with_zeros
    error = float((got - expected).abs().max())
    scale = float(expected.abs().max()) or 1.0
    tolerance = TOLERANCE[dtype]
    if not error <= tolerance * scale:
        raise VerifyError(
            f"2:4 kernels disagree with the pruned model computed densely in {hardware.dtype}: max abs difference "
            f"{error:.3g} > {tolerance:g} x max |output| ({scale:.3g})"
        )
    dense_model = on_device(loaded.model, device, dtype)
    variants = {"dense": lambda: forward(loaded, dense_model, inputs), "sparse": lambda: forward(loaded, sparse_model, inputs)}
    runtime, note = "eager", ""
    if getattr(hardware, "cuda_graphs", False) and device.type == "cuda":  # as the table was measured, and as deployed
        variants, note = graphed_variants(variants)
        runtime = "eager" if note else "cuda-graph"
    stats = time_interleaved(
        variants, warmup=hardware.warmup, repeats=hardware.repeats, max_spread=hardware.max_spread, timer=device_timer(device, 1),
    )
    fields = outcome(predicted, stats["dense"], stats["sparse"], table.dense_baseline or f"torch-{hardware.dtype}", error)
    fields["runtime"] = runtime
    if note:
        fields["note"] = f"end to end {note}"
    return fields


class Cuda24Backend:
    """``hardware.backend = "cuda-2:4"``: every layer dense or 2:4 on NVIDIA sparse tensor cores."""

    name = "cuda-2:4"

    def fingerprint(self, environment: dict, hardware, shapes: dict, levels: list[str]) -> str:
        """What a cached 2:4 table must match: machine and GPU, libraries, threads, batch, dtype,
        shapes, levels, the backend, and CUDA graphs where they were on."""
        extra: dict = {"backend": self.name}
        if getattr(hardware, "cuda_graphs", False):
            extra["cuda_graphs"] = True
        return fingerprint(
            environment, threads=hardware.threads, batch=hardware.batch_size, dtype=hardware.dtype, shapes=shapes,
            levels=levels, **extra,
        )

    def profile(self, loaded, example_inputs: Any, layers: list, levels: list[str], hardware, log, seed: int,
                **options) -> TimingTable:
        """``options``: ``device`` and ``kernels`` of ``profile_cuda24`` (the tests run it on the CPU)."""
        table = profile_cuda24(loaded, example_inputs, layers, hardware, log, **options)
        shapes = {layer.name: list(layer.input_shape) for layer in layers}
        table.environment["fingerprint"] = self.fingerprint(table.environment, hardware, shapes, LEVELS)
        return table

    def build(self, loaded, final: nn.Module, levels: dict[str, str], table: TimingTable, hardware,
              example_inputs: Any = None) -> nn.Module:
        device, dtype = torch.device("cuda"), torch_dtype(hardware.dtype)
        check_device(device)
        recorded = (table.environment or {}).get("kernels", {})
        return build_semi24_model(on_device(final, device, dtype), levels, Semi24Kernels(dtype), recorded)

    def verify(self, loaded, final: nn.Module, levels: dict[str, str], example_inputs: Any, table: TimingTable,
               hardware, predicted: float) -> dict:
        return verify_cuda24(loaded, final, levels, example_inputs, table, hardware, predicted)

    def runtime(self, hardware) -> str:
        """The 2:4 model (``Semi24Linear`` modules, cuBLAS elsewhere) replayed from a CUDA graph with
        ``hardware.cuda_graphs``, else eager; ``hardware.runtime`` is the CPU's option."""
        return "cuda-graph" if getattr(hardware, "cuda_graphs", False) else "eager"
