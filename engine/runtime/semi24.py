"""2:4 execution on NVIDIA sparse tensor cores: a drop-in module for a pruned ``nn.Linear``.

The hand-off from the accuracy side is a dense weight W (out, in) with exact zeros in a 2:4
pattern (at most 2 non-zeros in every 4 consecutive inputs, ``engine.masks.nm_mask``).
``Semi24Linear`` keeps W compressed (its non-zeros plus 2-bit position metadata, half the
multiply-adds) and computes the same function as the dense layer,

    y = x W^T + b,        x: (..., in) -> (..., out),

through ``F.linear`` on a ``torch.sparse.SparseSemiStructuredTensor``, which dispatches to one of
two libraries (compute capability >= 8.0, float16 or bfloat16):

* ``cusparselt`` (the default): weight dimensions multiples of 16.  Its ``alg_id`` changes speed
  a lot; ``search_alg_id`` asks ``torch._cslt_sparse_mm_search`` for the best one on the layer's
  real input (the product F.linear runs: compressed W times x^T, result transposed);
* ``cutlass`` (``SparseSemiStructuredTensor._FORCE_CUTLASS = True``): multiples of 32 x 64.

y comes out in the dense layer's layout, (tokens, out) row-major: cuSPARSELt is asked to write
it transposed (``fuse_transpose_cusparselt``), and CUTLASS's column-major result is copied.  The
libraries' own column-major result let every MiniLM layer time faster alone on an H200 while the
whole model ran 3.5x slower, since the attention and views after it met a transposed layout
(docs/gpu.md).

Token rows are padded inside torch to the kernels' minimum (8).  Not every library runs on every
GPU (torch's CUTLASS 2:4 kernels were built for compute capability 8.x; some cuSPARSELt versions
reject an architecture), so ``library_failure`` tries a tiny product once per library and dtype,
and only the libraries that pass are used.  ``ineligibility`` says why a layer cannot run 2:4 (a
Conv2d, float32, its shape).  ``Semi24Kernels`` is what the profiler and
``verify_cuda24`` use: a layer's candidate kernels, and the module for a recorded choice.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from engine.core.grid import NM
from engine.core.masks import nm_mask, satisfies_nm

TWO_FOUR = NM(2, 4)
LIBRARIES = ("cusparselt", "cutlass")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# (library, dtype) -> the weight's (rows, cols) must be multiples of these (torch's semi-structured
# classes check the same numbers; tests compare them)
SHAPE_MULTIPLES = {
    ("cusparselt", torch.float16): (16, 16),
    ("cusparselt", torch.bfloat16): (16, 16),
    ("cutlass", torch.float16): (32, 64),
    ("cutlass", torch.bfloat16): (32, 64),
}
MIN_CAPABILITY = (8, 0)


class Semi24Error(RuntimeError):
    """The 2:4 kernels cannot run here, or not on this layer; the message says why."""


def unavailable_reason() -> str | None:
    """Why no 2:4 kernel can run on this machine (no CUDA device, compute capability < 8.0), or None."""
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < MIN_CAPABILITY:
        return f"{torch.cuda.get_device_name()} has compute capability {major}.{minor}; 2:4 sparse tensor cores need >= 8.0"
    return None


def error_line(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


def cusparselt_available() -> bool:
    try:
        return bool(torch.backends.cusparselt.is_available())
    except AttributeError:
        return False


@functools.lru_cache(maxsize=None)
def library_failure(library: str, dtype: torch.dtype) -> str | None:
    """Why ``library`` does not work on this GPU in ``dtype``, or None: a 64 x 64 2:4 product is
    computed once and compared with the dense one."""
    if library == "cusparselt" and not cusparselt_available():
        return "this torch build has no cuSPARSELt"
    reason = unavailable_reason()
    if reason is not None:
        return reason
    generator = torch.Generator().manual_seed(0)
    dense = torch.randn(64, 64, generator=generator)
    weight = (dense * nm_mask(dense, TWO_FOUR)).to(device="cuda", dtype=dtype)
    x = torch.randn(8, 64, generator=generator).to(device="cuda", dtype=dtype)
    try:
        got = Semi24Linear(weight, None, library)(x)
        torch.cuda.synchronize()
    except Exception as exc:  # a probe: whatever the library raises means it does not work here
        return f"{library} fails here: {error_line(exc)}"
    expected = F.linear(x, weight)
    if not torch.allclose(got.float(), expected.float(), rtol=5e-2, atol=5e-2):
        return f"{library} computes a wrong 2:4 product here"
    return None


def libraries_here(dtype: torch.dtype) -> tuple[str, ...]:
    """The libraries that work on this GPU in ``dtype`` (``library_failure`` is None)."""
    return tuple(library for library in LIBRARIES if library_failure(library, dtype) is None)


def shape_ineligibility(weight_shape: tuple[int, ...], dtype: torch.dtype, library: str) -> str | None:
    """Why ``library`` cannot hold a weight of this shape and dtype, or None."""
    if library not in LIBRARIES:
        raise ValueError(f"unknown 2:4 library {library!r}; choose one of {LIBRARIES}")
    if (library, dtype) not in SHAPE_MULTIPLES:
        return f"{library} runs 2:4 in float16 or bfloat16, not {str(dtype).removeprefix('torch.')}"
    rows, cols = weight_shape
    row_multiple, col_multiple = SHAPE_MULTIPLES[library, dtype]
    if rows % row_multiple or cols % col_multiple:
        return f"{library} needs (out, in) multiples of ({row_multiple}, {col_multiple}), got ({rows}, {cols})"
    return None


def ineligibility(module: nn.Module, dtype: torch.dtype, libraries: tuple[str, ...] = LIBRARIES) -> str | None:
    """Why ``module`` cannot run 2:4 on any of ``libraries`` in ``dtype``, or None if one can."""
    if isinstance(module, nn.Conv2d):
        return "Conv2d: torch's 2:4 kernels cover Linear layers only"
    if not isinstance(module, nn.Linear):
        return f"{type(module).__name__}: no 2:4 kernel"
    if not libraries:
        return "no 2:4 library works here"
    reasons = [shape_ineligibility(tuple(module.weight.shape), dtype, library) for library in libraries]
    return None if any(reason is None for reason in reasons) else "; ".join(reasons)


@contextlib.contextmanager
def _library(library: str) -> Iterator[None]:
    """Make ``to_sparse_semi_structured`` build for ``library`` (it reads a class-wide flag)."""
    from torch.sparse import SparseSemiStructuredTensor

    before = SparseSemiStructuredTensor._FORCE_CUTLASS
    SparseSemiStructuredTensor._FORCE_CUTLASS = library == "cutlass"
    try:
        yield
    finally:
        SparseSemiStructuredTensor._FORCE_CUTLASS = before


class Semi24Linear(nn.Module):
    """``y = x W^T + b`` with W (already 2:4) compressed for the sparse tensor cores; inference only."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, library: str = "cusparselt", alg_id: int = 0):
        super().__init__()
        from torch.sparse import to_sparse_semi_structured

        weight = weight.detach()
        if weight.device.type != "cuda":
            raise Semi24Error(f"2:4 kernels run on CUDA tensors only; the weight is on {weight.device}")
        reason = shape_ineligibility(tuple(weight.shape), weight.dtype, library)
        if reason is not None:
            raise Semi24Error(reason)
        if not satisfies_nm(weight, TWO_FOUR):
            raise Semi24Error(f"weight of shape {tuple(weight.shape)} is not 2:4 (more than 2 non-zeros in a group of 4 inputs)")
        self.out_features, self.in_features = weight.shape
        self.library = library
        self.alg_id = alg_id if library == "cusparselt" else 0
        with _library(library):
            compressed = to_sparse_semi_structured(weight.contiguous())
        if library == "cusparselt":
            compressed.alg_id_cusparselt = self.alg_id  # to_sparse_semi_structured takes no alg_id; the product reads this
            # cuSPARSELt writes y already transposed, so y comes out (tokens, out) row-major like the dense layer's
            compressed.fuse_transpose_cusparselt = True
        # a plain attribute, not a Parameter: Module.to() (sentence-transformers' encode calls it) cannot move or
        # cast the compressed tensor (torch 2.11: NotImplementedError for to.dtype_layout), and it is already in place
        self.weight = compressed
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(weight.dtype).contiguous(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, library: str = "cusparselt", alg_id: int = 0) -> Semi24Linear:
        return cls(linear.weight, linear.bias, library, alg_id)

    @property
    def info(self) -> dict:
        """What a timing table records to rebuild this exact kernel."""
        return {"backend": self.library, "alg_id": self.alg_id}

    @property
    def label(self) -> str:
        return f"cusparselt alg {self.alg_id}" if self.library == "cusparselt" else "cutlass"

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = F.linear(x.reshape(-1, self.in_features), self.weight, self.bias)
        if not y.is_contiguous():  # the dense layer's layout, or attention and views downstream slow down (docs/gpu.md)
            y = y.contiguous()
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, library={self.label}"


def search_alg_id(module: Semi24Linear, x: torch.Tensor) -> int | None:
    """cuSPARSELt's own pick of ``alg_id`` for this layer on input ``x`` (None: not cuSPARSELt, or no search)."""
    search = getattr(torch, "_cslt_sparse_mm_search", None)
    if module.library != "cusparselt" or search is None:
        return None
    rows = x.reshape(-1, module.in_features)
    padding = (-rows.shape[0]) % 8  # as the dispatch pads token rows
    if padding:
        rows = F.pad(rows, (0, 0, 0, padding))
    # the product F.linear runs: compressed W times x^T, transposed as the tensor's own products are
    found = search(module.weight.packed, rows.t(), bias=module.bias, transpose_result=module.weight.fuse_transpose_cusparselt)
    return int(found[0] if isinstance(found, (tuple, list)) else found)  # some torch versions return a tuple


class Semi24Kernels:
    """The 2:4 kernels for one dtype: which layers they can run, each layer's candidates, rebuilding a choice."""

    def __init__(self, dtype: torch.dtype, libraries: tuple[str, ...] | None = None):
        self.dtype = dtype
        self.libraries = libraries_here(dtype) if libraries is None else libraries

    def library_report(self) -> dict[str, str]:
        """Every library: "used", or why not (recorded with a timing table)."""
        return {
            library: "used" if library in self.libraries else (library_failure(library, self.dtype) or "not requested")
            for library in LIBRARIES
        }

    def ineligibility(self, module: nn.Module) -> str | None:
        return ineligibility(module, self.dtype, self.libraries)

    def candidates(self, module: nn.Linear, x: torch.Tensor) -> tuple[dict[str, Semi24Linear], dict]:
        """Every kernel worth timing for the (2:4-pruned) ``module`` on input ``x``, by label, and
        notes on the search: cuSPARSELt at alg_id 0 and at its searched alg_id, and CUTLASS."""
        shape = tuple(module.weight.shape)
        found: dict[str, Semi24Linear] = {}
        notes: dict = {}

        def add(library: str, alg_id: int = 0) -> Semi24Linear | None:
            label = f"cusparselt alg {alg_id}" if library == "cusparselt" else "cutlass"
            try:
                kernel = Semi24Linear.from_linear(module, library, alg_id)
                kernel(x)  # a kernel that cannot run this input is no candidate
            except Exception as exc:  # recorded with the table; the other candidates still count
                notes.setdefault("failed", {})[label] = error_line(exc)
                return None
            found[label] = kernel
            return kernel

        if "cusparselt" in self.libraries and shape_ineligibility(shape, self.dtype, "cusparselt") is None:
            default = add("cusparselt", 0)
            if default is not None:
                try:
                    searched = search_alg_id(default, x)
                except Exception as exc:  # the search is a private op: record its failure, keep alg 0
                    searched, notes["search_error"] = None, error_line(exc)
                notes["searched_alg_id"] = searched
                if searched not in (None, 0):
                    add("cusparselt", searched)
        if "cutlass" in self.libraries and shape_ineligibility(shape, self.dtype, "cutlass") is None:
            add("cutlass")
        return found, notes

    def build(self, module: nn.Linear, info: dict | None = None) -> Semi24Linear:
        """The kernel a timing table recorded for this layer (``info``: library, alg_id), else the
        first library that can hold it at alg_id 0."""
        if info and info.get("backend") in self.libraries:
            return Semi24Linear.from_linear(module, info["backend"], int(info.get("alg_id", 0)))
        shape = tuple(module.weight.shape)
        for library in self.libraries:
            if shape_ineligibility(shape, self.dtype, library) is None:
                return Semi24Linear.from_linear(module, library)
        raise Semi24Error(ineligibility(module, self.dtype, self.libraries) or "no 2:4 library")
