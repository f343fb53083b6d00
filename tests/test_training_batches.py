"""The batches `spdy finetune` trains on (engine.recovery.training_data): seeded, complete, and with
--group-by-length made of sentences of about one length."""

import torch

from engine.recovery import training_data
from engine.recovery.settings import Options, resolve
from engine.recovery.training_data import TrainingSet, epoch_batches


class _Profile:
    class model:
        source = "minilm"

    class hardware:
        threads = 2


def token_set(lengths: list[int], width: int = 8) -> TrainingSet:
    mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
    ids = torch.arange(len(lengths)).unsqueeze(1) * mask  # sample i's tokens all equal i
    return TrainingSet({"input_ids": ids, "attention_mask": mask}, None)


def test_grouped_batches_sort_each_group_by_length_and_cover_every_sample_once(monkeypatch):
    monkeypatch.setattr(training_data, "LENGTH_GROUP", 2)  # groups of 2 batches of 2 samples
    lengths = [5, 1, 7, 3, 2, 8, 4, 6, 1]
    train = token_set(lengths)
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(11))
    batches = epoch_batches(train, 2, 11, by_length=True)
    # the same permutation as the ungrouped order, cut into groups of 4, each sorted by length
    expected = []
    for group in order.split(4):
        ranked = sorted(group.tolist(), key=lambda i: lengths[i])
        expected += [ranked[i:i + 2] for i in range(0, len(ranked), 2)]
    assert sorted(b.tolist() for b in batches) == sorted(expected)
    assert sorted(i for b in batches for i in b.tolist()) == list(range(len(lengths)))
    assert [b.tolist() for b in batches] == [b.tolist() for b in epoch_batches(train, 2, 11, by_length=True)]
    assert [b.tolist() for b in epoch_batches(train, 2, 11, by_length=False)] == [b.tolist() for b in order.split(2)]


def test_grouping_cuts_padding_and_leaves_inputs_without_a_mask_alone():
    lengths = [1, 8] * 32
    train = token_set(lengths)
    random_width = [train.batch(b)["input_ids"].shape[1] for b in epoch_batches(train, 4, 0, by_length=False)]
    grouped_width = [train.batch(b)["input_ids"].shape[1] for b in epoch_batches(train, 4, 0, by_length=True)]
    assert sorted(grouped_width) == [1] * 8 + [8] * 8  # each batch is all short or all long
    assert sum(random_width) > sum(grouped_width)
    images = TrainingSet(torch.zeros(10, 3), None)
    assert images.lengths() is None
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(3)).split(4)
    assert [b.tolist() for b in epoch_batches(images, 4, 3, by_length=True)] == [b.tolist() for b in expected]


def test_grouping_is_on_for_new_finetunings_and_off_for_ones_stored_before_it(tmp_path):
    settings = resolve(Options(), None, _Profile, tmp_path)
    assert settings["group_by_length"] is True
    old = {key: value for key, value in settings.items() if key != "group_by_length"}
    assert resolve(Options(), old, _Profile, tmp_path)["group_by_length"] is False


def test_teacher_outputs_come_back_in_sample_order(tmp_path):
    class Loaded:
        model = torch.nn.Identity()

        @staticmethod
        def run_model(model, inputs):  # a sentence's "embedding": its id and its length
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
            return torch.stack([ids[:, 0].float(), mask.sum(1).float()], dim=1)

    lengths = [3, 1, 4, 1, 5, 2, 6]
    teacher = training_data.teacher_outputs(tmp_path / "teacher.safetensors", Loaded, token_set(lengths), 2)
    assert teacher.tolist() == [[float(i), float(n)] for i, n in enumerate(lengths)]


def test_teacher_outputs_from_a_pass_already_made_are_kept_and_the_file_wins_after(tmp_path):
    class Loaded:
        @staticmethod
        def run_model(model, inputs):
            raise AssertionError("no pass of its own")

    train, path = token_set([2, 1, 3]), tmp_path / "teacher.safetensors"
    computed = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(training_data.teacher_outputs(path, Loaded, train, 2, computed), computed)
    assert torch.equal(training_data.teacher_outputs(path, Loaded, train, 2, computed + 1), computed)  # as kept on resume
    other = token_set([2, 1, 4])  # as many samples, other inputs (the packages' docstrings changed)
    assert other.fingerprint() != train.fingerprint() and train.fingerprint() == token_set([2, 1, 3]).fingerprint()
    assert torch.equal(training_data.teacher_outputs(path, Loaded, other, 2, computed + 1), computed + 1)  # not the stale file
    path.write_bytes(b"damaged")
    assert torch.equal(training_data.teacher_outputs(path, Loaded, other, 2, computed + 2), computed + 2)
