"""What every backend's verify shares: its error and the fields of the ``verify`` event.

    measured_speedup = median(dense seconds) / median(sparse seconds)

both timed end to end, interleaved, on the profile's batch, after the sparse model's output was
checked against the pruned model computed densely with exact zeros.
"""

from __future__ import annotations


class VerifyError(RuntimeError):
    """The sparse-kernel model does not compute what the pruned model computes."""


def outcome(predicted: float, dense, sparse, dense_baseline: str, error: float, references: dict | None = None) -> dict:
    """The ``verify`` event fields from the dense and sparse end-to-end ``Stats``; ``references``: the
    median seconds of every dense path timed beside them (default: the one reference)."""
    return {
        "predicted": predicted,
        "measured": dense.median / sparse.median,
        "dense_seconds": dense.median,
        "sparse_seconds": sparse.median,
        "dense_spread": dense.spread,
        "sparse_spread": sparse.spread,
        "dense_baseline": dense_baseline,
        "max_abs_difference": error,
        "references": dict(references) if references is not None else {dense_baseline: dense.median},
    }
