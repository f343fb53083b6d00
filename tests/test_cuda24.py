"""The GPU 2:4 backend: kernel eligibility, the profiler and verify (on the CPU with stand-in
kernels), and, on an NVIDIA GPU (``-m cuda``; skipped without one), the real kernels against
dense-with-zeros, the CUDA event timer, and profile/verify on MiniLM."""

import copy
from dataclasses import replace
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from engine.core.profile import HardwareConfig
from engine.core.environment import describe_environment
from engine.core.grid import NM, nm_levels
from engine.core.masks import nm_mask, satisfies_nm
from engine.model.sources import LoadedModel, trace_layers
from engine.core.errors import RunError
from engine.runtime.semi24 import (
    SHAPE_MULTIPLES,
    Semi24Error,
    Semi24Kernels,
    Semi24Linear,
    library_failure,
    error_line,
    ineligibility,
    shape_ineligibility,
    unavailable_reason,
)
from engine.backends import get_backend
from engine.backends.cuda24 import build_semi24_model, verify_cuda24
from engine.timing.cuda24 import LEVELS, on_device, profile_cuda24
from engine.timing.table import TimingTable, load_table, save_table
from engine.backends.verify import VerifyError

ROOT = Path(__file__).resolve().parent.parent
TWO_FOUR = NM(2, 4)
NO_GPU = unavailable_reason()
needs_gpu = pytest.mark.skipif(NO_GPU is not None, reason=f"needs an NVIDIA GPU with 2:4 support: {NO_GPU}")


# ---------------------------------------------------------------------------- eligibility (no GPU needed)
def test_shape_rules_are_torchs_own():
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

    classes = {"cusparselt": SparseSemiStructuredTensorCUSPARSELT, "cutlass": SparseSemiStructuredTensorCUTLASS}
    for (backend, dtype), multiples in SHAPE_MULTIPLES.items():
        rule = classes[backend]._DTYPE_SHAPE_CONSTRAINTS[dtype]
        assert (rule.sparse_min_rows, rule.sparse_min_cols) == multiples, (backend, dtype)


def test_ineligibility_names_the_reason():
    half = torch.float16
    for shape in [(384, 384), (1536, 384), (384, 1536), (768, 3072), (3072, 768)]:  # MiniLM and BERT-base
        assert shape_ineligibility(shape, half, "cusparselt") is None and shape_ineligibility(shape, half, "cutlass") is None
    assert shape_ineligibility((48, 96), half, "cusparselt") is None
    assert shape_ineligibility((48, 96), half, "cutlass") == "cutlass needs (out, in) multiples of (32, 64), got (48, 96)"
    assert "float16 or bfloat16, not float32" in shape_ineligibility((64, 64), torch.float32, "cusparselt")
    assert ineligibility(nn.Linear(96, 48), half) is None  # cuSPARSELt can, CUTLASS cannot: eligible
    assert "(32, 64)" in ineligibility(nn.Linear(96, 48), half, ("cutlass",))
    reason = ineligibility(nn.Linear(384, 100), half)
    assert "cusparselt needs (out, in) multiples of (16, 16), got (100, 384)" in reason and "cutlass" in reason
    assert ineligibility(nn.Conv2d(16, 16, 3), half).startswith("Conv2d")
    with pytest.raises(ValueError, match="unknown 2:4 library"):
        shape_ineligibility((16, 16), half, "cublas")
    assert error_line(RuntimeError("CUDA error: architecture mismatch\nmore detail")) == "RuntimeError: CUDA error: architecture mismatch"


def test_no_working_library_means_no_layer_is_eligible():
    assert ineligibility(nn.Linear(384, 384), torch.float16, ()) == "no 2:4 library works here"


@pytest.mark.skipif(NO_GPU is None, reason="checks the behaviour without a GPU")
def test_without_a_gpu_the_kernels_say_why():
    assert "no CUDA device" in NO_GPU
    assert Semi24Kernels(torch.float16).libraries == ()
    assert "no CUDA device" in library_failure("cutlass", torch.float16)
    weight = torch.zeros(16, 16, dtype=torch.float16)
    with pytest.raises(Semi24Error, match="CUDA tensors only"):
        Semi24Linear(weight, None)
    loaded = LoadedModel(nn.Sequential(nn.Linear(16, 16)), "classifier")
    hardware = HardwareConfig(backend="cuda-2:4", dtype="float16")
    with pytest.raises(RunError, match="cannot run here: no CUDA device"):
        profile_cuda24(loaded, torch.zeros(1, 16), [], hardware)


@pytest.mark.skipif(NO_GPU is None, reason="checks the behaviour without a GPU")
def test_benchmark_exits_with_a_clear_message_without_cuda():
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_cuda24.py")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "needs an NVIDIA GPU" in done.stderr and "no CUDA device" in done.stderr


# ---------------------------------------------------------------------------- profiler and verify on the CPU
class StandInKernels:
    """CPU stand-ins for the 2:4 kernels: the dense product with the 2:4 weight (exact), under the
    eligibility rules of cuSPARSELt in float16.  ``skew`` makes the kernel wrong on purpose."""

    def __init__(self, skew: float = 1.0):
        self.skew = skew

    def ineligibility(self, module):
        return ineligibility(module, torch.float16, ("cusparselt",))

    def _kernel(self, module, info):
        kernel = copy.deepcopy(module)
        with torch.no_grad():
            kernel.weight.mul_(self.skew)
        kernel.info = dict(info)
        return kernel

    def candidates(self, module, x):
        assert satisfies_nm(module.weight, TWO_FOUR)  # the profiler hands over the 2:4-pruned layer
        return {"stand-in": self._kernel(module, {"backend": "stand-in", "alg_id": 0})}, {"searched_alg_id": None}

    def build(self, module, info=None):
        assert satisfies_nm(module.weight, TWO_FOUR)
        return self._kernel(module, info or {})


class Log:
    def __init__(self):
        self.events = []

    def emit(self, type, **fields):
        self.events.append({"type": type, **fields})


def small_model():
    """conv (no 2:4 kernel) -> fc1 128 -> 64 (eligible) -> fc2 64 -> 30 (30 is no multiple of 16)."""
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("conv", nn.Conv2d(3, 8, 3, padding=1))
    model.add_module("flat", nn.Flatten())
    model.add_module("fc1", nn.Linear(128, 64))
    model.add_module("act", nn.ReLU())
    model.add_module("fc2", nn.Linear(64, 30))
    loaded = LoadedModel(model.eval(), "classifier")
    inputs = torch.randn(8, 3, 4, 4)
    loaded.layers = trace_layers(loaded, inputs)
    return loaded, inputs


HARDWARE = HardwareConfig(backend="cuda-2:4", dtype="float32", warmup=1, repeats=3)


@pytest.fixture(scope="module")
def profiled():
    loaded, inputs = small_model()
    log = Log()
    table = get_backend("cuda-2:4").profile(loaded, inputs, loaded.layers, LEVELS, HARDWARE, log, 0, device="cpu", kernels=StandInKernels())
    return loaded, inputs, table, log


def test_profiler_rows_levels_and_notes(profiled):
    loaded, _, table, _ = profiled
    assert table.names == ["conv", "fc1", "fc2"] and table.backend == "cuda-2:4"
    assert [layer.levels for layer in table.layers] == [("0.0000",), ("0.0000", "2:4"), ("0.0000",)]
    assert table.layer("conv").note == "dense only: Conv2d: torch's 2:4 kernels cover Linear layers only"
    assert table.layer("fc2").note == "dense only: cusparselt needs (out, in) multiples of (16, 16), got (30, 64)"
    assert table.layer("fc1").note == "2:4 kernel: stand-in"
    kernels = table.environment["kernels"]
    assert list(kernels) == ["fc1"] and kernels["fc1"]["backend"] == "stand-in" and kernels["fc1"]["label"] == "stand-in"
    assert kernels["fc1"]["candidates"]["stand-in"] == table.layer("fc1").seconds_at("2:4")
    assert table.prunable == math.fsum(layer.dense_seconds for layer in table.layers)
    assert table.base == table.environment["end_to_end"]["dense"]["median"] > 0
    assert table.environment["dtype"] == "float32" and table.environment["device"] == "cpu"


def test_profiler_fingerprint_is_what_the_timings_stage_expects(profiled):
    """stage `timings` reuses a table when its fingerprint matches one computed from the profile's levels."""
    loaded, _, table, _ = profiled
    shapes = {layer.name: list(layer.input_shape) for layer in loaded.layers}
    expected = get_backend("cuda-2:4").fingerprint(describe_environment(), HARDWARE, shapes, nm_levels(2, 4, include_dense=True))
    assert LEVELS == nm_levels(2, 4) and table.environment["fingerprint"] == expected
    assert expected != get_backend("cpu").fingerprint(describe_environment(), HardwareConfig(dtype="float32", warmup=1, repeats=3), shapes, LEVELS)


def test_profiler_reports_every_row_as_a_timing_event(profiled):
    _, _, table, log = profiled
    events = [(e["layer"], e["level"], e["seconds"], e["done"], e["total"], e["kernel"]) for e in log.events]
    expected = [
        (layer.name, level, seconds, n, 4, "dense" if level == "0.0000" else "stand-in")
        for n, (layer, level, seconds) in enumerate(
            ((layer, level, seconds) for layer in table.layers for level, seconds in zip(layer.levels, layer.seconds)), start=1
        )
    ]
    assert {e["type"] for e in log.events} == {"timing"} and events == expected


def test_table_with_notes_and_kernels_round_trips(profiled, tmp_path):
    _, _, table, _ = profiled
    save_table(table, tmp_path / "timings.json")
    again = load_table(tmp_path / "timings.json")
    assert again.layers == table.layers and again.layer("fc2").note.startswith("dense only")
    assert again.environment["kernels"] == table.environment["kernels"]


def pruned_final(loaded):
    final = copy.deepcopy(loaded.model)
    with torch.no_grad():
        final.fc1.weight.mul_(nm_mask(final.fc1.weight, TWO_FOUR))
    return final


def test_verify_returns_the_fields_of_the_cpu_verify(profiled):
    from engine.backends.cpu import verify

    loaded, inputs, table, _ = profiled
    final = pruned_final(loaded)
    levels = {"conv": "0.0000", "fc1": "2:4", "fc2": "0.0000"}
    outcome = verify_cuda24(loaded, final, levels, inputs, table, HARDWARE, 1.1, device="cpu", kernels=StandInKernels())
    cpu_table = TimingTable(1.0, 1.0, table.layers, dense_baseline="torch")
    reference = verify(loaded, final, levels, inputs, cpu_table, SimpleNamespace(threads=1, warmup=1, repeats=3, max_spread=0.5), 1.1)
    assert set(outcome) == set(reference)
    assert outcome["predicted"] == 1.1 and outcome["max_abs_difference"] == 0.0  # the stand-in is exact
    assert outcome["measured"] == outcome["dense_seconds"] / outcome["sparse_seconds"]
    assert outcome["dense_baseline"] == table.dense_baseline == "torch-float32"


def test_the_runtime_recorded_for_a_24_run_is_the_one_verify_measured():
    hardware = HardwareConfig(backend="cuda-2:4", dtype="float16", runtime="compiled")
    assert get_backend("cuda-2:4").runtime(hardware) == "eager"
    assert get_backend("cuda-2:4").runtime(replace(hardware, cuda_graphs=True)) == "cuda-graph"
    assert get_backend("cpu").runtime(HardwareConfig(runtime="compiled")) == "compiled"


@pytest.mark.parametrize(
    "levels, prune, message",
    [
        ({"fc1": "0.5000"}, True, "layer fc1: level '0.5000' has no kernel"),
        ({"fc1": "2:4"}, False, "layer fc1 is at 2:4 but its weight is not 2:4"),
        ({"fc2": "2:4"}, True, "layer fc2 is at 2:4 but cannot run 2:4 here: cusparselt needs"),
    ],
)
def test_verify_refuses_what_it_cannot_run(profiled, levels, prune, message):
    loaded, inputs, table, _ = profiled
    final = pruned_final(loaded) if prune else loaded.model
    with pytest.raises(VerifyError, match=message):
        verify_cuda24(loaded, final, levels, inputs, table, HARDWARE, 1.1, device="cpu", kernels=StandInKernels())


def test_verify_catches_a_kernel_that_computes_something_else(profiled):
    loaded, inputs, table, _ = profiled
    with pytest.raises(VerifyError, match="2:4 kernels disagree"):
        verify_cuda24(loaded, pruned_final(loaded), {"fc1": "2:4"}, inputs, table, HARDWARE, 1.1, device="cpu", kernels=StandInKernels(1.01))


# ---------------------------------------------------------------------------- on an NVIDIA GPU
def two_four_linear(inputs, outputs, dtype, bias=True, seed=0):
    generator = torch.Generator().manual_seed(seed)
    linear = nn.Linear(inputs, outputs, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(outputs, inputs, generator=generator) / inputs**0.5)
        linear.weight.mul_(nm_mask(linear.weight, TWO_FOUR))
        if bias:
            linear.bias.copy_(torch.randn(outputs, generator=generator))
    return linear.to(device="cuda", dtype=dtype).eval()


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("library", ["cusparselt", "cutlass"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(384, 1536), (1536, 384), (384, 384)])
def test_semi24_linear_equals_dense_with_zeros(dtype, library, bias, shape):
    failure = library_failure(library, dtype)
    if failure is not None:
        pytest.skip(failure)
    linear = two_four_linear(*shape, dtype, bias)
    kernel = Semi24Linear.from_linear(linear, library)
    x = torch.randn(4, 101, shape[0], device="cuda", dtype=dtype)  # 404 token rows: padded inside torch
    expected, got = linear(x), kernel(x)
    assert got.shape == expected.shape == (4, 101, shape[1]) and got.dtype == dtype
    assert got.stride() == expected.stride()  # the dense layer's layout: a transposed one slows what follows
    assert kernel.to("cuda") is kernel  # Module.to (sentence-transformers' encode) leaves the compressed weight be
    tolerance = 2e-2 if dtype == torch.float16 else 6e-2
    assert (got.float() - expected.float()).abs().max() <= tolerance * expected.float().abs().max()


@pytest.mark.cuda
@needs_gpu
def test_candidates_search_alg_id_and_rebuild():
    kernels = Semi24Kernels(torch.float16)
    linear = two_four_linear(384, 1536, torch.float16)
    x = torch.randn(2048, 384, device="cuda", dtype=torch.float16)
    found, notes = kernels.candidates(linear, x)
    assert kernels.libraries, kernels.library_report()
    assert ("cutlass" in found) == ("cutlass" in kernels.libraries) and "failed" not in notes
    if "cusparselt" in kernels.libraries:
        assert "cusparselt alg 0" in found
        searched = notes["searched_alg_id"]
        assert searched is None or (isinstance(searched, int) and searched >= 0)
        if searched not in (None, 0):
            assert found[f"cusparselt alg {searched}"].info == {"backend": "cusparselt", "alg_id": searched}
    for label, kernel in found.items():
        rebuilt = kernels.build(linear, kernel.info)
        assert rebuilt.label == label and torch.allclose(rebuilt(x), kernel(x), rtol=1e-3, atol=1e-3)
    with pytest.raises(Semi24Error, match="not 2:4"):
        Semi24Linear(torch.ones(64, 64, device="cuda", dtype=torch.float16), None)


@pytest.mark.cuda
@needs_gpu
def test_cuda_event_timer_and_graph_replay():
    from engine.timing.cuda_events import CudaEventTimer, calls_for, estimate_seconds, graphed

    a = torch.randn(2048, 2048, device="cuda", dtype=torch.float16)
    out = {}

    def call():
        out["y"] = a @ a

    one = estimate_seconds(call)
    assert one > 0 and calls_for(one) >= 1
    ten = CudaEventTimer(10)(call)
    assert 0.3 * one < ten < 3 * one  # per call, whatever the calls per sample
    replay = graphed(call)
    replay()
    torch.cuda.synchronize()
    assert torch.allclose(out["y"], a @ a, rtol=1e-3, atol=1e-2)


SENTENCES = [f"The function number {i} reads a file and returns {i % 5} lines of text." for i in range(16)]


@pytest.fixture(scope="module")
def minilm_gpu():
    from engine.core.profile import from_dict
    from engine.model.sources import load_model

    loaded = load_model(from_dict({}))
    inputs = dict(loaded.tokenizer(SENTENCES, padding="max_length", max_length=64, truncation=True, return_tensors="pt"))
    loaded.layers = trace_layers(loaded, inputs)
    return loaded, inputs


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("graphs", [False, True])
def test_profile_and_verify_minilm_on_the_gpu(minilm_gpu, graphs, tmp_path):
    loaded, inputs = minilm_gpu
    hardware = HardwareConfig(backend="cuda-2:4", dtype="float16", batch_size=16, warmup=2, repeats=7, cuda_graphs=graphs)
    log = Log()
    table = profile_cuda24(loaded, inputs, loaded.layers, hardware, log)
    assert table.names == loaded.layer_names and len(table.layers) == 36
    assert all(layer.levels == ("0.0000", "2:4") for layer in table.layers)  # every MiniLM shape runs 2:4
    assert set(table.environment["kernels"]) == set(table.names)
    assert 0 < table.prunable < table.base and table.environment["timer"] == "cuda events"
    save_table(table, tmp_path / "timings.json")
    assert load_table(tmp_path / "timings.json").layers == table.layers

    final = copy.deepcopy(loaded.model)  # the FFN layers at 2:4 whatever their speed: verify must run the kernels
    levels = {name: "2:4" if name.endswith(("intermediate.dense", "output.dense")) and "attention" not in name else "0.0000"
              for name in table.names}
    assert sum(level == "2:4" for level in levels.values()) == 12
    with torch.no_grad():
        for name, level in levels.items():
            if level == "2:4":
                weight = final.get_submodule(name).weight
                weight.mul_(nm_mask(weight, TWO_FOUR))
    predicted = table.base / table.predicted_time([levels[name] for name in table.names])
    outcome = verify_cuda24(loaded, final, levels, inputs, table, hardware, predicted)
    assert outcome["predicted"] == predicted and outcome["measured"] > 0
    assert outcome["dense_seconds"] > 0 and outcome["sparse_seconds"] > 0
    sparse = build_semi24_model(on_device(final, torch.device("cuda"), torch.float16), levels, Semi24Kernels(torch.float16), table.environment["kernels"])
    built = {name: module for name, module in sparse.named_modules() if isinstance(module, Semi24Linear)}
    assert set(built) == {name for name, level in levels.items() if level == "2:4"}
    for name, module in built.items():  # exactly the kernel the profiler found fastest
        recorded = table.environment["kernels"][name]
        assert module.info == {"backend": recorded["backend"], "alg_id": recorded["alg_id"]}
