"""Calibration losses and held-out metrics: a pruned candidate's output against the dense output.

Every loss maps one batch to a non-negative scalar, the mean over the batch's N samples, with
``c_i`` the candidate's output for sample i, ``d_i`` the dense model's, ``y_i`` its label:

    cross-entropy   L = 1/N sum_i  -log softmax(c_i)[y_i]                       (needs labels)
    kl              L = 1/N sum_i  sum_k p_ik (log p_ik - log q_ik),  p_i = softmax(d_i), q_i = softmax(c_i)
    cosine          L = 1/N sum_i  1 - <c_i, d_i> / (|c_i| |d_i|)
    mse             L = 1/N sum_i  1/D sum_k (c_ik - d_ik)^2                    (D features per sample)

``kl`` is KL(dense || candidate): the information lost when the candidate's distribution
replaces the dense one.  Outputs with more than two dimensions are compared per sample,
flattened.  ``resolve_loss`` turns the profile's ``search.loss`` (including ``auto``) into one
of these names, and ``heldout_metrics`` computes the final quality figures.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from engine.model.data import DataError

LossFunction = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def _per_sample(output: torch.Tensor) -> torch.Tensor:
    return output.reshape(output.shape[0], -1).float()


def cross_entropy_loss(output: torch.Tensor, dense: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Mean negative log-likelihood of the labels under the candidate's logits (dense unused)."""
    if labels is None:
        raise DataError("search.loss 'cross-entropy' needs labels, and this batch has none")
    return F.cross_entropy(_per_sample(output), labels)


def kl_loss(output: torch.Tensor, dense: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Mean KL(softmax(dense) || softmax(output)) over the batch, in nats."""
    log_q = F.log_softmax(_per_sample(output), dim=-1)
    log_p = F.log_softmax(_per_sample(dense), dim=-1)
    divergence = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    return divergence.clamp(min=0).mean()  # >= 0 exactly; clamp only removes rounding below zero


def cosine_loss(output: torch.Tensor, dense: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Mean 1 - cosine similarity between candidate and dense outputs (0 when parallel, at most 2)."""
    similarity = F.cosine_similarity(_per_sample(output), _per_sample(dense), dim=-1, eps=1e-12)
    return (1 - similarity).clamp(min=0).mean()


def mse_loss(output: torch.Tensor, dense: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared difference between candidate and dense outputs, averaged over features and samples."""
    return (_per_sample(output) - _per_sample(dense)).pow(2).mean()


LOSSES: dict[str, LossFunction] = {
    "cross-entropy": cross_entropy_loss,
    "kl": kl_loss,
    "cosine": cosine_loss,
    "mse": mse_loss,
}
_NEEDS_LOGITS = ("cross-entropy", "kl")


def resolve_loss(name: str, model_kind: str, has_labels: bool, option: str = "search.loss") -> str:
    """The concrete loss for ``option = name`` (``search.loss``, or `spdy finetune`'s ``--loss``).

    ``auto`` picks ``cosine`` for encoders (outputs are embeddings) and, for classifiers,
    ``cross-entropy`` when the data has labels, else ``kl`` to the dense logits.  Explicit names
    are checked against what the model and data provide.
    """
    if name == "auto":
        if model_kind == "encoder":
            return "cosine"
        return "cross-entropy" if has_labels else "kl"
    if name in _NEEDS_LOGITS and model_kind == "encoder":
        raise DataError(f"{option} {name!r} compares logits, but the model is an encoder (output = embedding); use 'cosine' or 'mse'")
    if name == "cross-entropy" and not has_labels:
        raise DataError(f"{option} 'cross-entropy' needs labels, and the data has none; use 'kl' (to the dense logits) or 'auto'")
    return name


def loss_function(name: str, model_kind: str, has_labels: bool) -> LossFunction:
    """The loss callable ``(output, dense, labels) -> scalar`` for ``search.loss = name``."""
    return LOSSES[resolve_loss(name, model_kind, has_labels)]


def primary_metric(metrics: dict[str, float]) -> float:
    """The one number a ``heldout_metrics`` result is reported by: cosine, else accuracy, else agreement."""
    return metrics.get("cosine", metrics.get("accuracy", metrics.get("agreement", float("nan"))))


def primary_metric_name(model_kind: str, has_labels: bool) -> str:
    """What ``primary_metric`` reports, in words (result.json's ``heldout_metric``)."""
    if model_kind == "encoder":
        return "cosine similarity to dense"
    return "accuracy" if has_labels else "agreement with dense"


NEIGHBOURS = 10  # neighbour recall@k of encoders: k


def neighbour_recall(outputs: torch.Tensor, dense: torch.Tensor, k: int = NEIGHBOURS) -> float:
    """Neighbour recall@k: for each sample i, N_dense(i) its k nearest other samples by cosine under
    the dense embeddings and N(i) under the candidate's; recall = mean_i |N(i) & N_dense(i)| / k.

    What a semantic-search user keeps: the share of each query's top-k results that survive.
    k is cut to n - 1 when fewer samples exist (nan for fewer than two)."""
    samples = outputs.shape[0]
    k = min(k, samples - 1)
    if k < 1:
        return float("nan")

    def nearest(embeddings: torch.Tensor) -> torch.Tensor:
        unit = F.normalize(_per_sample(embeddings).double(), dim=-1, eps=1e-12)
        similarity = unit @ unit.T
        similarity.fill_diagonal_(-float("inf"))  # a sample is not its own neighbour
        return similarity.topk(k, dim=-1).indices

    kept = nearest(outputs).unsqueeze(-1) == nearest(dense).unsqueeze(-2)  # (n, k, k): candidate j is dense neighbour l
    return kept.any(dim=-1).double().mean().item()


def heldout_metrics(
    model_kind: str, outputs: torch.Tensor, dense: torch.Tensor, labels: torch.Tensor | None = None
) -> dict[str, float]:
    """Quality of a candidate on the held-out set (outputs concatenated over all batches).

    Encoders: ``cosine``, the mean cosine similarity to the dense embeddings (1 = unchanged),
    ``cosine_p10``, its 10th percentile (the worst tenth of sentences), and ``recall_at_10``
    (``neighbour_recall``).  Classifiers: ``agreement``, the fraction of samples whose top-1 class
    matches the dense model's; with labels also ``accuracy`` (top-1 accuracy of the candidate) and
    ``dense_accuracy``.
    """
    if model_kind == "encoder":
        similarity = F.cosine_similarity(_per_sample(outputs), _per_sample(dense), dim=-1, eps=1e-12)
        return {
            "cosine": similarity.mean().item(),
            "cosine_p10": torch.quantile(similarity.double(), 0.1).item(),
            "recall_at_10": neighbour_recall(outputs, dense),
        }
    predicted, dense_predicted = outputs.argmax(dim=-1), dense.argmax(dim=-1)
    metrics = {"agreement": (predicted == dense_predicted).float().mean().item()}
    if labels is not None:
        metrics["accuracy"] = (predicted == labels).float().mean().item()
        metrics["dense_accuracy"] = (dense_predicted == labels).float().mean().item()
    return metrics


METRIC_NAMES = {
    "cosine": "cosine to dense (mean)",
    "cosine_p10": "cosine to dense (10th percentile)",
    "recall_at_10": "neighbour recall@10",
    "accuracy": "accuracy",
    "agreement": "agreement with dense",
    "dense_accuracy": "dense accuracy",
}
