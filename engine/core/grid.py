"""Sparsity levels: the choices a layer can take.

Unstructured levels are geometric in *remaining density* (spdy-method.md §1.1):

    density_k = (1 - s_min) * delta**k,   delta = ((1 - s_max) / (1 - s_min)) ** (1 / steps),

for k = 0..steps, so every step removes the same fraction of the weights still left.
With the defaults (0.40, 0.99, 40 steps) plus the dense level this gives exactly the 42
levels of the original release, labelled with 4 decimals ("0.0000", "0.4000", ..., "0.9900").

N:M levels ("2:4") keep N of every M consecutive weights along the input dimension; their
sparsity is 1 - N/M.

int8 levels ("q8:0.0000", "q8:0.8911") are an fp32 level's mask with the kept weights on a symmetric
per-output-channel int8 grid and the layer's input quantized per token at run time
(``engine.runtime.int8``); their sparsity is that of the level after "q8:".  Only unstructured
levels of the grid take the prefix, and "q8:0.0000" is dense int8.

A level is identified everywhere (tables, database, results) by its label.  ``DENSE`` is the one
level that leaves a layer as it was (fp32, dense); every other level changes its weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DENSE = "0.0000"
INT8 = "q8:"  # the prefix of an int8 level
_NM = re.compile(r"^(\d+):(\d+)$")


@dataclass(frozen=True)
class NM:
    """An N:M pattern: N non-zeros kept in every group of M consecutive weights."""

    n: int
    m: int

    @property
    def label(self) -> str:
        return f"{self.n}:{self.m}"

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m


def parse_nm(label: str) -> NM | None:
    """Return the N:M pattern named by ``label`` ("2:4"), or None if it is not one."""
    match = _NM.match(label.strip())
    if not match:
        return None
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ValueError(f"bad N:M level {label!r}: need 0 < N < M")
    return NM(n, m)


def level_label(sparsity: float) -> str:
    """The canonical 4-decimal label of an unstructured sparsity, e.g. 0.4 -> "0.4000"."""
    return f"{sparsity:.4f}"


def is_int8(label: str) -> bool:
    """True for an int8 level ("q8:0.0000", "q8:0.7844")."""
    return label.startswith(INT8)


def int8_level(label: str) -> str:
    """The int8 level on the mask of the unstructured level ``label``: "0.7844" -> "q8:0.7844"."""
    if is_int8(label) or parse_nm(label) is not None:
        raise ValueError(f"only unstructured fp32 levels have an int8 form, not {label!r}")
    level_sparsity(label)
    return INT8 + label


def mask_level(label: str) -> str:
    """The fp32 level whose mask an int8 level keeps ("q8:0.7844" -> "0.7844"); other levels as they are."""
    return label[len(INT8):] if is_int8(label) else label


def level_sparsity(label: str) -> float:
    """Fraction of zero weights of a level given by its label ("0.7844", "2:4" or "q8:0.7844")."""
    if is_int8(label):
        label = mask_level(label)
        if parse_nm(label) is not None:
            raise ValueError(f"int8 level {INT8 + label!r}: only unstructured levels have an int8 form")
    nm = parse_nm(label)
    if nm is not None:
        return nm.sparsity
    value = float(label)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"sparsity level {label!r} outside [0, 1)")
    return value


def geometric_levels(
    min_sparsity: float = 0.40,
    max_sparsity: float = 0.99,
    steps: int = 40,
    include_dense: bool = True,
) -> list[str]:
    """Labels of the geometric grid, ascending in sparsity (dense first if included).

    >>> geometric_levels()[:3], len(geometric_levels())
    (['0.0000', '0.4000', '0.4584'], 42)
    """
    if not 0.0 < min_sparsity <= max_sparsity < 1.0:
        raise ValueError("need 0 < min_sparsity <= max_sparsity < 1")
    if steps < 0 or (steps == 0 and min_sparsity != max_sparsity):
        raise ValueError("steps must be >= 1 (or 0 with min == max)")
    d0, d1 = 1.0 - min_sparsity, 1.0 - max_sparsity
    delta = (d1 / d0) ** (1.0 / steps) if steps else 1.0
    labels = [level_label(1.0 - d0 * delta**k) for k in range(steps + 1)]
    labels = sorted(set(labels), key=float)  # tiny grids may print two steps alike
    return ([DENSE] if include_dense else []) + labels


def nm_levels(n: int = 2, m: int = 4, include_dense: bool = True) -> list[str]:
    """The N:M choice set: dense and one N:M pattern (the GPU 2:4 backend)."""
    return ([DENSE] if include_dense else []) + [NM(n, m).label]


def with_int8(levels: list[str], sparsities: list[float]) -> list[str]:
    """``levels`` plus the int8 form of the level nearest each of ``sparsities`` (dense for 0), ascending.

    >>> with_int8(["0.0000", "0.5000", "0.7500"], [0.0, 0.7])
    ['0.0000', 'q8:0.0000', '0.5000', '0.7500', 'q8:0.7500']
    """
    unstructured = [level for level in levels if parse_nm(level) is None and not is_int8(level)]
    if not unstructured:
        raise ValueError("int8 levels need unstructured levels to take their masks from")
    chosen = {min(unstructured, key=lambda level: abs(level_sparsity(level) - sparsity)) for sparsity in sparsities}
    return sort_levels(list(levels) + [int8_level(level) for level in chosen if int8_level(level) not in levels])


def sort_levels(labels: list[str]) -> list[str]:
    """Labels ordered by ascending sparsity, an int8 level right after the fp32 level of its mask."""
    return sorted(labels, key=lambda label: (level_sparsity(label), is_int8(label)))
