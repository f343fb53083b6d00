"""Pruning masks: exact magnitude top-k, nested across levels, and N:M.

A *keep mask* is a bool tensor shaped like the weight, True where the weight survives.

* Unstructured, sparsity s: exactly

      k = round(numel * s)

  weights are pruned, those with the smallest |w|.  Ties are broken by flat index (a stable
  sort), so the count is exact and the mask deterministic; the original release thresholded at
  the k-th magnitude and removed k + 1 weights plus any ties (spdy-method.md §5.1).
* Nested: pruning a weight that already has zeros to a higher sparsity keeps every existing zero
  and chooses the other k - zeros(w) among the non-zeros only, so the kept sets shrink level by
  level:  keep(s_1) ⊇ keep(s_2) ⊇ ...  for s_1 < s_2.
* Growing (gradual pruning): ``prune_more`` takes a keep mask and a larger count and prunes the
  smallest |w| among the kept weights only, so a pruned weight never comes back and exactly
  ``count`` weights are pruned afterwards, whatever values the pruned positions hold.
* N:M (spdy-method.md §7): in every group of M consecutive weights along the input dimension keep
  the N largest |w| (ties: lower index kept).  Linear (out, in): groups run along ``in``.
  Conv2d (out, in, kh, kw): groups run along ``in`` for each (out, kh, kw), i.e. along the last
  axis of the weight permuted to (out, kh, kw, in).  A layer whose input dimension is not a
  multiple of M has no N:M pattern (``nm_ineligibility`` says why).
"""

from __future__ import annotations

import torch

from engine.core.grid import NM


def pruned_count(numel: int, sparsity: float) -> int:
    """Number of weights a level of ``sparsity`` prunes: round(numel * sparsity)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity {sparsity} outside [0, 1)")
    return round(numel * sparsity)


def smallest(scores: torch.Tensor, count: int, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Bool mask, True at the ``count`` smallest scores (ties: lower flat index first), never at ``exclude``.

    Linear time: the count-th smallest value is the threshold; everything below it is chosen,
    and of the values equal to it, the first ones by index until the count is reached.
    """
    flat = scores.detach().flatten()
    if exclude is not None:
        flat = flat.masked_fill(exclude.flatten(), float("inf"))
    available = flat.numel() - (0 if exclude is None else int(exclude.sum()))
    if not 0 <= count <= available:
        raise ValueError(f"cannot choose {count} of {available} candidates")
    if count == 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    threshold = torch.kthvalue(flat, count).values
    below = flat < threshold
    ties = flat == threshold
    ties &= ties.cumsum(0) <= count - int(below.sum())
    return (below | ties).view(scores.shape)


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep mask pruning exactly round(numel * sparsity) weights of smallest |w|."""
    return ~smallest(weight.abs(), pruned_count(weight.numel(), sparsity))


def nested_magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep mask at ``sparsity`` that keeps every existing zero pruned and prunes the rest among the non-zeros.

    Raises ValueError if ``weight`` already has more zeros than the level prunes.
    """
    zeros = weight == 0
    extra = pruned_count(weight.numel(), sparsity) - int(zeros.sum())
    if extra < 0:
        raise ValueError(f"weight already has {int(zeros.sum())} zeros, more than sparsity {sparsity} prunes")
    return ~(zeros | smallest(weight.abs(), extra, exclude=zeros))


def prune_more(weight: torch.Tensor, keep: torch.Tensor, count: int) -> torch.Tensor:
    """Keep mask with exactly ``count`` pruned: the pruned set of ``keep`` plus the smallest |w| of the kept.

    Raises ValueError if ``keep`` already prunes more than ``count`` weights (masks only grow).
    """
    pruned = ~keep
    extra = count - int(pruned.sum())
    if extra < 0:
        raise ValueError(f"the mask already prunes {int(pruned.sum())} weights, more than {count}")
    return ~(pruned | smallest(weight.abs(), extra, exclude=pruned))


def nm_ineligibility(weight_shape: tuple[int, ...] | torch.Size, nm: NM) -> str | None:
    """Why a weight of this shape has no N:M pattern, or None if it has one."""
    if len(weight_shape) not in (2, 4):
        return f"weight of shape {tuple(weight_shape)} is neither Linear (out, in) nor Conv2d (out, in, kh, kw)"
    inputs = weight_shape[1]
    if inputs % nm.m:
        return f"input dimension {inputs} is not a multiple of M = {nm.m} ({nm.label})"
    return None


def _input_last(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.permute(0, 2, 3, 1) if tensor.dim() == 4 else tensor


def _input_second(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.permute(0, 3, 1, 2) if tensor.dim() == 4 else tensor


def nm_mask(weight: torch.Tensor, nm: NM) -> torch.Tensor:
    """Keep mask with the N largest |w| of every M consecutive weights along the input dimension."""
    reason = nm_ineligibility(weight.shape, nm)
    if reason is not None:
        raise ValueError(reason)
    grouped = _input_last(weight.detach().abs()).contiguous()
    groups = grouped.reshape(-1, nm.m)
    largest = torch.sort(groups, dim=1, descending=True, stable=True).indices[:, : nm.n]
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, largest, True)
    return _input_second(keep.view(grouped.shape)).contiguous()


def satisfies_nm(weight: torch.Tensor, nm: NM) -> bool:
    """True if every group of M consecutive input weights holds at most N non-zeros."""
    if nm_ineligibility(weight.shape, nm) is not None:
        return False
    groups = _input_last(weight != 0).reshape(-1, nm.m)
    return bool((groups.sum(dim=1) <= nm.n).all())
