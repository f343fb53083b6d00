"""`spdy finetune --add-docstrings`: extra training text from the installed packages' docstrings."""

import pytest
import torch

from engine.core.errors import RunError
from engine.core.profile import from_dict
from engine.model import corpus
from engine.model.data import build_data
from engine.recovery import training_data
from engine.recovery.settings import Options, resolve
from engine.recovery.training_data import TrainingSet, training_set

SENTENCES = [f"Sentence number {word} of the small training text for the tests." for word in
             ("one", "two", "three", "four", "five", "six")]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from engine.model.sources import minilm_path

    return AutoTokenizer.from_pretrained(minilm_path())


class _Loaded:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer


def _text_run(tmp_path, tokenizer, seed=0):
    path = tmp_path / "text.txt"
    path.write_text("\n".join(SENTENCES) + "\n")
    profile = from_dict({"run": {"seed": seed}, "model": {"source": "minilm"},
                         "data": {"source": "text", "path": str(path), "calibration_samples": 2,
                                  "heldout_samples": 2, "seq_len": 24}})
    return profile, _Loaded(tokenizer), build_data(profile, tokenizer)


def _decoded(train: TrainingSet, tokenizer) -> list[str]:
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in train.inputs["input_ids"]]


def test_package_sentences_come_from_purelib_then_platlib_without_repeats(tmp_path, monkeypatch):
    monkeypatch.setenv("SPDY_CACHE_DIR", str(tmp_path / "cache"))
    pure, plat = tmp_path / "pure", tmp_path / "plat"
    for root, text in ((pure, "A pure package explains itself in one long sentence."),
                       (plat, "A compiled package explains itself in one long sentence.")):
        (root / "pkg").mkdir(parents=True)
        (root / "pkg" / "mod.py").write_text(f'"""{text}"""\n"""A sentence both packages carry, word for word."""\n')
        (root / "pkg" / "shared.py").write_text('"""A sentence both packages carry, word for word."""\n')
    monkeypatch.setattr(corpus.sysconfig, "get_paths", lambda: {"purelib": str(pure), "platlib": str(plat)})
    corpus.package_sentences.cache_clear()
    try:
        assert corpus.package_sentences() == (
            "A pure package explains itself in one long sentence.",
            "A sentence both packages carry, word for word.",
            "A compiled package explains itself in one long sentence.",
        )
    finally:
        corpus.package_sentences.cache_clear()


def test_added_docstrings_skip_training_and_heldout_sentences_and_follow_the_seed(tmp_path, monkeypatch, tokenizer):
    profile, loaded, data = _text_run(tmp_path, tokenizer)
    heldout = [tokenizer.decode(ids, skip_special_tokens=True) for b in data.heldout for ids in b.inputs["input_ids"]]
    new = [f"An installed package documents its function number {n} in prose." for n in range(5)]
    packages = (*new[:2], SENTENCES[0], heldout[0], *new[2:])
    monkeypatch.setattr(training_data, "package_sentences", lambda: packages)

    base = training_set(profile, {}, loaded, data)
    text = [s.lower() for s in SENTENCES]
    assert _decoded(base, tokenizer) == [s for s in text if s not in heldout]  # the profile's text, held-out dropped
    everything = training_set(profile, {"add_docstrings": 100}, loaded, data)
    assert _decoded(everything, tokenizer)[: len(base)] == _decoded(base, tokenizer)
    assert sorted(_decoded(everything, tokenizer)[len(base):]) == sorted(s.lower() for s in new)  # no repeats
    two = training_set(profile, {"add_docstrings": 2}, loaded, data)
    added = _decoded(two, tokenizer)[len(base):]
    assert len(added) == 2 and set(added) < {s.lower() for s in new}
    assert _decoded(training_set(profile, {"add_docstrings": 2}, loaded, data), tokenizer) == _decoded(two, tokenizer)
    order = _decoded(everything, tokenizer)[len(base):]
    assert added == order[:2]  # the seeded order, cut
    reseeded, _, reseeded_data = _text_run(tmp_path, tokenizer, seed=5)
    again = training_set(reseeded, {"add_docstrings": 100}, loaded, reseeded_data)
    assert _decoded(again, tokenizer)[-len(new):] != order and sorted(_decoded(again, tokenizer)[-len(new):]) == sorted(order)
    assert torch.equal(two.inputs["attention_mask"][:, 0], torch.ones(len(two), dtype=torch.long))


def test_added_docstrings_need_text_and_docstrings(tmp_path, monkeypatch, tokenizer):
    profile, loaded, data = _text_run(tmp_path, tokenizer)
    monkeypatch.setattr(training_data, "package_sentences", lambda: ())
    with pytest.raises(RunError, match="--add-docstrings: found no docstrings"):
        training_set(profile, {"add_docstrings": 3}, loaded, data)
    digits = from_dict({"run": {"seed": 0}, "model": {"source": "digits"}, "data": {"source": "digits"}})
    digits_data = build_data(from_dict({"data": {"source": "digits", "calibration_samples": 10, "heldout_samples": 10}}))
    with pytest.raises(RunError, match="--add-docstrings: the training data is not text"):
        training_set(digits, {"add_docstrings": 3}, _Loaded(None), digits_data)
    monkeypatch.setattr(training_data, "package_sentences", lambda: ("An installed package documents its function in prose.",))
    narrow = TrainingSet({key: value[:, :8] for key, value in training_set(profile, {}, loaded, data).inputs.items()}, None)
    monkeypatch.setattr(training_data, "_source", lambda *args: narrow)  # e.g. a tensor file cut to 8 tokens
    with pytest.raises(RunError, match=r"--add-docstrings: the training data's inputs .* data.seq_len = 24"):
        training_set(profile, {"add_docstrings": 1}, loaded, data)


def test_add_docstrings_defaults_to_none_also_for_finetunings_stored_before_it(tmp_path):
    profile = from_dict({"model": {"source": "minilm"}})
    settings = resolve(Options(), None, profile, tmp_path)
    assert settings["add_docstrings"] == 0
    old = {key: value for key, value in settings.items() if key != "add_docstrings"}
    assert resolve(Options(), old, profile, tmp_path)["add_docstrings"] == 0
    with pytest.raises(RunError, match="--add-docstrings at least 0"):
        resolve(Options(add_docstrings=-1), None, profile, tmp_path)
    with pytest.raises(RunError, match=r"--add-docstrings 5 \(was 0\)"):
        resolve(Options(add_docstrings=5), old, profile, tmp_path)
