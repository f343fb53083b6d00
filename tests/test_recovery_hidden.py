"""Layer-wise distillation (engine.recovery.hidden) and the learning-rate decay of `spdy finetune`."""

import math

import pytest
import torch
from torch import nn

from engine.core.errors import RunError
from engine.recovery import hidden
from engine.recovery.settings import Options, learning_rate, resolve


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.dense = nn.Linear(width, width)

    def forward(self, x):
        return (self.dense(x) + x, "extra")  # a tuple, like a Hugging Face layer's output


class Tiny(nn.Module):
    """embed -> ModuleList of blocks -> head; a ModuleList with no prunable layer beside it."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.embed = nn.Linear(width, width)
        self.layers = nn.ModuleList(Block(width) for _ in range(3))
        self.unused = nn.ModuleList([nn.Identity()])
        self.head = nn.Linear(width, 2)

    def forward(self, x):
        x = self.embed(x)
        for layer in self.layers:
            x = layer(x)[0]
        return self.head(x)


def test_blocks_are_the_module_list_items_holding_prunable_layers():
    model = Tiny()
    assert hidden.block_names(model, ["layers.0.dense", "layers.2.dense", "head"]) == ["layers.0", "layers.2"]
    assert hidden.block_names(model, ["embed", "head"]) == []
    outer = nn.Module()
    outer.stack = nn.ModuleList([nn.Module()])
    outer.stack[0].inner = nn.ModuleList([nn.Linear(2, 2)])
    assert hidden.block_names(outer, ["stack.0.inner.0"]) == ["stack.0"]  # the outermost list only


def test_recording_captures_each_block_output_and_removes_its_hooks():
    model = Tiny()
    x = torch.randn(2, 5, 4)
    with hidden.recording(model, ["layers.0", "layers.1"]) as states:
        model(x)
    expected = model.layers[0](model.embed(x))[0]
    assert len(states) == 2 and torch.equal(states[0], expected)
    assert torch.equal(states[1], model.layers[1](expected)[0])
    model(x)
    assert len(states) == 2  # hooks gone after the block
    assert all(not layer._forward_hooks for layer in model.layers)


def test_hidden_loss_is_the_masked_relative_squared_error():
    dense = [torch.tensor([[[3.0, 4.0], [1.0, 0.0]]]), torch.tensor([[[0.0, 2.0], [0.0, 0.0]]])]
    student = [torch.tensor([[[3.0, 5.0], [0.0, 0.0]]]), torch.tensor([[[0.0, 1.0], [7.0, 7.0]]])]
    # block 0: errors 1 and 1 over energies 25 and 1; block 1: errors 1 and 98 over energies 4 and 0
    assert hidden.hidden_loss(student, dense).item() == pytest.approx(((1 + 1) / 26 + (1 + 98) / 4) / 2)
    mask = torch.tensor([[1, 0]])  # the second token is padding
    assert hidden.hidden_loss(student, dense, mask).item() == pytest.approx((1 / 25 + 1 / 4) / 2)
    assert hidden.hidden_loss(dense, dense, mask).item() == 0.0
    with pytest.raises(ValueError, match="recorded 1 student and 2 dense"):
        hidden.hidden_loss(student[:1], dense)


def test_token_mask_only_when_it_matches_the_states():
    states = [torch.zeros(2, 3, 4)]
    mask = torch.ones(2, 3, dtype=torch.long)
    assert hidden.token_mask({"attention_mask": mask}, states) is mask
    assert hidden.token_mask({"attention_mask": torch.ones(2, 5)}, states) is None
    assert hidden.token_mask(torch.zeros(2, 3), states) is None


def test_learning_rate_constant_or_cosine_decay():
    constant = {"lr": 2e-4, "lr_decay": "constant"}
    cosine = {"lr": 2e-4, "lr_decay": "cosine"}
    assert learning_rate(constant, 70, 100) == 2e-4
    assert learning_rate(cosine, 0, 100) == 2e-4
    assert learning_rate(cosine, 50, 100) == pytest.approx(1e-4)
    assert learning_rate(cosine, 25, 100) == pytest.approx(1e-4 * (1 + math.cos(math.pi / 4)))
    assert learning_rate(cosine, 100, 100) == pytest.approx(0.0, abs=1e-20)


class _Profile:
    class model:
        source = "minilm"

    class hardware:
        threads = 2


def test_settings_refuse_unknown_decay_and_negative_weight(tmp_path):
    settings = resolve(Options(), None, _Profile, tmp_path)
    assert settings["hidden_weight"] == 0.0 and settings["lr_decay"] == "constant"
    with pytest.raises(RunError, match="--lr-decay must be one of constant, cosine, got 'linear'"):
        resolve(Options(lr_decay="linear"), None, _Profile, tmp_path)
    with pytest.raises(RunError, match="--hidden-weight must be at least 0"):
        resolve(Options(hidden_weight=-1.0), None, _Profile, tmp_path)
    # a fine-tuning stored before these options existed resumes as what it ran: no hidden loss, constant rate
    old = {key: value for key, value in settings.items() if key not in ("hidden_weight", "lr_decay")}
    assert resolve(Options(), old, _Profile, tmp_path)["lr_decay"] == "constant"
    with pytest.raises(RunError, match="--hidden-weight 1.0 \\(was 0.0\\)"):
        resolve(Options(hidden_weight=1.0), old, _Profile, tmp_path)


def test_dropout_is_off_by_default_and_on_for_finetunings_stored_before_the_option(tmp_path):
    settings = resolve(Options(), None, _Profile, tmp_path)
    assert settings["dropout"] is False
    assert resolve(Options(dropout=True), None, _Profile, tmp_path)["dropout"] is True
    old = {key: value for key, value in settings.items() if key != "dropout"}
    assert resolve(Options(), old, _Profile, tmp_path)["dropout"] is True  # what they ran: the model's train mode
    with pytest.raises(RunError, match="--dropout False \\(was True\\)"):
        resolve(Options(dropout=False), old, _Profile, tmp_path)


def test_precision_setting_autocast_and_bf16_states_compared_in_fp32(tmp_path):
    from engine.recovery.settings import autocast, check_precision

    settings = resolve(Options(), None, _Profile, tmp_path)
    assert settings["precision"] == "fp32"
    with pytest.raises(RunError, match="--precision must be one of fp32, bf16, got 'fp16'"):
        resolve(Options(precision="fp16"), None, _Profile, tmp_path)
    bf16 = resolve(Options(precision="bf16"), None, _Profile, tmp_path)
    check_precision(bf16, ["avx512f", "avx512_bf16"])
    check_precision(settings, [])  # fp32 runs anywhere
    with pytest.raises(RunError, match="no bf16 instructions"):
        check_precision(bf16, ["avx2"])
    layer = nn.Linear(4, 4)
    with autocast(bf16):
        assert layer(torch.ones(1, 4)).dtype == torch.bfloat16
    with autocast(settings):
        assert layer(torch.ones(1, 4)).dtype == torch.float32
    # the relative error of bf16 states is computed in fp32: 1 - 0.5 against 1 is 0.25 exactly
    loss = hidden.hidden_loss([torch.full((1, 2, 4), 0.5, dtype=torch.bfloat16)], [torch.ones(1, 2, 4, dtype=torch.bfloat16)])
    assert loss.dtype == torch.float32 and loss.item() == 0.25


def test_dense_states_are_each_samples_block_outputs_padded_with_zeros(monkeypatch):
    from contextlib import nullcontext

    from engine.recovery.training_data import TrainingSet

    torch.manual_seed(0)
    model = Tiny()
    lengths = [3, 1, 5, 2, 4]
    mask = torch.tensor([[1] * n + [0] * (5 - n) for n in lengths])
    train = TrainingSet({"x": torch.randn(5, 5, 4), "attention_mask": mask}, None)

    class Loaded:
        pass

    Loaded.model = model
    Loaded.run_model = staticmethod(lambda module, inputs: module(inputs["x"]))
    blocks = ["layers.0", "layers.2"]
    cached = hidden.DenseStates.compute(Loaded, train, blocks, 2, nullcontext)
    assert [rows.shape for rows in cached.rows] == [(15, 4), (15, 4)]  # real tokens only
    index = torch.tensor([4, 1])
    states = cached.batch(index, 4)
    with hidden.recording(model, blocks) as direct, torch.no_grad():
        model(train.inputs["x"][index, :4])
    for got, want in zip(states, direct):
        assert got.shape == (2, 4, 4) and got.dtype == hidden.CACHED_DTYPE
        want = want.to(hidden.CACHED_DTYPE)  # kept rounded to bf16, exactly
        assert torch.equal(got[0], want[0])  # sample 4: 4 real tokens
        assert torch.equal(got[1, :1], want[1, :1]) and not got[1, 1:].any()  # sample 1: one
    assert cached.outputs is None  # per-token outputs of batches of different widths are not one tensor
    Loaded.run_model = staticmethod(lambda module, inputs: module(inputs["x"])[:, 0])  # one vector per sample
    pooled = hidden.DenseStates.compute(Loaded, train, blocks, 2, nullcontext)
    with torch.no_grad():
        assert torch.equal(pooled.outputs, model(train.inputs["x"])[:, 0])  # in sample order
    # too large to keep, or inputs without token lengths: computed every step instead
    monkeypatch.setattr(hidden, "MAX_CACHED_BYTES", 15 * 2 * 4 * 2 - 1)  # 15 tokens, 2 blocks, width 4, 2 bytes
    assert hidden.DenseStates.compute(Loaded, train, blocks, 2, nullcontext) is None
    assert hidden.DenseStates.compute(Loaded, TrainingSet(torch.randn(5, 4), None), blocks, 2, nullcontext) is None
