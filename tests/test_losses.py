"""Losses and held-out metrics against hand-computed values."""

import math

import pytest
import torch

from engine.model.data import DataError
from engine.model.losses import LOSSES, cosine_loss, cross_entropy_loss, heldout_metrics, neighbour_recall, kl_loss, loss_function, mse_loss, resolve_loss


def test_cosine_of_known_vectors():
    output = torch.tensor([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    dense = torch.tensor([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    expected = ((1 - 0) + (1 - 1 / math.sqrt(2)) + (1 - (-1))) / 3
    assert cosine_loss(output, dense).item() == pytest.approx(expected, abs=1e-6)


def test_kl_of_known_distributions():
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75])
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)  # KL(p || q), p = dense
    assert kl_loss(q.log()[None], p.log()[None]).item() == pytest.approx(expected, abs=1e-6)
    # logits are defined up to a constant per sample; the direction matters (KL is not symmetric)
    assert kl_loss(q.log()[None] + 3.0, p.log()[None] - 1.0).item() == pytest.approx(expected, abs=1e-6)
    reverse = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert kl_loss(p.log()[None], q.log()[None]).item() == pytest.approx(reverse, abs=1e-6)


def test_cross_entropy_and_mse():
    logits = torch.tensor([[0.2, 0.8], [0.5, 0.5]]).log()
    labels = torch.tensor([1, 0])
    assert cross_entropy_loss(logits, logits, labels).item() == pytest.approx(-(math.log(0.8) + math.log(0.5)) / 2, abs=1e-6)
    output, dense = torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [0.0, 3.0]])
    assert mse_loss(output, dense).item() == pytest.approx(((1 + 4) / 2 + 9 / 2) / 2)
    with pytest.raises(DataError, match="needs labels"):
        cross_entropy_loss(logits, logits, None)


def test_losses_are_non_negative_and_zero_at_the_dense_output():
    generator = torch.Generator().manual_seed(0)
    output, dense = torch.randn(16, 10, generator=generator), torch.randn(16, 10, generator=generator)
    labels = torch.randint(0, 10, (16,), generator=generator)
    for name, loss in LOSSES.items():
        assert loss(output, dense, labels).item() > 0, name
        if name != "cross-entropy":
            assert loss(dense, dense, labels).item() == pytest.approx(0, abs=1e-6), name
    # outputs with more dimensions are compared per sample, flattened
    assert cosine_loss(output.view(16, 2, 5), dense.view(16, 2, 5)).item() == pytest.approx(cosine_loss(output, dense).item())


@pytest.mark.parametrize(
    "name, kind, has_labels, expected",
    [
        ("auto", "encoder", False, "cosine"),
        ("auto", "encoder", True, "cosine"),
        ("auto", "classifier", True, "cross-entropy"),
        ("auto", "classifier", False, "kl"),
        ("mse", "encoder", False, "mse"),
        ("kl", "classifier", True, "kl"),
    ],
)
def test_resolve_loss(name, kind, has_labels, expected):
    assert resolve_loss(name, kind, has_labels) == expected
    assert loss_function(name, kind, has_labels) is LOSSES[expected]


def test_resolve_loss_rejects_mismatches():
    with pytest.raises(DataError, match="search.loss 'cross-entropy' needs labels"):
        resolve_loss("cross-entropy", "classifier", False)
    with pytest.raises(DataError, match="search.loss 'kl' compares logits, but the model is an encoder"):
        resolve_loss("kl", "encoder", False)


def test_heldout_metrics():
    dense = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    output = torch.tensor([[0.0, 2.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    labels = torch.tensor([1, 0, 1, 1])
    assert heldout_metrics("classifier", output, dense, labels) == {"agreement": 0.5, "accuracy": 0.25, "dense_accuracy": 0.75}
    assert heldout_metrics("classifier", output, dense) == {"agreement": 0.5}
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # cosines 1 and 0: mean 0.5, 10th percentile 0 + 0.1 * (1 - 0); with two samples each one's
    # only neighbour is the other, whatever the embeddings, so recall is 1
    assert heldout_metrics("encoder", embeddings, torch.tensor([[1.0, 0.0], [1.0, 0.0]])) == {
        "cosine": pytest.approx(0.5), "cosine_p10": pytest.approx(0.1), "recall_at_10": 1.0,
    }


def _at_degrees(*angles: float) -> torch.Tensor:
    radians = torch.tensor(angles, dtype=torch.float64) * torch.pi / 180
    return torch.stack([radians.cos(), radians.sin()], dim=-1)


def test_neighbour_recall_by_hand():
    dense = _at_degrees(0, 10, 90, 100)  # nearest: a-b, b-a, c-d, d-c
    moved = _at_degrees(0, 10, 90, 200)  # a->b yes, b->a yes, c->b (80 deg < 90) no, d->c (110 deg) yes
    assert neighbour_recall(moved, dense, k=1) == 0.75
    assert neighbour_recall(dense, dense, k=1) == 1.0
    # k=2 of 3 others: dense a:{b,c} b:{a,c} c:{d,b} d:{c,b}; moved a:{b,c} b:{a,c} c:{b,a} d:{c,a}
    assert neighbour_recall(moved, dense, k=2) == pytest.approx(6 / 8)
    assert neighbour_recall(moved, dense, k=10) == 1.0  # k cut to the 3 others: every set is everything
    assert math.isnan(neighbour_recall(dense[:1], dense[:1]))
