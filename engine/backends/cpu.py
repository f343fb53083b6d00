"""The CPU backend (``hardware.backend = "cpu"``): unstructured-sparse levels on our Numba kernels.

Profile: ``engine.timing.cpu.profile_cpu``.  The pruned model runs on ``hardware.runtime``:
``eager`` (the final model with every layer at a sparse level replaced by our kernel, the other
layers on the faster eager dense path) or ``compiled`` (the same model compiled whole,
``engine.runtime.compiled``: the kernels as custom ops, everything else fused by inductor).
Verify, the end-to-end proof of the speedup, first checks that model's output against the final
model computed densely with exact zeros (fp32 rounding only; int8 layers exactly, layer by layer,
and the whole model within ``INT8_END_TO_END_TOLERANCE``), then times it against the
reference (the fastest dense path the profiler measured: torch, oneDNN, compiled torch or ONNX
Runtime), interleaved, on the profile's batch and threads:

    measured_speedup = median(reference seconds) / median(pruned model seconds),

the reference being the fastest, in these same rounds, of the table's reference and the dense paths
the profiler found within ``REFERENCE_MARGIN`` of it (``reference_candidates``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from engine.backends.verify import VerifyError, outcome
from engine.core.environment import fingerprint
from engine.core.errors import RunError
from engine.core.grid import DENSE, is_int8
from engine.core.measure import time_interleaved
from engine.runtime.csr import KERNEL_VERSION
from engine.runtime.execution import capture_inputs, dense_paths, forward, set_threads
from engine.runtime.int8 import fake_quantized_linear, int8_codes
from engine.runtime.modules import int8_module, replace_submodule, sparse_module
from engine.runtime.paths import EAGER_PATHS, REFERENCE_PATHS, dense_path
from engine.timing.cpu import profile_cpu
from engine.timing.table import TimingTable


def layer_path(table: TimingTable) -> str:
    """The eager dense path of the layers the run keeps dense (recorded by the profiler)."""
    recorded = (table.environment or {}).get("dense_layer_path")
    return recorded if recorded in EAGER_PATHS else (table.dense_baseline if table.dense_baseline in EAGER_PATHS else "torch")


def build_sparse_model(final: nn.Module, levels: dict[str, str], dense_path: str) -> nn.Module:
    """A copy of ``final`` with sparse kernels in pruned layers, int8 kernels in int8 layers (their codes
    and scales from the marked layer: ``engine.runtime.int8.int8_codes``) and the dense path elsewhere."""
    dense_names = [name for name, level in levels.items() if level == DENSE]
    model = dense_paths(copy.deepcopy(final), dense_names, only=dense_path)[dense_path]
    for name, level in levels.items():
        layer = final.get_submodule(name)
        if is_int8(level):
            replace_submodule(model, name, int8_module(*int8_codes(layer), layer.bias, level))
        elif level != DENSE:
            replace_submodule(model, name, sparse_module(layer))
    return model.eval()


def build_runtime(loaded, final: nn.Module, levels: dict[str, str], table: TimingTable, hardware, example_inputs: Any):
    """The pruned model on ``hardware.runtime``: a callable ``inputs -> loaded.run_model output``, and the
    module it runs (eager: our kernels in the pruned layers; compiled: the whole model compiled)."""
    runtime = getattr(hardware, "runtime", "eager")
    if runtime == "eager":
        model = build_sparse_model(final, levels, layer_path(table))
        return (lambda inputs: forward(loaded, model, inputs)), model
    convs = [name for name, level in levels.items() if level != DENSE and isinstance(final.get_submodule(name), nn.Conv2d)]
    if convs:
        raise RunError(
            f"hardware.runtime 'compiled' runs sparse Linear layers only, and {convs[0]} is a pruned Conv2d; "
            "set hardware.runtime = 'eager'"
        )
    from engine.runtime.compiled import compile_model

    model = build_sparse_model(final, levels, "torch")  # inductor pre-packs the dense Linears itself
    compiled = compile_model(model, example_inputs, loaded.run_model)
    return compiled, compiled.model


# An int8 model is not a continuous function of its input: a float32 rounding difference upstream
# can move an activation across a rounding boundary, one code, and that difference grows through
# the later layers (MiniLM with 26 int8 layers: 1e-6 relative noise on one layer's input moved the
# embeddings by 1.1%).  So its kernels are checked layer by layer, exactly, on the inputs they see
# (``check_int8_layers``), and the whole model only against this bound.
INT8_END_TO_END_TOLERANCE = 0.05


def check_int8_layers(loaded, final: nn.Module, levels: dict[str, str], example_inputs: Any) -> None:
    """Every int8 layer of the eager runtime computes ``fake_quantized_linear`` of its codes on the
    input it receives in the model (float32 rounding only), or a VerifyError naming it."""
    model = build_sparse_model(final, levels, "torch")
    names = [name for name, level in levels.items() if is_int8(level)]
    inputs = capture_inputs(lambda: forward(loaded, model, example_inputs), model, names)
    for name in names:
        layer = final.get_submodule(name)
        with torch.no_grad():
            got = model.get_submodule(name)(inputs[name])
            expected = fake_quantized_linear(inputs[name], *int8_codes(layer), layer.bias)
        if not torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * (float(expected.abs().max()) or 1.0)):
            raise VerifyError(f"the int8 kernel of {name} ({levels[name]}) disagrees with its reference: "
                              f"max abs difference {float((got - expected).abs().max()):.3g}")


def verify(loaded, final: nn.Module, levels: dict[str, str], example_inputs: Any, table, hardware, predicted: float) -> dict:
    """Check outputs, then measure the reference dense path against the pruned model on its runtime end
    to end, interleaved; returns the ``verify`` event fields."""
    set_threads(hardware.threads)
    candidates = reference_candidates(table)
    references = {name: dense_path(name, loaded.model, loaded.layer_names, example_inputs, loaded.run_model, hardware.threads)
                  for name in candidates}
    sparse, _ = build_runtime(loaded, final, levels, table, hardware, example_inputs)
    expected = forward(loaded, final, example_inputs)
    got = sparse(example_inputs)
    error = float((got - expected).abs().max())
    scale = float(expected.abs().max()) or 1.0
    if any(is_int8(level) for level in levels.values()):
        check_int8_layers(loaded, final, levels, example_inputs)
        relative = float((got - expected).norm() / (expected.norm() or 1.0))
        if relative > INT8_END_TO_END_TOLERANCE:
            raise VerifyError(f"the int8 model disagrees with the pruned model by {relative:.3g} (relative), "
                              f"more than int8 rounding explains ({INT8_END_TO_END_TOLERANCE:g})")
    elif not torch.allclose(got, expected, rtol=1e-3, atol=1e-4 * scale):
        raise VerifyError(f"sparse kernels disagree with the pruned model: max abs difference {error:.3g}")
    runners = {f"dense {name}": (lambda path=path: path(example_inputs)) for name, path in references.items()}
    stats = time_interleaved(
        {**runners, "sparse": lambda: sparse(example_inputs)},
        warmup=max(1, hardware.warmup),
        repeats=hardware.repeats,
        max_spread=hardware.max_spread,
    )
    reference = min(references, key=lambda name: stats[f"dense {name}"].median)
    medians = {name: stats[f"dense {name}"].median for name in references}
    fields = outcome(predicted, stats[f"dense {reference}"], stats["sparse"], reference, error, medians)
    fields["runtime"] = getattr(hardware, "runtime", "eager")
    return fields


REFERENCE_MARGIN = 0.15  # dense paths the profiler found within this of the fastest are raced again in verify


def reference_candidates(table: TimingTable) -> list[str]:
    """The dense paths verify times beside the pruned model: the table's reference and every path the
    profiler measured end to end within ``REFERENCE_MARGIN`` of it.  Which is fastest can change
    between the profiler's minutes and verify's (ONNX Runtime fp32 and compiled torch are within a
    few percent of each other on MiniLM here, and took turns), and the promise is over the fastest."""
    first = table.dense_baseline if table.dense_baseline in REFERENCE_PATHS else layer_path(table)
    measured = {name: stat.get("median") for name, stat in ((table.environment or {}).get("end_to_end") or {}).items()
                if name in REFERENCE_PATHS and isinstance(stat, dict)}
    limit = measured.get(first)
    close = [name for name, median in measured.items()
             if name != first and limit is not None and median is not None and median <= limit * (1 + REFERENCE_MARGIN)]
    return [first, *sorted(close)]


class CpuBackend:
    """``hardware.backend = "cpu"``: the levels of the grid on our unstructured-sparse kernels."""

    name = "cpu"

    def fingerprint(self, environment: dict, hardware, shapes: dict, levels: list[str]) -> str:
        """What a cached CPU table must match: machine, libraries, threads, batch, shapes, levels, our
        kernels' version, and the way layers were timed where it is not the default ("alone")."""
        extra: dict = {"kernel": KERNEL_VERSION}
        if getattr(hardware, "runtime", "eager") != "eager":
            extra["runtime"] = hardware.runtime
        if list(getattr(hardware, "reference_paths", EAGER_PATHS)) != list(EAGER_PATHS):
            extra["reference_paths"] = list(hardware.reference_paths)
        if getattr(hardware, "layer_timing", "alone") != "alone":
            extra["layer_timing"] = hardware.layer_timing
        if getattr(hardware, "cuda_graphs", False):
            extra["cuda_graphs"] = True
        return fingerprint(
            environment, threads=hardware.threads, batch=hardware.batch_size, dtype=hardware.dtype, shapes=shapes,
            levels=levels, **extra,
        )

    def profile(self, loaded, example_inputs: Any, layers: list, levels: list[str], hardware, log, seed: int) -> TimingTable:
        def progress(layer, level, seconds, done, total):
            log.emit("timing", layer=layer, level=level, seconds=seconds, done=done, total=total)

        table = profile_cpu(loaded, example_inputs, layers, levels, hardware, progress, seed=seed)
        shapes = {layer.name: list(layer.input_shape) for layer in layers}
        table.environment["fingerprint"] = self.fingerprint(table.environment, hardware, shapes, levels)
        return table

    def build(self, loaded, final: nn.Module, levels: dict[str, str], table: TimingTable, hardware,
              example_inputs: Any = None) -> nn.Module:
        """The eager executable model (our kernels in the pruned layers; ``engine.deploy`` compiles it
        for the compiled runtime)."""
        set_threads(hardware.threads)
        return build_sparse_model(final, levels, "torch" if getattr(hardware, "runtime", "eager") == "compiled" else layer_path(table))

    def verify(self, loaded, final: nn.Module, levels: dict[str, str], example_inputs: Any, table: TimingTable,
               hardware, predicted: float) -> dict:
        return verify(loaded, final, levels, example_inputs, table, hardware, predicted)

    def runtime(self, hardware) -> str:
        """``hardware.runtime``: the whole model compiled, or eager PyTorch with our kernels."""
        return getattr(hardware, "runtime", "eager")
