"""The dense paths a user could run the model on instead of ours, by name: one builder for all.

A path is a callable ``inputs -> run_fn(model, inputs)`` (the losses' output: a pooled embedding,
logits) on one runtime:

    torch             the model as loaded (PyTorch's default kernels: MKL for Linear)
    onednn            the same with every Linear on oneDNN's pre-packed GEMM
    compiled          the whole model under torch.compile (inductor, frozen weights: engine.runtime.compiled)
    onnxruntime       the model exported to ONNX, run by ONNX Runtime fp32 on the CPU (Hugging Face
                      encoders; no spinning threads, so it can be timed beside torch)
    onnxruntime-int8  the same export, dynamic int8 quantisation (a reference point, never a baseline)

The profiler (``engine.timing.cpu``), verify (``engine.backends.cpu``), ``spdy bench`` and the
benchmarks build paths here.  A run's speedup is promised over the fastest of the first four
measured on the machine (the *reference*).
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from engine.runtime.execution import dense_paths

EAGER_PATHS = ("torch", "onednn")
REFERENCE_PATHS = ("torch", "onednn", "compiled", "onnxruntime")
ONNX_PATHS = ("onnxruntime", "onnxruntime-int8")
RunFn = Callable[[nn.Module, Any], Any]
DensePath = Callable[[Any], Any]


def onnx_exportable(model: nn.Module, example_inputs: Any) -> str | None:
    """Why ``model`` cannot be exported to ONNX Runtime here, or None."""
    from engine.runtime.onnx_runtime import ort_available

    if not ort_available():
        return "onnxruntime is not installed"
    if not isinstance(example_inputs, dict) or "input_ids" not in example_inputs:
        return "ONNX Runtime is offered for Hugging Face encoders (token inputs) only"
    if not hasattr(model, "set_attn_implementation"):
        return "the model is not a Hugging Face encoder"
    return None


def _onnx_path(name: str, model: nn.Module, example_inputs: dict, threads: int, workdir) -> DensePath:
    """``model`` (a Hugging Face encoder) exported with its mean pooling, run by ONNX Runtime (fp32 or int8)."""
    from engine.runtime.onnx_runtime import OrtEncoder, export_onnx, quantize_int8

    folder = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="spdy-onnx-"))
    path = folder / "dense.onnx"
    if not path.exists():
        exportable = copy.deepcopy(model).eval()
        exportable.set_attn_implementation("eager")  # an SDPA export can disagree with torch on padded batches
        if getattr(exportable, "pooler", None) is not None:
            exportable.pooler = None
        export_onnx(exportable, example_inputs, path)
    if name == "onnxruntime-int8":
        path = quantize_int8(path, folder / "dense-int8.onnx")
    encoder = OrtEncoder(path, threads)
    example_feeds = encoder.feeds(example_inputs)  # prepared once: the timed call is the session alone

    def run(inputs: Any):
        return torch.from_numpy(encoder.run_feeds(example_feeds if inputs is example_inputs else encoder.feeds(inputs)))

    return run


def dense_path(
    name: str, model: nn.Module, names: list[str], example_inputs: Any, run_fn: RunFn, threads: int, workdir=None,
) -> DensePath:
    """The dense ``model`` on path ``name`` (module docstring), as ``inputs -> run_fn(model, inputs)``.

    ``names``: the prunable layers (the Linears oneDNN takes over); ``example_inputs``: the shape the
    compiled and ONNX paths are built for; ``workdir``: where compile caches and ONNX files go."""
    if name in EAGER_PATHS:
        eager = dense_paths(copy.deepcopy(model), names, only=name)[name].eval()

        def run(inputs: Any):
            with torch.no_grad():
                return run_fn(eager, inputs)

        return run
    if name == "compiled":
        from engine.runtime.compiled import compile_model

        cache = Path(workdir) / "inductor" if workdir is not None else None
        # the plain model: inductor pre-packs its Linears itself (freezing); oneDNN's opaque tensors do not trace
        return compile_model(model, example_inputs, run_fn, cache_dir=cache)  # compiles a copy
    if name in ONNX_PATHS:
        reason = onnx_exportable(model, example_inputs)
        if reason is not None:
            raise ValueError(f"dense path {name!r} is not available for this model: {reason}")
        return _onnx_path(name, model, example_inputs, threads, workdir)
    raise ValueError(f"unknown dense path {name!r}; choose one of {', '.join(REFERENCE_PATHS + ONNX_PATHS[1:])}")


def reference_paths(
    model: nn.Module, names: list[str], example_inputs: Any, run_fn: RunFn, threads: int,
    wanted=REFERENCE_PATHS, workdir=None,
) -> tuple[dict[str, Callable[[], Any]], dict[str, nn.Module], dict[str, str]]:
    """The ``wanted`` dense paths available here as callables of no arguments on ``example_inputs``
    (the eager ones always: the layers' dense times are taken from the faster of them), the eager
    models by path name, and why a wanted path is missing."""
    eager = dense_paths(model, names)

    def on(m: nn.Module) -> Callable[[], Any]:
        def run():
            with torch.no_grad():
                return run_fn(m, example_inputs)

        return run

    runners: dict[str, Callable[[], Any]] = {name: on(m) for name, m in eager.items()}
    missing: dict[str, str] = {}
    for name in wanted:
        if name in EAGER_PATHS:
            continue
        try:
            path = dense_path(name, model, names, example_inputs, run_fn, threads, workdir)
        except Exception as exc:  # noqa: BLE001 - an export or compile failure leaves the path out, with the reason
            missing[name] = f"{type(exc).__name__}: {exc}"
            continue
        runners[name] = lambda path=path: path(example_inputs)
    return runners, eager, missing
