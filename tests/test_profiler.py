"""The CPU profiler on a real model (the digits network, our kernels, oneDNN), both ways of timing."""

from types import SimpleNamespace

import pytest
import torch

from engine.core.grid import DENSE
from engine.model.sources import LoadedModel, digits_cnn, trace_layers
from engine.backends import get_backend
from engine.timing.cpu import profile_cpu

LEVELS = [DENSE, "0.9000"]


def digits(seed: int = 0):
    torch.manual_seed(seed)
    loaded = LoadedModel(digits_cnn().eval(), "classifier")  # untrained: a kernel's time does not depend on the values
    x = torch.randn(32, 1, 8, 8)
    loaded.layers = trace_layers(loaded, x)
    return loaded, x


def hardware(layer_timing: str) -> SimpleNamespace:
    return SimpleNamespace(threads=1, warmup=1, repeats=3, max_spread=float("inf"), layer_timing=layer_timing, backend="cpu",
                           batch_size=32, dtype="float32")


@pytest.mark.parametrize("layer_timing", ["alone", "in-model"])
def test_profile_cpu_measures_a_consistent_table(layer_timing):
    loaded, x = digits()
    events = []
    table = profile_cpu(loaded, x, loaded.layers, LEVELS, hardware(layer_timing), lambda *event: events.append(event), seed=0)
    assert table.names == ["conv1", "fc1", "fc2", "fc3"] and table.backend == "cpu"
    assert table.dense_baseline in table.environment["end_to_end"]
    assert all(row.levels == tuple(LEVELS) and min(row.seconds) > 0 for row in table.layers)
    assert table.prunable == pytest.approx(sum(row.dense_seconds for row in table.layers))
    # the layers' medians and the end-to-end median are separate samples: on this ~1 ms model,
    # three rounds on a busy machine can put the sum above the whole (the table then says so)
    assert 0 < table.prunable and 0 < table.base
    assert (table.prunable > table.base) == any("more than the dense model" in w for w in table.warnings)
    assert table.environment["layer_timing"] == layer_timing
    samples = 3 if layer_timing == "in-model" else 1  # in-model: one event per sample
    assert len(events) == samples * len(table.names) * len(LEVELS)
    assert [event[3] for event in events] == list(range(1, len(events) + 1)) and events[-1][4] == len(events)
    if layer_timing == "in-model":
        assert table.environment["in_model"]["attempts"] == 1
    else:  # the base is sampled between the layers: ceil(3 repeats / 4 layers) = 1 pass after each
        assert table.environment["base"]["repeats"] == 4 and table.base == table.environment["base"]["median"]


def test_a_table_without_the_dense_level_still_counts_dense_time_as_prunable():
    """Dense is always timed: prunable is the dense layers' time even when dense is not a choice."""
    loaded, x = digits()
    table = profile_cpu(loaded, x, loaded.layers, ["0.9000"], hardware("in-model"), seed=0)
    assert all(row.levels == ("0.9000",) for row in table.layers)
    assert table.prunable != pytest.approx(sum(row.seconds[0] for row in table.layers), rel=0.05)  # not the 90% times
    assert 0 < table.prunable < 2 * table.base


def test_the_fingerprint_tells_the_ways_of_timing_and_kernel_versions_apart(monkeypatch):
    loaded, x = digits()
    shapes = {layer.name: list(layer.input_shape) for layer in loaded.layers}
    environment = {"cpu": "x", "torch": "2"}
    alone, in_model = (get_backend("cpu").fingerprint(environment, hardware(mode), shapes, LEVELS) for mode in ("alone", "in-model"))
    assert alone != in_model
    monkeypatch.setattr("engine.backends.cpu.KERNEL_VERSION", -1)
    assert get_backend("cpu").fingerprint(environment, hardware("alone"), shapes, LEVELS) != alone
