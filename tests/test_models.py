"""Model sources: MiniLM offline, Hugging Face classifiers, torchvision, user code, the digits CNN."""

import sys
import textwrap
import urllib.error

import pytest
import torch

from engine.model import sources as models
from engine.core.profile import from_dict, load_profile
from engine.model.losses import heldout_metrics
from engine.model.sources import ModelError, load, load_model, trace_layers

BLOCK = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense", "intermediate.dense", "output.dense"]
SMALL_TEXT = {"calibration_samples": 8, "heldout_samples": 4, "batch_size": 4, "seq_len": 32}


def _images_file(tmp_path, count=4):
    path = tmp_path / "images.pt"
    torch.save({"inputs": torch.randn(count, 3, 64, 64), "labels": torch.arange(count)}, path)
    return str(path)


@pytest.fixture(scope="module")
def minilm():
    return load(from_dict({"data": SMALL_TEXT}))


def test_minilm_layers_in_execution_order(minilm):
    loaded, data = minilm
    assert loaded.task == "encoder"
    assert loaded.layer_names == [f"encoder.layer.{block}.{name}" for block in range(6) for name in BLOCK]
    assert all(layer.kind == "linear" for layer in loaded.layers)
    by_name = {layer.name: layer for layer in loaded.layers}
    assert by_name["encoder.layer.0.attention.self.query"].weight_shape == (384, 384)
    assert by_name["encoder.layer.0.intermediate.dense"].input_shape == (4, 32, 384)
    assert by_name["encoder.layer.5.output.dense"].input_shape == (4, 32, 1536)
    assert len(data.calibration) == 2 and len(data.heldout) == 1 and not data.has_labels


def test_minilm_embeddings_are_real(minilm):
    loaded, _ = minilm
    texts = ["A man is playing a guitar.", "Someone plays an acoustic guitar.", "The stock market fell sharply today."]
    inputs = dict(loaded.tokenizer(texts, padding=True, return_tensors="pt"))
    with torch.no_grad():
        embeddings = loaded.run(inputs)
    assert embeddings.shape == (3, 384)
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(3), atol=1e-5)
    paraphrase, unrelated = embeddings[0] @ embeddings[1], embeddings[0] @ embeddings[2]
    assert paraphrase > 0.5 > unrelated + 0.3


def test_include_exclude_globs(minilm):
    loaded, data = minilm
    chosen = trace_layers(loaded, data.calibration[0].inputs, include=["encoder.layer.0.*"], exclude=["*.attention.self.*"])
    assert [layer.name for layer in chosen] == [f"encoder.layer.0.{name}" for name in BLOCK[3:]]


@pytest.fixture
def untrained_digits(tmp_path, monkeypatch):
    """model.kind = "digits" without the training (for tests about layers and errors)."""
    monkeypatch.setenv("SPDY_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(models, "train_digits_cnn", lambda seed: models.digits_cnn())


def test_no_layer_left_is_a_clear_error(untrained_digits):
    profile = from_dict({"model": {"source": "digits", "exclude": ["conv*", "fc*"]}, "data": {"source": "digits"}})
    with pytest.raises(ModelError, match="no prunable layer .* model.exclude = \\['conv\\*', 'fc\\*'\\]"):
        load(profile)


def test_model_and_data_that_do_not_fit(untrained_digits, tmp_path):
    profile = from_dict({"model": {"source": "digits"}, "data": {"source": "tensors", "path": _images_file(tmp_path), "calibration_samples": 2, "heldout_samples": 0}})
    with pytest.raises(ModelError, match="model.source 'digits' cannot run on data.source 'tensors'"):
        load(profile)


def test_hf_sequence_classifier(tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=3)
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(models.minilm_path()).save_pretrained(tmp_path)
    profile = from_dict({"model": {"source": "hf", "path": str(tmp_path)}, "data": SMALL_TEXT})
    loaded, data = load(profile)
    assert loaded.task == "classifier"
    assert loaded.layer_names[-2:] == ["bert.pooler.dense", "classifier"]
    assert len(loaded.layers) == 2 * 6 + 2
    with torch.no_grad():
        assert loaded.run(data.calibration[0].inputs).shape == (4, 3)


def test_hf_path_must_be_a_model_directory(tmp_path):
    with pytest.raises(ModelError, match="model.path .* is not a directory"):
        load_model(from_dict({"model": {"source": "hf", "path": str(tmp_path / "missing")}}))
    with pytest.raises(ModelError, match="cannot load a Hugging Face model"):
        load_model(from_dict({"model": {"source": "hf", "path": str(tmp_path)}}))


def test_torchvision_weights_from_a_safetensors_file(tmp_path):
    from safetensors.torch import save_file
    from torchvision.models import resnet18

    reference = resnet18().eval()
    save_file(reference.state_dict(), tmp_path / "resnet18.safetensors")
    profile = from_dict({
        "model": {"source": "torchvision", "name": "resnet18", "path": str(tmp_path / "resnet18.safetensors")},
        "data": {"source": "tensors", "path": _images_file(tmp_path), "calibration_samples": 2, "heldout_samples": 2},
    })
    loaded, data = load(profile)
    assert loaded.task == "classifier" and data.has_labels
    assert loaded.layer_names[0] == "conv1" and loaded.layer_names[-1] == "fc" and len(loaded.layers) == 21
    assert loaded.layers[0].input_shape == (2, 3, 64, 64)
    batch = data.calibration[0].inputs
    with torch.no_grad():
        assert torch.equal(loaded.run(batch), reference(batch))


def test_pth_state_dicts_load_without_pickled_code(tmp_path):
    state = {"weight": torch.arange(6.0).view(2, 3), "bias": torch.zeros(2)}
    torch.save(state, tmp_path / "weights.pth")
    loaded = models.load_state_dict_file(str(tmp_path / "weights.pth"))
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[key], state[key]) for key in state)
    torch.save({"weights": state, "note": object()}, tmp_path / "pickled.pth")
    with pytest.raises(ModelError, match="pickled.pth'?: cannot load weights"):
        models.load_state_dict_file(str(tmp_path / "pickled.pth"))


def test_torchvision_without_weights_says_where_to_get_them(tmp_path, monkeypatch):
    from torchvision.models import WeightsEnum

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(ModelError, match=r"https://download\.pytorch\.org/models/resnet18-.*\.pth .* set model\.path"):
        load_model(from_dict({"model": {"source": "torchvision", "name": "resnet18"}}))


def test_torchvision_errors_name_the_key(tmp_path):
    with pytest.raises(ModelError, match="model.name 'resnet0' is not a torchvision classifier"):
        load_model(from_dict({"model": {"source": "torchvision", "name": "resnet0"}}))
    wrong = tmp_path / "wrong.pth"
    torch.save({"weight": torch.zeros(3)}, wrong)
    with pytest.raises(ModelError, match="does not fit model.name 'resnet18'"):
        load_model(from_dict({"model": {"source": "torchvision", "name": "resnet18", "path": str(wrong)}}))


def test_python_model_with_its_own_data(tmp_path, monkeypatch):
    (tmp_path / "user_model.py").write_text(textwrap.dedent("""
        import torch
        from types import SimpleNamespace

        def build(profile):
            torch.manual_seed(profile.run.seed)
            model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
            batches = [(torch.randn(5, 8), torch.randint(0, 4, (5,))) for _ in range(4)]
            return SimpleNamespace(model=model, calibration=batches[:2], heldout=batches[2:], task="classifier")
    """))
    (tmp_path / "profile.toml").write_text(textwrap.dedent("""
        [model]
        source = "python"
        python = "user_model:build"
        [data]
        source = "model"
        calibration_samples = 10
        heldout_samples = 6
        batch_size = 4
    """))
    monkeypatch.setattr(sys, "path", list(sys.path))  # the profile's folder goes on sys.path: undo afterwards
    loaded, data = load(load_profile(tmp_path / "profile.toml"))  # the module beside the profile imports
    assert loaded.layer_names == ["0", "2"] and loaded.layers[1].input_shape == (4, 16)
    assert [len(batch) for batch in data.calibration] == [4, 4, 2] and [len(batch) for batch in data.heldout] == [4, 2]
    assert data.has_labels
    with pytest.raises(ModelError, match="has no function 'missing'"):
        load_model(from_dict({"model": {"source": "python", "python": "user_model:missing"}}))
    with pytest.raises(ModelError, match="must look like 'package.module:function'"):
        load_model(from_dict({"model": {"source": "python", "python": "user_model"}}))


def test_digits_cnn_is_accurate_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SPDY_CACHE_DIR", str(tmp_path))
    profile = from_dict({"run": {"seed": 3}, "model": {"source": "digits"}, "data": {"source": "digits", "heldout_samples": 512}})
    loaded, data = load(profile)
    assert loaded.layer_names == ["conv1", "fc1", "fc2", "fc3"]
    assert [layer.kind for layer in loaded.layers] == ["conv2d"] + ["linear"] * 3
    assert loaded.layers[1].input_shape == (32, 16 * 8 * 8) and loaded.layers[2].weight_shape == (512, 2048)
    with torch.no_grad():
        outputs = torch.cat([loaded.run(batch.inputs) for batch in data.heldout])
    labels = torch.cat([batch.labels for batch in data.heldout])
    assert heldout_metrics("classifier", outputs, outputs, labels)["accuracy"] >= 0.97
    assert [path.name for path in tmp_path.iterdir()] == [f"digits-cnn-v{models.DIGITS_CNN_VERSION}-seed3.safetensors"]

    def no_training(seed):
        raise AssertionError("the cached model should have been used")

    monkeypatch.setattr(models, "train_digits_cnn", no_training)
    cached = load_model(profile).model
    assert all(torch.equal(cached.state_dict()[name], value) for name, value in loaded.model.state_dict().items())


def test_digits_training_is_deterministic():
    threads = torch.get_num_threads()
    first, second, other = (models.train_digits_cnn(seed=seed, epochs=1) for seed in (5, 5, 6))
    assert all(torch.equal(second.state_dict()[name], value) for name, value in first.state_dict().items())
    assert not torch.equal(other.state_dict()["fc3.weight"], first.state_dict()["fc3.weight"])
    assert torch.get_num_threads() == threads  # training runs on one thread, then restores the caller's count
