"""The samples `spdy finetune` trains on: the profile's data without its held-out samples, or a file.

Sources: the digits ``train`` split (data.source "digits"); the text corpus (stdlib-docstrings, or
the profile's text file) tokenised like the calibration data, with every sentence whose tokens
equal a held-out sample's dropped; or ``--data FILE``: a text file (one sample per line) or a
tensor file (``engine.data.read_tensor_file``: .safetensors / .pt / .npy with ``inputs`` or the
model's keyword inputs, optional ``labels``).  ``train_samples`` takes a seeded subset;
``add_docstrings`` then adds that many seeded sentences of the installed packages' docstrings
(``engine.model.corpus.package_sentences``) to a text model's samples: distillation needs no
labels, and more distinct text moved MiniLM's held-out p10 cosine up 0.007 and its neighbour recall
up 0.01 at the same number of steps (docs/results.md).
Also what is computed on those samples and the held-out ones: the dense teacher's outputs
(computed once, kept in a file) and the held-out metrics of a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from engine.core import atomic
from engine.core.digest import digest
from engine.model.data import (
    TENSOR_FILE_ERRORS,
    TENSOR_SUFFIXES,
    DataError,
    digits_split,
    length_order,
    read_tensor_file,
    text_lines,
)
from engine.model.corpus import package_sentences, stdlib_sentences
from engine.model.losses import heldout_metrics
from engine.core.errors import RunError


LENGTH_GROUP = 64  # batches per length-sorted group of ``epoch_batches``


@dataclass
class TrainingSet:
    inputs: torch.Tensor | dict[str, torch.Tensor]  # first dimension = samples
    labels: torch.Tensor | None

    def __len__(self) -> int:
        first = next(iter(self.inputs.values())) if isinstance(self.inputs, dict) else self.inputs
        return int(first.shape[0])

    def subset(self, index: torch.Tensor) -> TrainingSet:
        inputs = {k: v[index] for k, v in self.inputs.items()} if isinstance(self.inputs, dict) else self.inputs[index]
        return TrainingSet(inputs, None if self.labels is None else self.labels[index])

    def joined(self, other: TrainingSet) -> TrainingSet:
        """This set's samples followed by ``other``'s (same inputs, both with or both without labels)."""
        if isinstance(self.inputs, dict):
            inputs = {key: torch.cat([value, other.inputs[key]]) for key, value in self.inputs.items()}
        else:
            inputs = torch.cat([self.inputs, other.inputs])
        return TrainingSet(inputs, None if self.labels is None else torch.cat([self.labels, other.labels]))

    def fingerprint(self) -> str:
        """SHA-256 of the samples' inputs (``engine.core.digest``: dtype, shape and bytes per tensor)."""
        return digest(self.inputs)

    def lengths(self) -> torch.Tensor | None:
        """Each sample's number of real tokens (token inputs with an attention mask), else None."""
        if isinstance(self.inputs, dict) and "attention_mask" in self.inputs:
            return self.inputs["attention_mask"].sum(dim=1)
        return None

    def in_length_order(self, batch_size: int) -> list[torch.Tensor]:
        """Batches of sample indices, shortest samples first (a one-time pass over the data: each
        batch cut to about its own length); in sample order for inputs without token lengths."""
        lengths = self.lengths()
        order = torch.arange(len(self)) if lengths is None else length_order(lengths)
        return list(order.split(batch_size))

    def batch(self, index: torch.Tensor):
        """The inputs of samples ``index``; token inputs cut to the batch's longest sample."""
        chunk = self.subset(index).inputs
        if isinstance(chunk, dict) and "attention_mask" in chunk:
            longest = max(int(chunk["attention_mask"].sum(dim=1).max()), 1)
            chunk = {key: value[:, :longest].contiguous() for key, value in chunk.items()}
        return chunk


def in_sample_order(outputs: torch.Tensor, batches: list[torch.Tensor]) -> torch.Tensor:
    """Outputs computed batch after batch over ``batches`` (sample indices, e.g. ``in_length_order``'s),
    concatenated, put back in sample order."""
    ordered = torch.empty_like(outputs)
    ordered[torch.cat(batches)] = outputs
    return ordered


def epoch_batches(train: TrainingSet, batch_size: int, seed: int, by_length: bool) -> list[torch.Tensor]:
    """One epoch's batches of sample indices, drawn from ``seed`` alone.

    A random permutation cut into batches of ``batch_size``; with ``by_length`` (token inputs only) the
    permutation is first cut into groups of LENGTH_GROUP batches, each group sorted by sentence length
    (ties in permutation order) and cut into batches, and the batches are shuffled.  Each batch is then
    cut to about its own sentences' length instead of the longest of a random draw (docstrings: 22
    tokens per sentence, 55 per random batch of 32, 22.5 per grouped one).
    """
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train), generator=generator)
    lengths = train.lengths() if by_length else None
    if lengths is None:
        return list(order.split(batch_size))
    batches = []
    for group in order.split(batch_size * LENGTH_GROUP):
        batches += group[length_order(lengths[group])].split(batch_size)
    return [batches[i] for i in torch.randperm(len(batches), generator=generator)]


def _token_rows(inputs: dict[str, torch.Tensor]) -> list[tuple[int, ...]]:
    """Each sample's real tokens (input ids up to its length)."""
    lengths = inputs["attention_mask"].sum(dim=1).tolist()
    return [tuple(row[: int(length)]) for row, length in zip(inputs["input_ids"].tolist(), lengths)]


def _heldout_token_rows(data) -> set[tuple[int, ...]]:
    is_text = data.heldout and isinstance(data.heldout[0].inputs, dict)
    return {row for batch in data.heldout for row in _token_rows(batch.inputs)} if is_text else set()


def _tokenised(texts: list[str], loaded, data, profile, what: str, excluded: set[tuple[int, ...]] = frozenset()) -> TrainingSet:
    """``texts`` as token inputs at data.seq_len, without those equal to a held-out sample or in ``excluded``."""
    if loaded.tokenizer is None:
        raise RunError(f"{what} is text, but model.source {profile.model.source!r} has no tokenizer")
    encoded = dict(loaded.tokenizer(texts, padding="max_length", truncation=True, max_length=profile.data.seq_len,
                                    return_tensors="pt"))
    dropped = _heldout_token_rows(data) | excluded
    keep = [i for i, row in enumerate(_token_rows(encoded)) if row not in dropped]
    return TrainingSet(encoded, None).subset(torch.tensor(keep, dtype=torch.long))


def _added_docstrings(count: int, train: TrainingSet, profile, loaded, data) -> TrainingSet:
    """``count`` sentences of ``package_sentences`` in a seeded order, skipping any whose tokens equal a
    training or held-out sample's (fewer where the packages hold fewer)."""
    what = "--add-docstrings"
    if not isinstance(train.inputs, dict) or "input_ids" not in train.inputs:
        raise RunError(f"{what}: the training data is not text (token inputs); extra text is for text models")
    sentences = package_sentences()
    if not sentences:
        raise RunError(f"{what}: found no docstrings in this Python's installed packages")
    order = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(profile.run.seed)).tolist()
    excluded, added, start = set(_token_rows(train.inputs)), None, 0
    while start < len(order) and (missing := count - (0 if added is None else len(added))) > 0:
        drawn = [sentences[i] for i in order[start: start + missing + missing // 10 + 100]]  # a margin for repeats
        start += len(drawn)
        more = _tokenised(drawn, loaded, data, profile, what, excluded)
        more = more.subset(torch.arange(min(missing, len(more))))
        excluded |= set(_token_rows(more.inputs))
        added = more if added is None else added.joined(more)
    shape = {key: tuple(value.shape[1:]) for key, value in train.inputs.items()}
    if shape != {key: tuple(value.shape[1:]) for key, value in added.inputs.items()}:
        raise RunError(f"{what}: the training data's inputs ({shape}) are not what the tokenizer makes at data.seq_len "
                       f"= {profile.data.seq_len}; pass the extra text in a text --data file instead")
    return added


def _source(profile, chosen: str | None, loaded, data) -> TrainingSet:
    if chosen:
        path = Path(chosen)
        if not path.exists():
            raise RunError(f"--data {path}: no such file")
        if path.suffix in TENSOR_SUFFIXES:
            return TrainingSet(*read_tensor_file(path, f"--data {path}"))
        return _tokenised(text_lines(path, f"--data {path}"), loaded, data, profile, f"--data {path}")
    if profile.data.source == "digits":
        return TrainingSet(*digits_split(profile.run.seed)["train"])
    if profile.data.source == "stdlib-docstrings":
        return _tokenised(list(stdlib_sentences()), loaded, data, profile, "the stdlib-docstrings corpus")
    if profile.data.source == "text":
        what = f"data.path {profile.data.path!r}"
        return _tokenised(text_lines(profile.data.path, what), loaded, data, profile, what)
    raise RunError(
        f"data.source {profile.data.source!r} has no training split: pass --data FILE "
        "(a text file, one sample per line, or a .safetensors/.pt/.npy file with inputs and labels)"
    )


def training_set(profile, settings: dict, loaded, data) -> TrainingSet:
    """The training samples (see the module docstring) of a fine-tuning's ``settings``: its ``data``, a
    seeded subset of ``train_samples`` (0: all), then ``add_docstrings`` package sentences (0: none)."""
    train_samples, added = settings.get("train_samples") or 0, settings.get("add_docstrings") or 0
    try:
        train = _source(profile, settings.get("data") or None, loaded, data)
    except DataError as exc:
        raise RunError(str(exc)) from None
    if train_samples and train_samples < len(train):
        generator = torch.Generator().manual_seed(profile.run.seed)
        train = train.subset(torch.randperm(len(train), generator=generator)[:train_samples].sort().values)
    if len(train) == 0:
        raise RunError("no training samples left (every one is a held-out sample?)")
    return train.joined(_added_docstrings(added, train, profile, loaded, data)) if added else train


# ---------------------------------------------------------------------------- outputs on the data
def model_outputs(loaded, model, batches) -> torch.Tensor:
    """``model``'s outputs on ``batches`` (inputs), concatenated, in eval mode without gradients."""
    model.eval()
    with torch.no_grad():
        return torch.cat([loaded.run_model(model, inputs) for inputs in batches])


def teacher_outputs(path: Path, loaded, train: TrainingSet, batch_size: int, computed: torch.Tensor | None = None) -> torch.Tensor:
    """The dense model's fp32 outputs on every training sample, computed once and kept at ``path``
    (``teacher.safetensors``, with the fingerprint of the samples they belong to), so a resumed run
    distils to the very same targets; a file of other samples (e.g. ``--add-docstrings`` drawn from
    since-changed packages) is recomputed.  ``computed``: those outputs from a pass already made
    (``hidden.DenseStates`` in fp32), used unless the file holds them."""
    fingerprint = train.fingerprint()
    if path.exists():
        try:
            with safe_open(str(path), framework="pt") as stored:
                if (stored.metadata() or {}).get("samples") == fingerprint:
                    return stored.get_tensor("outputs")
        except (*TENSOR_FILE_ERRORS, KeyError):
            pass  # a damaged file is recomputed, never trusted
    if computed is not None and len(computed) == len(train):
        teacher = computed
    else:
        batches = train.in_length_order(batch_size)
        teacher = in_sample_order(model_outputs(loaded, loaded.model, (train.batch(chunk) for chunk in batches)), batches)
    atomic.write_bytes(path, safetensors_bytes({"outputs": teacher.contiguous()}, metadata={"samples": fingerprint}))
    return teacher


def heldout(loaded, data, model, dense: torch.Tensor) -> dict[str, float]:
    """``engine.losses.heldout_metrics`` of ``model`` on the held-out batches (``dense``: the dense outputs)."""
    labels = torch.cat([batch.labels for batch in data.heldout]) if data.has_labels else None
    return heldout_metrics(loaded.task, model_outputs(loaded, model, [b.inputs for b in data.heldout]), dense, labels)
