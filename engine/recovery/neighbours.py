"""Neighbour distillation: the student ranks the dense model's embeddings as the dense model does.

Neighbour recall@10 (``engine.model.losses.neighbour_recall``) asks that each sentence keep its
nearest neighbours, which the per-sentence cosine loss only asks for indirectly: a sentence at
cosine 0.95 to its dense embedding may still have moved past its neighbours.  With weight mu
(``--neighbour-weight``) and the dense embeddings of the training set as a fixed bank D (the
teacher outputs, unit length), the training loss of a batch gains

    L_nb = 1/B sum_i  KL( softmax(<d_i, D> / tau) || softmax(<s_i, D> / tau) )

with s_i and d_i the student's and dense model's unit embeddings of sample i and tau = 0.05 (the
temperature of contrastive sentence encoders, so the distribution is dominated by the nearest few
dozen sentences): the student's similarity to every bank sentence, where it matters, must order
and space them as the dense model's does.  L_nb >= 0, and 0 exactly when s_i = d_i.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TEMPERATURE = 0.05
BANK_SIZE = 4096  # bank rows drawn (seeded) from the teacher outputs when there are more


def bank(teacher: torch.Tensor, seed: int, size: int = BANK_SIZE) -> torch.Tensor:
    """The unit-length dense embeddings the neighbour loss ranks against: ``size`` of the teacher's
    rows drawn without replacement by ``seed`` (all of them when there are fewer)."""
    rows = teacher.reshape(teacher.shape[0], -1).float()
    if rows.shape[0] > size:
        rows = rows[torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(seed))[:size]]
    return F.normalize(rows, dim=-1, eps=1e-12)


def neighbour_loss(student: torch.Tensor, dense: torch.Tensor, bank: torch.Tensor,
                   temperature: float = TEMPERATURE) -> torch.Tensor:
    """1/B sum_i KL(softmax(<d_i, D>/tau) || softmax(<s_i, D>/tau)) (the module docstring's L_nb)."""
    s = F.normalize(student.reshape(student.shape[0], -1), dim=-1, eps=1e-12)
    d = F.normalize(dense.reshape(dense.shape[0], -1).to(s.dtype), dim=-1, eps=1e-12)
    target = F.log_softmax(d @ bank.T / temperature, dim=-1)
    predicted = F.log_softmax(s @ bank.T / temperature, dim=-1)
    divergence = (target.exp() * (target - predicted)).sum(-1)
    return divergence.clamp(min=0).mean()
