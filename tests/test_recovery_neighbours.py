"""Neighbour distillation (engine.recovery.neighbours): the loss's exact values, its bank, its settings."""

import math

import pytest
import torch

from engine.core.errors import RunError
from engine.recovery import neighbours
from engine.recovery.settings import Options, resolve
from tests.test_recovery_hidden import _Profile


def test_loss_is_kl_of_the_rankings_over_the_bank():
    # bank e1, e2 at tau 1: dense e1 gives softmax([1, 0]), student e2 softmax([0, 1]);
    # KL = (e - 1) / (e + 1) = tanh(1/2)
    bank = torch.eye(2)
    loss = neighbours.neighbour_loss(torch.tensor([[0.0, 3.0]]), torch.tensor([[2.0, 0.0]]), bank, temperature=1.0)
    assert loss.item() == pytest.approx(math.tanh(0.5), abs=1e-7)


def test_loss_is_zero_when_the_student_embeds_as_the_dense_model_does_at_any_length():
    dense = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    bank = neighbours.bank(torch.randn(20, 8, generator=torch.Generator().manual_seed(1)), seed=0)
    assert neighbours.neighbour_loss(3 * dense, dense, bank).item() == pytest.approx(0.0, abs=1e-6)
    assert neighbours.neighbour_loss(dense.flip(0), dense, bank).item() > 0.1


def test_gradient_moves_the_student_towards_the_dense_ranking():
    bank = torch.eye(3)
    student = torch.tensor([[1.0, 1.0, 0.0]], requires_grad=True)
    neighbours.neighbour_loss(student, torch.tensor([[1.0, 0.0, 0.0]]), bank, temperature=0.5).backward()
    assert student.grad[0, 0] < 0 < student.grad[0, 1]  # descent raises similarity to e1, lowers it to e2


def test_bank_is_a_seeded_draw_of_unit_rows():
    teacher = torch.arange(30, dtype=torch.float32).reshape(10, 3) + 1
    drawn = neighbours.bank(teacher, seed=7, size=4)
    assert drawn.shape == (4, 3) and torch.equal(drawn, neighbours.bank(teacher, seed=7, size=4))
    assert torch.allclose(drawn.norm(dim=-1), torch.ones(4))
    assert not torch.equal(drawn, neighbours.bank(teacher, seed=8, size=4))
    assert torch.allclose(neighbours.bank(teacher, seed=0, size=100), torch.nn.functional.normalize(teacher, dim=-1))


def test_settings_default_off_refuse_negative_and_resume_old_runs_without_it(tmp_path):
    settings = resolve(Options(), None, _Profile, tmp_path)
    assert settings["neighbour_weight"] == 0.0
    with pytest.raises(RunError, match="--neighbour-weight must be at least 0, got -0.5"):
        resolve(Options(neighbour_weight=-0.5), None, _Profile, tmp_path)
    old = {key: value for key, value in settings.items() if key != "neighbour_weight"}
    assert resolve(Options(), old, _Profile, tmp_path)["neighbour_weight"] == 0.0
    with pytest.raises(RunError, match="--neighbour-weight 1.0 \\(was 0.0\\)"):
        resolve(Options(neighbour_weight=1.0), old, _Profile, tmp_path)
