"""The dense paths a user could run the model on instead of ours, by name, and our own runtimes.

A path is a callable ``inputs -> outputs`` computing ``run_fn(model, inputs)`` (the losses'
output: a pooled embedding, logits) on one runtime:

    torch        the model as loaded (PyTorch's default kernels: MKL for Linear)
    onednn       the same with every Linear on oneDNN's pre-packed GEMM
    compiled     the whole model under torch.compile (inductor, frozen weights: engine.runtime.compiled)
    onnxruntime  the model exported to ONNX, run by ONNX Runtime fp32 on the CPU (encoders with a
                 ``last_hidden_state``; no spinning threads, so it can be timed beside torch)

The speedup a run promises is against the fastest of them measured here (the *reference*), and
the pruned model runs on ``eager`` (our sparse kernels, the other layers on the faster of torch
and oneDNN) or ``compiled`` (the whole pruned model compiled, the kernels as custom ops).
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from torch import nn

from engine.runtime.execution import dense_paths

EAGER_PATHS = ("torch", "onednn")
REFERENCE_PATHS = ("torch", "onednn", "compiled", "onnxruntime")
RUNTIMES = ("eager", "compiled")
RunFn = Callable[[nn.Module, Any], Any]
Path_ = Callable[[Any], Any]


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


def onnx_path(model: nn.Module, example_inputs: dict, threads: int, workdir: str | os.PathLike | None = None) -> Path_:
    """``model`` (a Hugging Face encoder) exported with its mean pooling and run by ONNX Runtime fp32."""
    from engine.runtime.onnx_runtime import OrtEncoder, export_onnx

    exportable = copy.deepcopy(model).eval()
    exportable.set_attn_implementation("eager")  # an SDPA export can disagree with torch on padded batches
    if getattr(exportable, "pooler", None) is not None:
        exportable.pooler = None
    folder = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="spdy-onnx-"))
    path = folder / "dense.onnx"
    export_onnx(exportable, example_inputs, path)
    encoder = OrtEncoder(path, threads)
    feeds = encoder.feeds(example_inputs)
    import torch

    def run(_inputs: Any):
        return torch.from_numpy(encoder.run_feeds(feeds))

    return run


def compiled_path(model: nn.Module, example_inputs: Any, run_fn: RunFn, cache_dir=None):
    """``run_fn(model, inputs)`` compiled whole (``engine.runtime.compiled.compile_model``)."""
    from engine.runtime.compiled import compile_model

    return compile_model(model, example_inputs, run_fn, cache_dir=cache_dir)


def reference_paths(
    model: nn.Module, names: list[str], example_inputs: Any, run_fn: RunFn, threads: int, *,
    compiled: bool = True, onnx: bool = True, workdir=None,
) -> tuple[dict[str, Path_], dict[str, nn.Module], dict[str, str]]:
    """Every dense path available here, as callables on ``example_inputs``; the eager models (by
    path name, for per-layer timing); and why a path is missing (name -> reason)."""
    eager = dense_paths(model, names)
    runners: dict[str, Path_] = {name: (lambda m=m: run_fn(m, example_inputs)) for name, m in eager.items()}
    missing: dict[str, str] = {}
    if compiled:
        # the plain model: inductor pre-packs its Linears itself (freezing); oneDNN's opaque tensors do not trace
        compiled_model = compiled_path(eager["torch"], example_inputs, run_fn, cache_dir=workdir)
        runners["compiled"] = lambda c=compiled_model: c(example_inputs)
    if onnx:
        reason = onnx_exportable(model, example_inputs)
        if reason is None:
            try:
                run_onnx = onnx_path(model, example_inputs, threads, workdir)
                runners["onnxruntime"] = lambda: run_onnx(example_inputs)
            except Exception as exc:  # noqa: BLE001 - an exporter failure leaves ONNX Runtime out, with the reason
                missing["onnxruntime"] = f"export failed: {type(exc).__name__}: {exc}"
        else:
            missing["onnxruntime"] = reason
    return runners, eager, missing
