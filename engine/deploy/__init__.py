"""What a user deploys: a finished run's pruned model, on the runtime the run verified.

    from engine.deploy import load, sentence_transformer

    model = load("runs/minilm-cpu")                  # a drop-in torch.nn.Module
    encoder = sentence_transformer("runs/minilm-cpu")  # sentence_transformers.SentenceTransformer
    embeddings = encoder.encode(["a sentence", "another one"])

``load`` builds the run's final weights (``final.safetensors``) into the backend's executable
model (``engine.backends``: our sparse kernels in the pruned layers, the dense path elsewhere)
and, for ``hardware.runtime = "compiled"``, compiles the whole model (``engine.runtime.compiled``);
a cuda-2:4 run with ``hardware.cuda_graphs`` replays it from a CUDA graph (``engine.runtime.cuda_graph``).
It is called like the original model and returns what the original returns (for a Hugging Face
encoder: an output whose ``last_hidden_state`` and ``[0]`` are the token states); the outputs equal
the dense-with-zeros pruned model's up to float rounding.  The speedup lives in this runtime:
``pruned.safetensors`` in plain PyTorch computes the same outputs at dense speed.

``load(RUN_DIR, weights=RUN_DIR / "finetune" / "pruned.safetensors")`` deploys a fine-tuning of the run
(``spdy finetune``) the same way: its weights, at the allocation its file records, on the run's
measured kernels and runtime.

``allocation_model(RUN_DIR, levels)`` builds any other allocation of the run's database the same
way (``spdy bench`` times uniform int8 with it).

The run directory records the machine its speedup was measured on (``timings.json``); loading
on a machine that differs warns (``DeployWarning``) and says what differs, since the measured
speedup is a fact about that machine.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.core.environment import describe_environment
from engine.core.errors import RunError
from engine.core.grid import is_int8
from engine.export.result import allocation, read_result
from engine.export.weights import read_pruned_weights
from engine.run.context import RunContext

RUNTIMES = ("eager", "compiled", "cuda-graph")
COMPARED = ("cpu", "isa", "torch", "numba", "numpy", "spdy-tui", "gpu")


class DeployWarning(UserWarning):
    """The model is loaded where its speedup was not measured."""


def environment_differences(recorded: dict, here: dict | None = None) -> list[str]:
    """What differs between the environment a table was measured in and this one."""
    here = here if here is not None else describe_environment()
    return [
        f"{key}: measured on {recorded.get(key)!r}, here {here.get(key)!r}"
        for key in COMPARED
        if key in recorded and recorded.get(key) != here.get(key)
    ]


def _context(run_dir: str | Path) -> RunContext:
    run_dir = Path(run_dir)
    if not (run_dir / "profile.toml").is_file() or not (run_dir / "final.safetensors").is_file():
        raise RunError(f"{run_dir}: not a finished run directory (it needs profile.toml and final.safetensors from `spdy run`)")
    return RunContext.from_dir(run_dir)


def runtime_of(ctx: RunContext, result: dict) -> str:
    """The runtime the run's final model was made for (result.json), else the profile's."""
    runtime = result.get("runtime") or ctx.profile.hardware.runtime
    if runtime not in RUNTIMES:
        raise RunError(f"{ctx.run_dir / 'result.json'}: unknown runtime {runtime!r} (known: {', '.join(RUNTIMES)})")
    return runtime


def load(run_dir: str | Path, runtime: str | None = None, weights: str | Path | None = None) -> nn.Module:
    """The run's pruned model on its runtime (or ``runtime``: "eager", "compiled" or "cuda-graph"), in eval mode;
    with ``weights``, that pruned.safetensors (a fine-tuning's, ``spdy finetune``) instead of the run's final model."""
    return _load(_context(run_dir), runtime, weights)


def deployed_weights(ctx: RunContext, result: dict, path: str | Path | None) -> tuple[nn.Module, dict[str, str]]:
    """The model to deploy and its allocation: the run's final model, or the pruned.safetensors at ``path``
    (its allocation from its own metadata, which may be a baseline's), refused where it cannot run as measured."""
    if path is None:
        return ctx.final_model, allocation(result)
    try:
        model, levels = read_pruned_weights(path, ctx.loaded.model)
    except ValueError as exc:
        raise RunError(f"weights {exc}") from None
    unknown = sorted(set(levels) - set(ctx.loaded.layer_names))
    if unknown:
        raise RunError(f"weights {path}: layer {unknown[0]} is not a prunable layer of {ctx.run_dir}'s model; pass the run it came from")
    int8 = sorted(name for name, level in levels.items() if is_int8(level))
    if int8:
        raise RunError(f"weights {path}: layer {int8[0]} is at an int8 level; its codes are the run's (load the run without weights)")
    return model, levels


def _load(ctx: RunContext, runtime: str | None, weights: str | Path | None = None) -> nn.Module:
    result = read_result(ctx.run_dir)
    runtime = runtime or runtime_of(ctx, result)
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    differences = environment_differences(ctx.table.environment)
    if differences:
        warnings.warn(
            f"{ctx.run_dir}: its speedup was measured on another machine or software ({'; '.join(differences)}); "
            "re-measure here with `spdy verify` or `spdy bench`", DeployWarning, stacklevel=3,
        )
    model, levels = deployed_weights(ctx, result, weights)
    executable = ctx.backend.build(ctx.loaded, model, levels, ctx.table, ctx.profile.hardware)
    return on_runtime(ctx, executable, runtime)


def allocation_model(run_dir: str | Path, levels: dict[str, str], runtime: str | None = None) -> nn.Module:
    """Another allocation of the run's database (e.g. every layer at "q8:0.0000": uniform int8), its
    cells stitched as the search scored them and built on the run's runtime like ``load``'s model."""
    ctx = _context(run_dir)
    runtime = runtime or runtime_of(ctx, read_result(ctx.run_dir))
    final = ctx.stitcher.copy({name: levels[name] for name in ctx.loaded.layer_names})
    executable = ctx.backend.build(ctx.loaded, final, levels, ctx.table, ctx.profile.hardware)
    return on_runtime(ctx, executable, runtime)


def on_runtime(ctx: RunContext, executable: nn.Module, runtime: str) -> nn.Module:
    """``executable`` (the backend's model) as ``runtime`` runs it: eager, compiled, or replayed from a CUDA graph."""
    if runtime == "eager":
        return executable.eval()
    if runtime == "cuda-graph":
        return graphed_model(ctx, executable)
    return compiled_model(ctx, executable)


def graphed_model(ctx: RunContext, executable: nn.Module) -> nn.Module:
    """``executable`` (on the GPU) replaying a CUDA graph captured for the run's timing batch; calls
    with other shapes run it eagerly (``engine.runtime.cuda_graph``)."""
    from engine.runtime.cuda_graph import CudaGraphModule
    from engine.timing.cuda24 import inputs_on, torch_dtype

    device = next(executable.parameters()).device
    example = inputs_on(ctx.timing_inputs(), device, torch_dtype(ctx.profile.hardware.dtype))
    return CudaGraphModule(executable.eval(), example).eval()


def compiled_model(ctx: RunContext, executable: nn.Module) -> nn.Module:
    """``executable`` compiled for the run's timing batch, wrapped to be called like the original."""
    from engine.runtime.compiled import compile_model

    example = ctx.timing_inputs()
    if ctx.loaded.tokenizer is not None and isinstance(example, dict):
        compiled = compile_model(executable, example, _last_hidden_state, cache_dir=ctx.run_dir / "compiled")
        return CompiledEncoder(compiled, getattr(executable, "pooler", None)).eval()
    compiled = compile_model(executable, example, cache_dir=ctx.run_dir / "compiled")
    return CompiledModule(compiled).eval()


def _last_hidden_state(model: nn.Module, inputs: dict) -> torch.Tensor:
    return model(**inputs).last_hidden_state


class CompiledModule(nn.Module):
    """A compiled model called like the original: ``module(inputs) -> output``."""

    def __init__(self, compiled):
        super().__init__()
        self.compiled = compiled

    @property
    def compile_seconds(self) -> float:
        return self.compiled.compile_seconds

    def forward(self, inputs: Any) -> torch.Tensor:
        return self.compiled(inputs)


class CompiledEncoder(nn.Module):
    """A compiled Hugging Face encoder called like the original (``input_ids``, ``attention_mask``,
    ``token_type_ids``), returning ``last_hidden_state`` (and ``pooler_output`` when the model has a
    pooler).  Batches other than the compiled shape are padded to it and cut back: padded tokens are
    masked, so the real tokens' states are those of an unpadded run."""

    def __init__(self, compiled, pooler: nn.Module | None = None):
        super().__init__()
        self.compiled = compiled
        self.pooler = pooler

    @property
    def compile_seconds(self) -> float:
        return self.compiled.compile_seconds

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, **_ignored):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        inputs = {"input_ids": input_ids}
        inputs["attention_mask"] = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        inputs["token_type_ids"] = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
        with torch.no_grad():
            hidden = self.compiled(inputs)[:, : input_ids.shape[1]]
            pooled = self.pooler(hidden) if self.pooler is not None else None
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled)


def sentence_transformer(run_dir: str | Path, runtime: str | None = None, weights: str | Path | None = None):
    """A ``SentenceTransformer`` (the run's MiniLM or Hugging Face encoder, with its pooling) whose
    ``encode`` runs the pruned model (or ``weights``, as in ``load``) on the run's runtime."""
    from sentence_transformers import SentenceTransformer

    ctx = _context(run_dir)
    if ctx.loaded.task != "encoder" or ctx.loaded.tokenizer is None:
        raise RunError(f"{ctx.run_dir}: sentence_transformer needs an encoder run (model.source minilm or hf), "
                       f"not {ctx.profile.model.source!r}")
    path = ctx.profile.model.path if ctx.profile.model.source == "hf" else _minilm_path()
    model = _load(ctx, runtime, weights)
    parameter = next(model.parameters(), None)  # on the GPU for cuda-2:4 runs: encode sends the tokens there
    encoder = SentenceTransformer(path, device=str(parameter.device) if parameter is not None else "cpu")
    encoder[0].auto_model = model
    return encoder


def _minilm_path() -> str:
    from engine.model.sources import minilm_path

    return minilm_path()
