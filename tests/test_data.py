"""Calibration / held-out data: deterministic, disjoint, right shapes, clear errors."""

import textwrap

import numpy as np
import pytest
import torch

from engine.core.profile import from_dict
from engine.model.corpus import cached_sentences, docstring_sentences, stdlib_sentences
from engine.model.data import DataError, build_data, digits_split, split_indices


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from engine.model.sources import minilm_path

    return AutoTokenizer.from_pretrained(minilm_path())


def profile(seed=0, **data):
    return from_dict({"run": {"seed": seed}, "data": data})


def test_docstring_extraction_is_exact_and_has_no_side_effects(tmp_path):
    (tmp_path / "b_module.py").write_text(textwrap.dedent('''
        """Second module, parsed after the first one because paths are sorted.

        >>> print("a doctest example is not prose at all")
        """
        raise SystemExit("parsing never executes a module")

        class Widget:
            """A widget class with a docstring that is long enough.   Too short."""

            def method(self):
                """Return the widget's value, or raise ValueError when it is unset.

                x = compute(value) # an assignment is code, not a sentence
                """
    '''))
    (tmp_path / "a_module.py").write_text('"""The first module explains its purpose in one sentence."""\n')
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_skipped.py").write_text('"""A test suite docstring that is always left out of the corpus."""\n')
    (tmp_path / "broken.py").write_text('print "Python 2 source is skipped, not fatal"\n')
    assert docstring_sentences(tmp_path) == (
        "The first module explains its purpose in one sentence.",
        "Second module, parsed after the first one because paths are sorted.",
        "A widget class with a docstring that is long enough.",
        "Return the widget's value, or raise ValueError when it is unset.",
    )


def test_a_corpus_is_parsed_once_then_read_from_the_cache_until_a_source_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("SPDY_CACHE_DIR", str(tmp_path / "cache"))
    sources = tmp_path / "sources"
    sources.mkdir()
    (sources / "a.py").write_text('"""The first module explains its purpose in one sentence."""\n')
    assert cached_sentences(sources) == ("The first module explains its purpose in one sentence.",)
    [entry] = (tmp_path / "cache").iterdir()
    monkeypatch.setattr("engine.model.corpus.docstring_sentences", lambda root: pytest.fail("parsed again"))
    assert cached_sentences(sources) == ("The first module explains its purpose in one sentence.",)
    monkeypatch.undo()
    monkeypatch.setenv("SPDY_CACHE_DIR", str(tmp_path / "cache"))
    entry.write_text("{not json")  # a damaged entry is parsed again and rewritten
    assert cached_sentences(sources) == ("The first module explains its purpose in one sentence.",)
    (sources / "b.py").write_text('"""A second module that was added after the corpus was cached."""\n')
    assert cached_sentences(sources)[1:] == ("A second module that was added after the corpus was cached.",)
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_stdlib_corpus_is_clean_prose():
    sentences = stdlib_sentences()
    assert len(sentences) > 5000 and len(set(sentences)) == len(sentences)
    assert all(len(s) >= 40 and s == " ".join(s.split()) and ">>>" not in s and "=" not in s for s in sentences)


def test_stdlib_split_is_seeded_and_disjoint():
    count = len(stdlib_sentences())
    calibration, heldout = split_indices(count, profile(seed=1, calibration_samples=300, heldout_samples=200), "corpus")
    assert len(calibration) == 300 and len(heldout) == 200 and not set(calibration) & set(heldout)
    assert (calibration, heldout) == split_indices(count, profile(seed=1, calibration_samples=300, heldout_samples=200), "corpus")
    assert calibration != split_indices(count, profile(seed=2, calibration_samples=300, heldout_samples=200), "corpus")[0]
    # the held-out set does not move when the calibration set grows
    assert heldout == split_indices(count, profile(seed=1, calibration_samples=900, heldout_samples=200), "corpus")[1]


def test_stdlib_batches_are_tokenised_at_seq_len(tokenizer):
    settings = dict(calibration_samples=10, heldout_samples=5, batch_size=4, seq_len=24)
    data = build_data(profile(**settings), tokenizer)
    assert [len(batch) for batch in data.calibration] == [4, 4, 2] and [len(batch) for batch in data.heldout] == [4, 1]
    first = data.calibration[0].inputs
    assert set(first) == {"input_ids", "token_type_ids", "attention_mask"} and first["input_ids"].shape == (4, 24)
    again = build_data(profile(**settings), tokenizer)
    assert torch.equal(again.calibration[0].inputs["input_ids"], first["input_ids"])
    assert not data.has_labels


def test_text_file(tmp_path, tokenizer):
    path = tmp_path / "samples.txt"
    path.write_text("first  sample\n\nsecond sample\nfirst sample\nthird sample\n")
    data = build_data(profile(source="text", path=str(path), calibration_samples=2, heldout_samples=1, seq_len=8), tokenizer)
    decoded = {tokenizer.decode(ids, skip_special_tokens=True) for batch in data.calibration + data.heldout for ids in batch.inputs["input_ids"]}
    assert decoded == {"first sample", "second sample", "third sample"}  # whitespace normalised, duplicates dropped
    with pytest.raises(DataError, match=r"has 3 samples, fewer than data.calibration_samples \(3\) \+ data.heldout_samples \(1\)"):
        build_data(profile(source="text", path=str(path), calibration_samples=3, heldout_samples=1), tokenizer)
    with pytest.raises(DataError, match="missing.txt'?: cannot read"):
        build_data(profile(source="text", path=str(tmp_path / "missing.txt")), tokenizer)
    with pytest.raises(DataError, match="has no tokenizer"):
        build_data(profile(source="text", path=str(path)), None)


def test_digits_split():
    split = digits_split(0)
    assert {name: len(labels) for name, (_, labels) in split.items()} == {"train": 1000, "calibration": 285, "heldout": 512}
    images = torch.cat([split[name][0] for name in split]).flatten(1)
    assert images.shape == (1797, 64) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(digits_split(0)["heldout"][0], split["heldout"][0])
    assert not torch.equal(digits_split(1)["heldout"][0], split["heldout"][0])
    data = build_data(profile(source="digits", calibration_samples=100, heldout_samples=50, batch_size=64))
    assert [len(batch) for batch in data.calibration] == [64, 36] and data.has_labels
    assert data.calibration[0].inputs.shape == (64, 1, 8, 8)
    with pytest.raises(DataError, match="data.calibration_samples = 300 exceeds the 285 calibration samples"):
        build_data(profile(source="digits", calibration_samples=300))


@pytest.mark.parametrize("suffix", [".pt", ".npy", ".safetensors"])
def test_tensor_files(tmp_path, suffix):
    from safetensors.torch import save_file

    inputs, labels = torch.randn(12, 5), torch.arange(12)
    path = tmp_path / f"data{suffix}"
    if suffix == ".npy":
        np.save(path, inputs.numpy())
    elif suffix == ".pt":
        torch.save({"inputs": inputs, "labels": labels}, path)
    else:
        save_file({"inputs": inputs, "labels": labels}, path)
    data = build_data(profile(source="tensors", path=str(path), calibration_samples=6, heldout_samples=4, batch_size=4))
    samples = torch.cat([batch.inputs for batch in data.calibration + data.heldout])
    assert samples.shape == (10, 5) and len({tuple(row.tolist()) for row in samples}) == 10
    assert data.has_labels == (suffix != ".npy")
    if data.has_labels:  # labels travel with their samples through the shuffle
        for batch in data.calibration + data.heldout:
            assert torch.equal(batch.inputs, inputs[batch.labels])


def test_tensor_file_with_keyword_inputs_and_errors(tmp_path):
    path = tmp_path / "tokens.pt"
    torch.save({"input_ids": torch.ones(6, 7, dtype=torch.long), "attention_mask": torch.ones(6, 7, dtype=torch.long)}, path)
    data = build_data(profile(source="tensors", path=str(path), calibration_samples=4, heldout_samples=2))
    assert set(data.calibration[0].inputs) == {"input_ids", "attention_mask"}
    torch.save({"inputs": torch.ones(6, 2), "labels": torch.ones(5)}, path)
    with pytest.raises(DataError, match="disagree on the number of samples"):
        build_data(profile(source="tensors", path=str(path)))
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(DataError, match=r"data.csv'?: expected a .pt, .npy or .safetensors file"):
        build_data(profile(source="tensors", path=str(tmp_path / "data.csv")))
    (tmp_path / "broken.pt").write_bytes(b"not a tensor file")
    with pytest.raises(DataError, match="broken.pt'?: cannot load tensors"):
        build_data(profile(source="tensors", path=str(tmp_path / "broken.pt")))


def test_image_folder(tmp_path):
    from PIL import Image

    for label, colour in enumerate(["red", "blue"]):
        (tmp_path / colour).mkdir()
        for i in range(3):
            Image.new("RGB", (40, 30), colour).save(tmp_path / colour / f"{i}.png")
    data = build_data(profile(source="imagefolder", path=str(tmp_path), image_size=16, calibration_samples=4, heldout_samples=2))
    batch = data.calibration[0]
    assert batch.inputs.shape == (4, 3, 16, 16) and data.has_labels
    red = torch.tensor([(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0 - 0.406) / 0.225])
    for image, label in zip(batch.inputs, batch.labels):  # ImageNet normalisation of a plain colour
        if label == 1:  # folders are sorted: blue = 0, red = 1
            assert torch.allclose(image[:, 8, 8], red, atol=1e-5)
    with pytest.raises(DataError, match="not an image folder"):
        build_data(profile(source="imagefolder", path=str(tmp_path / "missing")))


def test_model_source_needs_a_python_model():
    with pytest.raises(DataError, match="data.source 'model' needs model.source 'python'"):
        build_data(profile(source="model"))


def _decoded(tokenizer, batches) -> list[str]:
    return [tokenizer.decode(ids, skip_special_tokens=True) for batch in batches for ids in batch.inputs["input_ids"]]


def test_heldout_path_replaces_the_heldout_split(tmp_path, tokenizer):
    source = tmp_path / "calibration.txt"
    source.write_text("alpha one\nbeta two\ngamma three\n")
    heldout = tmp_path / "mine.txt"
    heldout.write_text("my first line\n\nmy second line\nmy first line\nmy third line\n")
    settings = dict(source="text", path=str(source), calibration_samples=3, heldout_samples=2, seq_len=8, heldout_path=str(heldout))
    data = build_data(profile(**settings), tokenizer)
    # all three source lines calibrate (no held-out split is taken from the source), the held-out
    # set is the file's first two distinct lines, in order
    assert sorted(_decoded(tokenizer, data.calibration)) == ["alpha one", "beta two", "gamma three"]
    assert _decoded(tokenizer, data.heldout) == ["my first line", "my second line"]


def test_heldout_text_that_is_also_calibration_text_is_refused(tmp_path, tokenizer):
    source = tmp_path / "calibration.txt"
    source.write_text("alpha one\nbeta two\n")
    heldout = tmp_path / "mine.txt"
    heldout.write_text("beta two\nunseen line\n")
    settings = dict(source="text", path=str(source), calibration_samples=2, heldout_samples=2, seq_len=8, heldout_path=str(heldout))
    with pytest.raises(DataError, match=r"data.heldout_path '.*mine.txt': 1 held-out sample\(s\) are also calibration samples, e.g. 'beta two'"):
        build_data(profile(**settings), tokenizer)
    with pytest.raises(DataError, match="data.heldout_path '.*absent.txt': cannot read"):
        build_data(profile(**{**settings, "heldout_path": str(tmp_path / "absent.txt")}), tokenizer)


def test_reconstruction_samples_extend_the_calibration_set_for_the_database_only(tokenizer):
    base = dict(calibration_samples=3, heldout_samples=2, batch_size=2, seq_len=8)
    plain = build_data(profile(**base), tokenizer)
    wide = build_data(profile(**base, reconstruction_samples=7), tokenizer)
    ids = lambda batches: [row.tolist() for batch in batches for row in batch.inputs["input_ids"]]  # noqa: E731
    # the search's calibration set and the held-out set are unchanged; the database sees 7 samples,
    # the calibration ones first, in batches of 2 (3 = 2 + 1, then 4 = 2 + 2)
    assert ids(wide.calibration) == ids(plain.calibration) and ids(wide.heldout) == ids(plain.heldout)
    assert [len(batch) for batch in wide.calibration] == [2, 1] and [len(batch) for batch in wide.extra] == [2, 2]
    assert ids(wide.reconstruction)[:3] == ids(plain.calibration) and len(ids(wide.reconstruction)) == 7
    assert not set(map(tuple, ids(wide.reconstruction))) & set(map(tuple, ids(wide.heldout)))
    assert plain.extra == [] and plain.reconstruction == plain.calibration
    with pytest.raises(DataError, match=r"data.reconstruction_samples = 300 takes that many calibration samples"):
        build_data(from_dict({"model": {"source": "digits"}, "data": {"source": "digits", "reconstruction_samples": 300}}))
