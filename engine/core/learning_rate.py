"""The learning-rate schedules of global AdaPrune (``export.gap_decay``) and `spdy finetune` (``--lr-decay``).

For step s of S steps, with the peak rate lr:

    constant   lr_s = lr
    cosine     lr_s = lr * (1 + cos(pi * s / S)) / 2     (from lr at s = 0 to 0 at s = S)
"""

from __future__ import annotations

import math

LR_DECAYS = ("constant", "cosine")


def rate_factor(step: int, steps: int, decay: str) -> float:
    """lr_s / lr: 1 for ``decay`` 'constant', (1 + cos(pi * s / S)) / 2 for 'cosine'."""
    if decay == "constant":
        return 1.0
    if decay == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * step / steps))
    raise ValueError(f"unknown learning-rate decay {decay!r}; expected one of {', '.join(LR_DECAYS)}")
