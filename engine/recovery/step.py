"""One training step of ``spdy finetune``: the batch's loss, then the masked optimiser step.

    L = L_out(c, d) + lambda * L_hidden        (``batch_loss``; L_hidden from ``engine.recovery.hidden``)
    g <- grad L * mask;  w <- Adam(w, g);  w <- w * mask        (``train_step``)

with c the student's output, d the dense model's and ``mask`` each pruned layer's keep mask
(``engine.recovery.gmp``), so pruned weights stay exact zeros after every step.  The benchmarks
time exactly these two calls.
"""

from __future__ import annotations

import torch

from engine.recovery import hidden
from engine.recovery.settings import autocast


def as_fp32(output):
    """A model output for the loss: a bf16 tensor (from autocast) as fp32, anything else as it is."""
    return output.float() if isinstance(output, torch.Tensor) and output.is_floating_point() else output


def batch_loss(loaded, student, inputs, target, labels, loss_fn, settings: dict, blocks: list[str],
               dense_states: list[torch.Tensor] | None = None) -> torch.Tensor:
    """One batch's training loss, L_out + lambda * the block outputs' loss (``engine.recovery.hidden``,
    with ``blocks``), the forward passes in ``settings["precision"]`` and the losses in fp32.  The dense
    block outputs are ``dense_states`` (``hidden.DenseStates.batch``) when given, else computed here."""
    with hidden.recording(student, blocks) as student_states, autocast(settings):
        output = as_fp32(loaded.run_model(student, inputs))
    loss = loss_fn(output, target, labels)
    if blocks:
        if dense_states is None:
            with torch.no_grad(), hidden.recording(loaded.model, blocks) as dense_states, autocast(settings):
                loaded.run_model(loaded.model, inputs)
        mask = hidden.token_mask(inputs, dense_states)
        loss = loss + float(settings["hidden_weight"]) * hidden.hidden_loss(student_states, dense_states, mask)
    return loss


def train_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, masks=None) -> None:
    """Backward and one optimiser step; with ``masks`` (``gmp.FixedMasks`` / ``GradualMasks``) the
    pruned weights get no gradient and are zero again after the step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if masks is not None:
        masks.mask_gradients()
    optimizer.step()
    if masks is not None:
        masks.apply()
