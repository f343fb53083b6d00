"""Exactness of the fast evaluation on the real MiniLM: reuse and early abandon change nothing."""

import math
from types import SimpleNamespace

import pytest
import torch

from engine.core.profile import from_dict
from engine.model.sources import load_model, trace_layers
from engine.model.reuse import find_units
from engine.search.scoring import ModelScorer

LEVELS = ["0.0000", "0.5000", "0.9000"]
SENTENCES = [
    "Return the number of items in a container.", "Open the file and return a stream.",
    "Raise an error if the key is missing.", "Sort the list in place, stably.",
    "Convert the string to lower case.", "Join the path components with the separator.",
    "Compute the greatest common divisor.", "Read at most n bytes from the socket.",
]


class MagnitudeStitcher:
    """Test double of the database stitcher: magnitude-pruned weights swapped in by pointer."""

    def __init__(self, model, names):
        self.modules = {name: model.get_submodule(name) for name in names}
        self.dense = {name: module.weight.data for name, module in self.modules.items()}
        self.pruned = {}
        for name, weight in self.dense.items():
            order = weight.abs().flatten().argsort()
            for level in LEVELS:
                pruned = weight.clone().flatten()
                pruned[order[: round(weight.numel() * float(level))]] = 0
                self.pruned[name, level] = pruned.view_as(weight)

    def apply(self, levels):
        for name, level in levels.items():
            self.modules[name].weight.data = self.pruned[name, level]

    def restore(self):
        for name, module in self.modules.items():
            module.weight.data = self.dense[name]


def cosine_loss(output, dense, _labels):
    return (1 - torch.nn.functional.cosine_similarity(output, dense, dim=-1)).mean()


@pytest.fixture(scope="module")
def minilm():
    loaded = load_model(from_dict({}))
    tokenize = lambda texts: dict(loaded.tokenizer(texts, padding="max_length", max_length=24, truncation=True, return_tensors="pt"))
    batches = [SimpleNamespace(inputs=tokenize(SENTENCES[i : i + 4]), labels=None) for i in (0, 4)]
    loaded.layers = trace_layers(loaded, batches[0].inputs)
    return loaded, batches


def make_scorer(minilm, **flags):
    loaded, batches = minilm
    names = loaded.layer_names
    return ModelScorer(loaded, batches, cosine_loss, MagnitudeStitcher(loaded.model, names), names, **flags), names


def test_units_are_the_transformer_blocks(minilm):
    loaded, _ = minilm
    assert find_units(loaded.model, loaded.layer_names) == [f"encoder.layer.{i}" for i in range(6)]


def test_reuse_is_bit_identical_to_a_full_forward(minilm):
    scorer, names = make_scorer(minilm, early_abandon=False)
    reference = ["0.5000"] * len(names)
    (reference_loss,) = scorer.score([reference], math.inf)
    scorer.accept(reference)
    for changed_layer in (0, 7, 20, 35):
        candidate = list(reference)
        candidate[changed_layer] = "0.9000"
        units_before = scorer.forward_units
        (fast,) = scorer.score([candidate], math.inf)
        computed = scorer.forward_units - units_before
        assert computed == 2 * (6 - changed_layer // 6)  # 2 batches, from the changed block on
        assert fast == scorer.loss(candidate)  # exactly equal, not approximately
    assert reference_loss == scorer.loss(reference)
    assert scorer.loss(["0.0000"] * len(names)) < 1e-6  # the dense model against itself


def test_early_abandon_only_drops_candidates_that_cannot_win(minilm):
    scorer, names = make_scorer(minilm, reuse_activations=False)
    allocation = ["0.9000"] * len(names)
    exact = scorer.loss(allocation)
    assert scorer.score([allocation], exact * 1.5) == [exact]
    assert scorer.score([allocation], exact) == [math.inf]  # equal can never be a strict improvement
    assert scorer.score([allocation], exact * 0.1) == [math.inf]


def test_reference_recomputed_when_accepting_an_unscored_allocation(minilm):
    scorer, names = make_scorer(minilm, early_abandon=False)
    reference = ["0.9000"] * 6 + ["0.0000"] * (len(names) - 6)
    scorer.accept(reference)  # e.g. evaluated by another worker
    candidate = list(reference)
    candidate[30] = "0.5000"
    (fast,) = scorer.score([candidate], math.inf)
    assert fast == scorer.loss(candidate)


def test_trimmed_batches_give_the_same_per_sample_outputs(minilm):
    from engine.model.data import Batch, trimmed_by_length

    loaded, batches = minilm
    padded = [Batch(batch.inputs) for batch in batches]
    trimmed = trimmed_by_length(padded)
    assert [len(batch) for batch in trimmed] == [4, 4]
    lengths = [batch.inputs["attention_mask"].sum(1) for batch in trimmed]
    # Shortest first, and every batch is cut to exactly its longest sample.
    assert lengths[0].max() <= lengths[1].min()
    assert [batch.inputs["input_ids"].shape[1] for batch in trimmed] == [int(length.max()) for length in lengths]
    assert max(int(length.max()) for length in lengths) < 24
    with torch.no_grad():
        full = torch.cat([loaded.run(batch.inputs) for batch in padded])
        short = torch.cat([loaded.run(batch.inputs) for batch in trimmed])
    ids = torch.cat([batch.inputs["input_ids"] for batch in padded])
    for row, sample in enumerate(row_ids for batch in trimmed for row_ids in batch.inputs["input_ids"]):
        match = [i for i in range(len(ids)) if torch.equal(ids[i, : len(sample)], sample) and ids[i, len(sample) :].eq(0).all()]
        assert len(match) == 1
        torch.testing.assert_close(short[row], full[match[0]], rtol=1e-5, atol=1e-5)


def test_trimming_leaves_untokenised_inputs_alone():
    from engine.model.data import Batch, trimmed_by_length

    batches = [Batch(torch.ones(2, 3)), Batch(torch.zeros(2, 3))]
    assert trimmed_by_length(batches) is batches
