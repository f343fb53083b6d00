"""A whole model under ``torch.compile`` (inductor, CPU, frozen weights), sparse layers included.

``compile_model(model, example_inputs, run_fn)`` compiles ``run_fn(model, inputs)`` (e.g.
``engine.model.sources.mean_pooled_embedding``: the encoder and its pooling) as one graph:

* every numba ``SparseLinear`` is first swapped (on a copy, unless ``copy_model=False``) for an
  ``OpSparseLinear``, which calls the ``spdy::csr_linear`` custom operator (``engine.runtime.ops``):
  dynamo sees one opaque node per sparse layer instead of a graph break;
* ``freezing=True`` makes parameters and buffers constants of the graph: inductor folds them,
  pre-packs the dense Linear weights (fp32: MKL's packed GEMM, ``mkl::_mkl_linear``) and fuses attention, GELU, LayerNorm, residual adds
  and copies into generated C++ kernels around the dense GEMMs and the sparse extern calls
  (set through ``torch._inductor.config.patch`` around every call: in torch 2.14
  ``torch.compile(options={"freezing": True})`` is silently ignored);
* ``stack_siblings=True`` (an inductor post-grad pass, ``engine.runtime.ops``) stacks the sparse
  layers that read the same input, a transformer's Q, K and V, into one kernel call;
* ``fullgraph=True`` turns any graph break into an error rather than a silently slower model.

Shapes.  The runtime is promised for one fixed input shape (the profile's timing batch, e.g. 32
sentences x 64 tokens), so it is compiled with ``dynamic=False``: the kernels are specialised for
the example shape.  Another shape is handled by ``shapes``:

* ``"pad"`` (the default): a batch of dict inputs whose 2-D tensors (input_ids, attention_mask,
  token_type_ids) are at most the compiled (batch, tokens) is padded up to it (tokens with zeros,
  i.e. [PAD] and a zero attention mask; missing rows with copies of the first row) and the output is
  cut back to the real rows.  Correct for outputs that are per sample and ignore masked tokens (a
  masked mean-pooled embedding, logits from [CLS]); costs the full batch's time.  A larger input is
  run in pieces of the compiled batch; more tokens than compiled raise ``ValueError``.
* ``"recompile"``: hand the new shape to dynamo, which recompiles for it (5-25 s each for MiniLM
  on 2 cores); past ``torch._dynamo.config.recompile_limit`` (8) shapes a ``fullgraph`` compile
  raises ``FailOnRecompileLimitHit`` (without ``fullgraph`` it would run eager).
* ``"error"``: raise ``ValueError`` on any other shape.

Cache.  With ``cache_dir`` (e.g. the run directory), ``TORCHINDUCTOR_CACHE_DIR`` points there before
the first compile, so inductor's caches (the compiled C++ kernels, the FX graph and AOTAutograd
caches where the graph can be cached) land in it and a second process compiling the same model
reuses them.  A graph with dense Linears pre-packed for oneDNN is not FX-cacheable (mkldnn tensors
do not pickle: ``fxgraph_cache_bypass``), so only its C++ kernels come from the cache (MiniLM dense,
2 cores: 22 s cold, 7.5 s warm); a graph whose Linears are all sparse is (17.5 s cold, 4.8 s warm,
``fxgraph_cache_hit``).  A cached graph keeps the Q/K/V weights the sibling pass stacked as its own
constants, so the pass's uuid carries ``weights_digest`` of the model: other weights of the same
shapes (a fine-tuning of the run's allocation) compile anew instead of running the first model's
stacked layers.  The variable is process-wide and read when inductor first needs it: give every
``compile_model`` call of a process the same directory.  ``CompiledModel.compile_seconds`` is the
time of the first call (tracing + compilation, or the cache loads).

Threads: call ``engine.runtime.execution.set_threads`` before compiling (numba's pool first, then
torch's): inductor's kernels run on torch's OpenMP threads, the sparse layers on numba's.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from engine.core.digest import digest
from engine.runtime.ops import sibling_fusion_pass, use_custom_ops

SHAPE_POLICIES = ("pad", "recompile", "error")
RunFn = Callable[[nn.Module, Any], torch.Tensor]


def _call_model(model: nn.Module, inputs: Any) -> torch.Tensor:
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


class _Runner(nn.Module):
    """``run_fn(model, inputs)`` as a module, so dynamo lifts (and inductor freezes) the model's weights."""

    def __init__(self, model: nn.Module, run_fn: RunFn):
        super().__init__()
        self.model = model
        self.run_fn = run_fn

    def forward(self, inputs: Any) -> torch.Tensor:
        return self.run_fn(self.model, inputs)


def _shapes(inputs: Any) -> Any:
    if isinstance(inputs, torch.Tensor):
        return tuple(inputs.shape)
    if isinstance(inputs, dict):
        return {key: _shapes(value) for key, value in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        return tuple(_shapes(value) for value in inputs)
    return None


def set_cache_dir(cache_dir: str | os.PathLike) -> str:
    """Point inductor's caches at ``cache_dir`` (created if needed) for this process; returns it."""
    path = os.path.abspath(os.fspath(cache_dir))
    os.makedirs(path, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    return path


def compile_counters() -> dict[str, int]:
    """Inductor's counters of this process: cache hits/misses/bypasses (FX graph and AOTAutograd
    caches) and the passes that fired (``mkldnn_linear_weight_pack_matcher_count``: dense Linears
    pre-packed by freezing; ``spdy_stacked_groups``: groups of sparse layers stacked)."""
    from torch._dynamo.utils import counters

    return {
        key: int(value)
        for group in ("inductor", "aot_autograd")
        for key, value in counters[group].items()
        if "cache" in key or "weight_pack" in key or key.startswith("spdy_")
    }


@dataclass
class CompiledModel:
    """A compiled ``run_fn(model, inputs)`` for inputs shaped like ``example_shapes``; call it with inputs."""

    model: nn.Module  # the eager model the graph was traced from (sparse layers on the custom op)
    compiled: Callable[[Any], torch.Tensor]
    example_shapes: Any
    batch_size: int | None
    tokens: int | None
    shapes: str
    compile_seconds: float
    cache_dir: str | None
    cache: dict[str, int] = field(default_factory=dict)  # compile_counters() of the first compile

    def __call__(self, inputs: Any) -> torch.Tensor:
        with torch.no_grad():
            if self.shapes == "recompile" or _shapes(inputs) == self.example_shapes:
                return self.compiled(inputs)
            if self.shapes == "error" or not isinstance(inputs, dict) or self.batch_size is None:
                raise ValueError(f"compiled for inputs of shape {self.example_shapes}, got {_shapes(inputs)}")
            return self._padded(inputs)

    def _padded(self, inputs: dict) -> torch.Tensor:
        rows, tokens = _batch_tokens(inputs)
        if rows is None or tokens > self.tokens:
            raise ValueError(
                f"compiled for {self.batch_size} x {self.tokens} tokens; cannot pad inputs of shape {_shapes(inputs)}"
            )
        pieces = []
        for start in range(0, rows, self.batch_size):
            piece = {key: value[start : start + self.batch_size] for key, value in inputs.items()}
            count = next(iter(piece.values())).shape[0]
            padded = {key: _pad(value, self.batch_size, self.tokens) for key, value in piece.items()}
            pieces.append(self.compiled(padded)[:count])
        return torch.cat(pieces) if len(pieces) > 1 else pieces[0]


def _batch_tokens(inputs: dict) -> tuple[int | None, int]:
    shapes = {tuple(value.shape) for value in inputs.values() if isinstance(value, torch.Tensor)}
    if len(shapes) != 1 or len(inputs) != sum(isinstance(v, torch.Tensor) for v in inputs.values()):
        return None, 0
    shape = shapes.pop()
    return (shape[0], shape[1]) if len(shape) == 2 else (None, 0)


def _pad(value: torch.Tensor, rows: int, tokens: int) -> torch.Tensor:
    """(r, t) -> (rows, tokens): zeros after the last token, copies of row 0 below the last row."""
    value = torch.nn.functional.pad(value, (0, tokens - value.shape[1]))
    if value.shape[0] < rows:
        value = torch.cat([value, value[:1].expand(rows - value.shape[0], -1)])
    return value


def _patched(compiled: Callable[[Any], torch.Tensor], settings: dict) -> Callable[[Any], torch.Tensor]:
    """``compiled`` run with inductor's config patched by ``settings`` around every call.

    In torch 2.14 ``torch.compile(options={"freezing": True})`` is silently ignored (measured: the
    graph keeps its weights as inputs and the dense Linears stay on MKL ``addmm``), while the same
    setting through ``torch._inductor.config.patch`` takes effect.  Patching around each call (~20 us,
    against 200-300 ms for a MiniLM batch) also covers recompilations, which happen inside a later call."""
    import torch._inductor.config as inductor_config

    def run(inputs: Any) -> torch.Tensor:
        with inductor_config.patch(settings):
            return compiled(inputs)

    return run


def weights_digest(model: nn.Module) -> str:
    """``engine.core.digest`` of the model's state (every tensor's name, dtype, shape and bytes), hex:
    what a cached graph's constants were made from."""
    return digest(model.state_dict())


def compile_model(
    model: nn.Module,
    example_inputs: Any,
    run_fn: RunFn | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    freezing: bool = True,
    fullgraph: bool = True,
    shapes: str = "pad",
    options: dict | None = None,
    stack_siblings: bool = True,
    copy_model: bool = True,
) -> CompiledModel:
    """Compile ``run_fn(model, inputs)`` (default: ``model(**inputs)`` for a dict, else ``model(inputs)``)
    with inductor for inputs shaped like ``example_inputs``; compiles now, on ``example_inputs``.

    Sparse layers (numba ``SparseLinear``) run on the ``spdy::csr_linear`` custom operator; the model
    must be in eval mode, float32, on the CPU.  ``stack_siblings`` (with ``freezing``) stacks sparse
    layers that share their input, such as Q, K and V, into one kernel call
    (``engine.runtime.ops.fuse_sibling_csr_linears``).  ``options`` are further inductor options
    (e.g. ``{"max_autotune": True}``)."""
    if shapes not in SHAPE_POLICIES:
        raise ValueError(f"shapes must be one of {SHAPE_POLICIES}, got {shapes!r}")
    if cache_dir is not None:
        cache_dir = set_cache_dir(cache_dir)
    if copy_model:
        model = copy.deepcopy(model)
    model = use_custom_ops(model.eval())
    runner = _Runner(model, run_fn or _call_model).eval()
    settings = {**(options or {}), "freezing": freezing}
    if stack_siblings and freezing:
        settings["post_grad_custom_post_pass"] = sibling_fusion_pass(weights_digest(model))
    compiled = _patched(torch.compile(runner, fullgraph=fullgraph, dynamic=False, options=settings), settings)
    before = compile_counters()
    started = time.perf_counter()
    with torch.no_grad():
        compiled(example_inputs)
    seconds = time.perf_counter() - started
    counted = {key: value - before.get(key, 0) for key, value in compile_counters().items()}
    batch, tokens = _batch_tokens(example_inputs) if isinstance(example_inputs, dict) else (None, 0)
    return CompiledModel(
        model, compiled, _shapes(example_inputs), batch, tokens if batch is not None else None, shapes, seconds,
        cache_dir, {key: value for key, value in counted.items() if value},
    )
