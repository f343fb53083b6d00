"""Layer-wise distillation: the student also matches the dense model's hidden states, block by block.

The blocks of a model are the items of its outermost ``nn.ModuleList`` s that hold prunable layers (a
transformer's layers: ``encoder.layer.0`` ... ``encoder.layer.5`` in MiniLM).  With weight lambda
(``--hidden-weight``) the training loss of a batch becomes

    L = L_out + lambda * 1/B * sum_b  sum_t m_t ||h^s_bt - h^d_bt||^2  /  sum_t m_t ||h^d_bt||^2

with h^s_bt and h^d_bt the student's and the dense model's output of block b at token t, and m_t the
attention mask (1 for a real token, 0 for padding; all ones for inputs without one): each block's
squared error relative to its own energy, so blocks of different scale weigh alike.  The output loss
alone gives one vector per sentence to learn from; the blocks give one per token and layer, which
is what lets a pruned layer's neighbours compensate for it early in training.  The dense states of
token inputs are computed once before training (``DenseStates``), not by a dense forward every step.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator

import torch
from torch import nn

from engine.recovery.training_data import in_sample_order


def block_names(model: nn.Module, layer_names: list[str]) -> list[str]:
    """The items of the outermost ModuleLists holding any of ``layer_names``, in model order."""
    names: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or any(name.startswith(block + ".") for block in names):
            continue
        for index in range(len(module)):
            prefix = f"{name}.{index}" if name else str(index)
            if any(layer.startswith(prefix + ".") for layer in layer_names):
                names.append(prefix)
    return names


def _first_tensor(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


@contextmanager
def recording(model: nn.Module, names: list[str]) -> Iterator[list[torch.Tensor]]:
    """Within the block, every forward of the named submodules appends its output to the yielded list."""
    states: list[torch.Tensor] = []
    handles = [
        model.get_submodule(name).register_forward_hook(lambda _module, _args, output: states.append(_first_tensor(output)))
        for name in names
    ]
    try:
        yield states
    finally:
        for handle in handles:
            handle.remove()


def token_mask(inputs, states: list[torch.Tensor]) -> torch.Tensor | None:
    """The attention mask (batch x tokens) when the inputs have one shaped like the states' first two dims."""
    mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
    if mask is None or not states or tuple(mask.shape) != tuple(states[0].shape[:2]):
        return None
    return mask


def hidden_loss(student: list[torch.Tensor], dense: list[torch.Tensor], mask: torch.Tensor | None = None) -> torch.Tensor:
    """1/B sum_b sum_t m_t ||s_bt - d_bt||^2 / sum_t m_t ||d_bt||^2 (the module docstring's second term)."""
    if len(student) != len(dense) or not student:
        raise ValueError(f"recorded {len(student)} student and {len(dense)} dense block outputs; expected the same, at least one")
    total = student[0].new_zeros((), dtype=torch.float32)
    for s, d in zip(student, dense):
        s, d = s.float(), d.float()  # bf16 states (autocast) are compared in fp32
        error, energy = (s - d).pow(2).sum(-1), d.pow(2).sum(-1)
        if mask is not None:
            weights = mask.to(error.dtype).reshape(error.shape)
            error, energy = error * weights, energy * weights
        total = total + error.sum() / energy.sum().clamp_min(torch.finfo(energy.dtype).tiny)
    return total / len(student)


MAX_CACHED_BYTES = 4 << 30  # dense states beyond this are recomputed every step instead of kept
CACHED_DTYPE = torch.bfloat16  # rounding error 2^-9 relative: ~1e-5 of the relative squared error, half the memory


@dataclass
class DenseStates:
    """The dense model's block outputs h^d on every training sample, computed once before training (in
    the training's precision) and kept in CACHED_DTYPE for each sample's real tokens only: the hidden
    loss then needs no dense forward pass per step.  Sample i's states are rows offsets[i] ... offsets[i] + lengths[i]
    of each block's ``rows``; ``batch`` pads them back to a batch's width with zeros (masked anyway).
    The same pass's model outputs are kept too (``outputs``, in sample order): in fp32 they are the
    teacher's outputs, which then need no pass of their own."""

    rows: list[torch.Tensor]  # per block: (real tokens of all samples, width)
    offsets: torch.Tensor
    lengths: torch.Tensor
    outputs: torch.Tensor | None = None  # the model's output per sample (None unless one tensor of one width)

    @classmethod
    def compute(cls, loaded, train, blocks: list[str], batch_size: int,
                precision: Callable[[], ContextManager]) -> DenseStates | None:
        """The states of ``train`` (token inputs with a mask), or None where they would not fit
        MAX_CACHED_BYTES or the inputs have no token lengths; ``precision()`` gives the forward's context."""
        lengths = train.lengths()
        if lengths is None or not blocks:
            return None
        offsets = torch.cumsum(lengths, 0) - lengths
        rows: list[torch.Tensor] = []
        outputs: list = []
        order = train.in_length_order(batch_size)
        loaded.model.eval()
        for index in order:
            inputs = train.batch(index)
            with torch.no_grad(), recording(loaded.model, blocks) as states, precision():
                outputs.append(loaded.run_model(loaded.model, inputs))
            if not rows:
                per_token = sum(state.shape[-1] for state in states) * CACHED_DTYPE.itemsize
                if int(lengths.sum()) * per_token > MAX_CACHED_BYTES or len(states) != len(blocks):
                    return None
                rows = [state.new_empty((int(lengths.sum()), state.shape[-1]), dtype=CACHED_DTYPE) for state in states]
            valid = inputs["attention_mask"].bool()
            targets = (offsets[index, None] + torch.arange(valid.shape[1])[None, :])[valid]
            for store, state in zip(rows, states):
                store[targets] = state[valid].to(CACHED_DTYPE)
        one_tensor = all(isinstance(out, torch.Tensor) for out in outputs) and len({out.shape[1:] for out in outputs}) == 1
        return cls(rows, offsets, lengths, in_sample_order(torch.cat(outputs), order) if one_tensor else None)

    def batch(self, index: torch.Tensor, tokens: int) -> list[torch.Tensor]:
        """Each block's states of samples ``index`` as (len(index), tokens, width), zero past a sample's length."""
        positions = torch.arange(tokens)[None, :]
        valid = positions < self.lengths[index, None]
        sources = (self.offsets[index, None] + positions)[valid]
        padded = []
        for store in self.rows:
            out = store.new_zeros((len(index), tokens, store.shape[1]))
            out[valid] = store[sources]
            padded.append(out)
        return padded
