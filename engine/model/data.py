"""Calibration and held-out data: built once per run from the profile's [data] section.

A source's samples are shuffled with ``run.seed``; the first ``data.calibration_samples`` form
the calibration set and the last ``data.heldout_samples`` the held-out set, so the two are
disjoint and the held-out set does not move when the calibration size changes.  Both are cut
into batches of ``data.batch_size``.

``data.reconstruction_samples`` (when larger) extends the calibration set for the database's
Hessians only: the first ``calibration_samples`` of it are what the search scores on, and the rest
is ``Data.extra``; held-out samples never move.

Sources: ``stdlib-docstrings`` (the default offline corpus: sentences from the docstrings of the
Python standard library), ``text`` (a file, one sample per line; blank and repeated lines
dropped), ``imagefolder`` (torchvision ``ImageFolder``, ImageNet preprocessing), ``tensors``
(.pt / .npy / .safetensors), ``digits`` (scikit-learn's 8x8 digits in the fixed seeded
train / calibration / held-out split the digits model is trained on; the first samples of each
part are taken) and ``model`` (the batches a ``model.source = "python"`` function supplies, taken
in order).  Text is tokenised by the model's own tokenizer to ``data.seq_len`` tokens.
"""

from __future__ import annotations

import pickle
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors import SafetensorError

from engine.core.profile import Profile
from engine.model.corpus import normalise, stdlib_sentences

Inputs = torch.Tensor | dict[str, torch.Tensor]
# What torch.load / numpy.load / safetensors raise on a missing, truncated or foreign file.
TENSOR_FILE_ERRORS = (OSError, ValueError, RuntimeError, pickle.UnpicklingError, SafetensorError)


class DataError(ValueError):
    """The profile's data cannot be built; the message names the key or the file."""


@dataclass
class Batch:
    inputs: Inputs  # a tensor, or a dict of tensors (tokenised text), first dimension = samples
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        first = next(iter(self.inputs.values())) if isinstance(self.inputs, dict) else self.inputs
        return int(first.shape[0])


@dataclass
class Data:
    calibration: list[Batch]
    heldout: list[Batch]
    extra: list[Batch] = field(default_factory=list)  # reconstruction samples beyond the calibration set

    @property
    def has_labels(self) -> bool:
        return all(batch.labels is not None for batch in self.calibration + self.heldout)

    @property
    def reconstruction(self) -> list[Batch]:
        """What the database's Hessians see: the calibration samples, then ``extra``
        (``data.reconstruction_samples`` in all; the search scores on the calibration samples only)."""
        return self.calibration + self.extra


# ---------------------------------------------------------------------------- splitting
def _select(inputs: Inputs, index: Sequence[int]) -> Inputs:
    index = torch.as_tensor(list(index), dtype=torch.long)
    if isinstance(inputs, dict):
        return {key: value[index] for key, value in inputs.items()}
    return inputs[index]


def _batches(inputs: Inputs, labels: torch.Tensor | None, index: Sequence[int], batch_size: int) -> list[Batch]:
    """The samples ``index`` (in that order) cut into batches of ``batch_size``."""
    batches = []
    for start in range(0, len(index), batch_size):
        chunk = index[start : start + batch_size]
        batches.append(Batch(_select(inputs, chunk), None if labels is None else _select(labels, chunk)))
    return batches


def split_indices(count: int, profile: Profile, what: str) -> tuple[list[int], list[int]]:
    """Seeded shuffle of ``range(count)``: calibration from the front, held-out from the back."""
    calibration, heldout = profile.data.calibration_samples, profile.data.heldout_samples
    if calibration + heldout > count:
        raise DataError(
            f"{what} has {count} samples, fewer than data.calibration_samples ({calibration}) "
            f"+ data.heldout_samples ({heldout})"
        )
    order = list(range(count))
    random.Random(profile.run.seed).shuffle(order)
    return order[:calibration], order[count - heldout :]


def _split(inputs: Inputs, labels: torch.Tensor | None, profile: Profile, what: str) -> Data:
    count = len(Batch(inputs))
    calibration, heldout = split_indices(count, profile, what)
    size = profile.data.batch_size
    return Data(_batches(inputs, labels, calibration, size), _batches(inputs, labels, heldout, size))


# ---------------------------------------------------------------------------- text
def text_lines(path: str | Path, what: str) -> list[str]:
    """The distinct non-blank lines of a text file, whitespace normalised; ``what`` names the file in errors."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{what}: cannot read the text file: {exc}") from None
    return list(dict.fromkeys(line for line in map(normalise, text.splitlines()) if line))


def _tokenised(samples: Sequence[str], tokenizer: Any, profile: Profile, what: str) -> Data:
    """Calibration and held-out text tokenised; the held-out text is ``data.heldout_path``'s lines when
    given (else the source's seeded held-out split), and never shares a sample with the calibration text."""
    if tokenizer is None:
        raise DataError(f"data.source {profile.data.source!r} is text, but model.source {profile.model.source!r} has no tokenizer")
    heldout_path = profile.data.heldout_path
    if heldout_path:
        calibration_only = replace(profile, data=replace(profile.data, heldout_samples=0))
        calibration, _ = split_indices(len(samples), calibration_only, what)
        calibration_text = [samples[i] for i in calibration]
        what_heldout = f"data.heldout_path {heldout_path!r}"
        heldout_text = text_lines(heldout_path, what_heldout)[: profile.data.heldout_samples]
    else:
        calibration, heldout = split_indices(len(samples), profile, what)
        calibration_text, heldout_text = [samples[i] for i in calibration], [samples[i] for i in heldout]
        what_heldout = f"the held-out split of {what}"
    shared = set(calibration_text).intersection(heldout_text)
    if shared:
        raise DataError(
            f"{what_heldout}: {len(shared)} held-out sample(s) are also calibration samples, e.g. {min(shared)[:80]!r}; "
            "held-out text must be unseen (remove those lines)"
        )

    def encode(texts: list[str]) -> list[Batch]:
        if not texts:
            return []
        encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=profile.data.seq_len, return_tensors="pt")
        return _batches(dict(encoded), None, range(len(texts)), profile.data.batch_size)

    return Data(encode(calibration_text), encode(heldout_text))


def length_order(lengths: torch.Tensor) -> torch.Tensor:
    """The positions of ``lengths`` shortest first, ties in position order (a stable sort)."""
    return torch.sort(lengths, stable=True).indices


def trimmed_by_length(batches: list[Batch]) -> list[Batch]:
    """The same text samples regrouped shortest first, each batch cut to its longest sample.

    With padding on the right and the attention mask excluding padded keys (and the mean pooling
    excluding padded tokens), a real token's output does not depend on how much padding follows,
    so every sample's output, and with it a per-sample loss, is unchanged up to float rounding.
    Batch sizes are kept in order, so with equal batch sizes the mean of per-batch means is still
    the mean over all samples.  Short batches come first, which also lets early abandon stop a
    hopeless candidate after the cheapest work.  Inputs without an ``attention_mask`` are returned
    as they are.
    """
    if not batches or not isinstance(batches[0].inputs, dict) or "attention_mask" not in batches[0].inputs:
        return batches
    inputs = {key: torch.cat([batch.inputs[key] for batch in batches]) for key in batches[0].inputs}
    labels = None if batches[0].labels is None else torch.cat([batch.labels for batch in batches])
    lengths = inputs["attention_mask"].sum(dim=1)
    order = length_order(lengths).tolist()
    regrouped, start = [], 0
    for batch in batches:
        index = order[start : start + len(batch)]
        start += len(batch)
        longest = max(int(lengths[i]) for i in index)
        chunk = {key: value[:, :longest].contiguous() for key, value in _select(inputs, index).items()}
        regrouped.append(Batch(chunk, None if labels is None else _select(labels, index)))
    return regrouped


# ---------------------------------------------------------------------------- images and tensors
DIGITS_CALIBRATION = 285
DIGITS_HELDOUT = 512


def digits_split(seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """scikit-learn's 1797 digits as (images N x 1 x 8 x 8 in [0, 1], labels), split by ``seed``
    into ``train`` (1000), ``calibration`` (285) and ``heldout`` (512)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    train_end = len(labels) - DIGITS_CALIBRATION - DIGITS_HELDOUT
    parts = {"train": order[:train_end], "calibration": order[train_end:-DIGITS_HELDOUT], "heldout": order[-DIGITS_HELDOUT:]}
    return {name: (images[index], labels[index]) for name, index in parts.items()}


def _first(inputs: Inputs, labels: torch.Tensor | None, profile: Profile, part: str, what: str) -> list[Batch]:
    """The first ``data.<part>_samples`` of an already split part, in batches."""
    key = f"{part}_samples"
    wanted, available = getattr(profile.data, key), len(Batch(inputs))
    if wanted > available:
        raise DataError(f"data.{key} = {wanted} exceeds the {available} {part} samples of {what}")
    return _batches(inputs, labels, range(wanted), profile.data.batch_size)


def _digits(profile: Profile) -> Data:
    split = digits_split(profile.run.seed)
    return Data(*(_first(*split[part], profile, part, "the digits split") for part in ("calibration", "heldout")))


def _imagefolder(profile: Profile) -> Data:
    from torchvision import datasets, transforms

    size = profile.data.image_size
    transform = transforms.Compose([
        transforms.Resize(round(size / 0.875)),  # the usual ImageNet evaluation crop ratio
        transforms.CenterCrop(size),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])
    try:
        folder = datasets.ImageFolder(profile.data.path, transform=transform)
    except OSError as exc:
        raise DataError(f"data.path {profile.data.path!r}: not an image folder (one sub-folder per class): {exc}") from None
    calibration, heldout = split_indices(len(folder), profile, f"image folder {profile.data.path!r}")

    def load(index: list[int]) -> list[Batch]:
        if not index:
            return []
        images, labels = zip(*(folder[i] for i in index))
        return _batches(torch.stack(images), torch.tensor(labels), range(len(index)), profile.data.batch_size)

    return Data(load(calibration), load(heldout))


TENSOR_SUFFIXES = (".pt", ".pth", ".npy", ".safetensors")


def read_tensor_file(path: str | Path, what: str) -> tuple[Inputs, torch.Tensor | None]:
    """(inputs, labels) of a tensor file: a single tensor, or named tensors with optional ``labels``
    and either ``inputs`` or the model's keyword inputs (e.g. ``input_ids`` and ``attention_mask``).
    Never unpickles; ``what`` names the file in errors."""
    suffix = Path(path).suffix
    if suffix not in TENSOR_SUFFIXES:
        raise DataError(f"{what}: expected a .pt, .npy or .safetensors file")
    try:
        if suffix == ".npy":
            content: Any = torch.from_numpy(np.load(path, allow_pickle=False))
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            content = load_file(str(path))
        else:
            content = torch.load(path, map_location="cpu", weights_only=True)
    except TENSOR_FILE_ERRORS as exc:
        raise DataError(f"{what}: cannot load tensors: {exc}") from None
    if isinstance(content, torch.Tensor):
        return content, None
    if not isinstance(content, dict) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise DataError(f"{what}: expected a tensor or a dict of tensors")
    content = dict(content)
    labels = content.pop("labels", None)
    inputs = content.pop("inputs", None)
    if inputs is None:
        inputs = next(iter(content.values())) if len(content) == 1 else content
    if not isinstance(inputs, torch.Tensor) and not inputs:
        raise DataError(f"{what}: no input tensors besides 'labels'")
    counts = {len(value) for value in ([inputs] if isinstance(inputs, torch.Tensor) else inputs.values())}
    if len(counts) != 1 or (labels is not None and len(labels) not in counts):
        raise DataError(f"{what}: tensors disagree on the number of samples (first dimension)")
    return inputs, labels


def _tensors(profile: Profile) -> Data:
    path = profile.data.path
    inputs, labels = read_tensor_file(path, f"data.path {path!r}")
    return _split(inputs, labels, profile, f"tensor file {path!r}")


def _from_model(profile: Profile, supplied: tuple[list, list] | None) -> Data:
    what = f"model.python {profile.model.python!r}"
    if supplied is None:
        raise DataError("data.source 'model' needs model.source 'python' with a function that returns calibration and held-out batches")
    parts = []
    for part, batches in zip(("calibration", "heldout"), supplied):
        pairs = [batch if isinstance(batch, tuple) else (batch, None) for batch in batches]
        if any(len(pair) != 2 or not isinstance(pair[0], torch.Tensor) for pair in pairs):
            raise DataError(f"{what}: {part} must be a list of tensors or (inputs, labels) tuples of tensors")
        inputs = torch.cat([inputs for inputs, _ in pairs]) if pairs else torch.empty(0)
        labelled = pairs and all(labels is not None for _, labels in pairs)
        labels = torch.cat([labels for _, labels in pairs]) if labelled else None
        parts.append(_first(inputs, labels, profile, part, what))
    return Data(*parts)


def build_data(profile: Profile, tokenizer: Any = None, supplied: tuple[list, list] | None = None) -> Data:
    """The calibration and held-out batches ``profile.data`` describes.

    ``tokenizer`` is the model's (text sources); ``supplied`` is the (calibration, heldout) batches a
    ``model.source = "python"`` function returned (``data.source = "model"``).
    """
    wanted = max(profile.data.calibration_samples, profile.data.reconstruction_samples)
    if wanted == profile.data.calibration_samples:
        return _source_data(profile, tokenizer, supplied)
    widened = replace(profile, data=replace(profile.data, calibration_samples=wanted))
    try:
        data = _source_data(widened, tokenizer, supplied)
    except DataError as exc:
        raise DataError(f"{exc} (data.reconstruction_samples = {wanted} takes that many calibration samples)") from None
    calibration, extra = _cut(data.calibration, profile.data.calibration_samples, profile.data.batch_size)
    return Data(calibration, data.heldout, extra)


def _cut(batches: list[Batch], first: int, batch_size: int) -> tuple[list[Batch], list[Batch]]:
    """The samples of ``batches`` (in order) as batches of the first ``first`` and batches of the rest."""
    inputs = {key: torch.cat([b.inputs[key] for b in batches]) for key in batches[0].inputs} if isinstance(
        batches[0].inputs, dict) else torch.cat([b.inputs for b in batches])
    labels = None if batches[0].labels is None else torch.cat([b.labels for b in batches])
    count = len(Batch(inputs))
    return _batches(inputs, labels, range(first), batch_size), _batches(inputs, labels, range(first, count), batch_size)


def _source_data(profile: Profile, tokenizer: Any, supplied: tuple[list, list] | None) -> Data:
    source = profile.data.source
    if source == "stdlib-docstrings":
        return _tokenised(stdlib_sentences(), tokenizer, profile, "the stdlib-docstrings corpus")
    if source == "text":
        return _tokenised(text_lines(profile.data.path, f"data.path {profile.data.path!r}"), tokenizer, profile, f"text file {profile.data.path!r}")
    if source == "imagefolder":
        return _imagefolder(profile)
    if source == "digits":
        return _digits(profile)
    if source == "tensors":
        return _tensors(profile)
    return _from_model(profile, supplied)
