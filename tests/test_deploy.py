"""engine.deploy: a finished run's model as a drop-in module, on the runtime the run names."""

import json
import re
import shutil
import warnings

import pytest
import torch
from safetensors.torch import save_file

from engine.core.errors import RunError
from engine.core.grid import geometric_levels
from engine.deploy import DeployWarning, environment_differences, load, sentence_transformer
from engine.run.context import RunContext
from engine.timing.table import LayerTimes, TimingTable, save_table

from .test_pipeline import MAGNITUDE_DATABASE, run_cli, write_profile

NO_VERIFY = "verify = false\ntighten_rounds = 3"


def test_eager_load_is_the_pruned_model_on_our_kernels(tmp_path):
    out = tmp_path / "run"
    assert run_cli("run", write_profile(tmp_path, extra=MAGNITUDE_DATABASE, export=NO_VERIFY), "--out", out).exit_code == 0
    ctx = RunContext.from_dir(out)
    model = load(out)
    inputs = ctx.timing_inputs()
    with torch.no_grad():
        got, expected = model(inputs), ctx.final_model(inputs)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert any(type(module).__name__ == "SparseLinear" for module in model.modules())
    with pytest.raises(ValueError, match="runtime must be one of eager, compiled"):
        load(out, runtime="fast")


def test_loading_elsewhere_says_what_differs(tmp_path, monkeypatch):
    recorded = {"cpu": "AMD EPYC", "isa": "avx2", "torch": "2.14.1"}
    assert environment_differences(recorded, {"cpu": "AMD EPYC", "isa": "avx2", "torch": "2.14.1"}) == []
    assert environment_differences(recorded, {"cpu": "Intel Xeon", "isa": "avx2", "torch": "2.14.1"}) == [
        "cpu: measured on 'AMD EPYC', here 'Intel Xeon'"
    ]
    out = tmp_path / "run"
    assert run_cli("run", write_profile(tmp_path, extra=MAGNITUDE_DATABASE, export=NO_VERIFY), "--out", out).exit_code == 0
    monkeypatch.setattr("engine.deploy.environment_differences", lambda recorded: ["cpu: measured on 'x', here 'y'"])
    with pytest.warns(DeployWarning, match="measured on another machine"):
        load(out)


def test_a_directory_that_is_not_a_finished_run_is_refused(tmp_path):
    with pytest.raises(RunError, match="not a finished run directory"):
        load(tmp_path)


# ---------------------------------------------------------------------------- a tiny BERT, compiled
def tiny_bert(folder):
    from transformers import BertConfig, BertModel

    from engine.model.sources import minilm_path

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).eval().save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(f"{minilm_path()}/{name}", folder / name)
    return folder


def tiny_bert_run(tmp_path):
    model = tiny_bert(tmp_path / "tiny-bert")
    names = [f"encoder.layer.{i}.{part}" for i in range(2) for part in (
        "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
        "intermediate.dense", "output.dense")]
    levels = geometric_levels(0.4, 0.99, 5)
    rows = [LayerTimes(name, tuple(levels), tuple(1e-3 * (1 - 0.9 * float(level)) for level in levels)) for name in names]
    save_table(TimingTable(base=0.02, prunable=len(names) * 1e-3, layers=rows, backend="fixture"), tmp_path / "timings.json")
    profile = tmp_path / "tiny.toml"
    profile.write_text(f"""
[run]
name = "tiny"
[model]
source = "hf"
path = "{model}"
exclude = ["pooler.*"]
[data]
calibration_samples = 32
heldout_samples = 16
batch_size = 16
seq_len = 32
[hardware]
timings = "timings.json"
runtime = "compiled"
batch_size = 8
[grid]
steps = 5
[database]
method = "magnitude"
[search]
target = 1.3
random_inits = 4
window = 4
[export]
verify = false
""")
    out = tmp_path / "run"
    result = run_cli("run", profile, "--out", out)
    assert result.exit_code == 0, result.output
    return out


def test_compiled_load_is_a_drop_in_encoder_and_a_sentence_transformer(tmp_path):
    out = tiny_bert_run(tmp_path)
    ctx = RunContext.from_dir(out)
    model = load(out)
    assert model.compile_seconds > 0
    tokenizer = ctx.loaded.tokenizer
    sentences = ["Return the sum of two numbers.", "Open a file.", "Raise an error when the key is missing."]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")  # fewer rows and tokens than compiled: padded
    with torch.no_grad():
        got = model(**batch)
        expected = ctx.final_model(**batch)
    assert got.last_hidden_state.shape == expected.last_hidden_state.shape
    assert torch.allclose(got.last_hidden_state, expected.last_hidden_state, rtol=1e-4, atol=1e-5)
    assert torch.allclose(got[0], expected[0], rtol=1e-4, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoder = sentence_transformer(out)
        dense_with_zeros = sentence_transformer(out, runtime="eager")
    assert torch.allclose(torch.as_tensor(encoder.encode(sentences)), torch.as_tensor(dense_with_zeros.encode(sentences)),
                          rtol=1e-4, atol=1e-5)


def test_spdy_bench_times_every_runtime_and_writes_its_table(tmp_path):
    import json

    out = tmp_path / "run"
    assert run_cli("run", write_profile(tmp_path, extra=MAGNITUDE_DATABASE, export=NO_VERIFY), "--out", out).exit_code == 0
    result = run_cli("bench", out, "--rounds", "2", "--calls", "1", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = {row["runtime"]: row for row in report["rows"]}
    assert list(rows) == ["pruned", "torch", "onednn", "compiled"]  # an eager classifier: no ONNX export
    assert report["baseline"] in ("torch", "onednn", "compiled")
    assert rows[report["baseline"]]["speedup"] == 1.0
    assert all(row["ms"] > 0 and row["iqr_ms"][0] <= row["ms"] <= row["iqr_ms"][1] for row in rows.values())
    assert rows["torch"]["cosine_mean"] == pytest.approx(1.0) and rows["compiled"]["cosine_mean"] == pytest.approx(1.0, abs=1e-4)
    assert rows["torch"]["agreement"] == 1.0 and "recall_at_10" not in rows["torch"]  # a classifier: agreement, not recall
    for name in ("bench.json", "bench.md", "bench.png"):
        assert (out / name).is_file()
    assert "## Runtimes side by side (spdy bench)" in (out / "report.md").read_text()

    assert report["weights"] is None


def test_spdy_bench_weights_times_a_fine_tuning_and_writes_beside_it(tmp_path, monkeypatch):
    import json

    from engine.deploy import bench as benchmark
    from engine.export.result import allocation, read_result
    from engine.model.losses import heldout_metrics

    out = tmp_path / "run"
    assert run_cli("run", write_profile(tmp_path, extra=MAGNITUDE_DATABASE, export=NO_VERIFY), "--out", out).exit_code == 0
    ctx, result = RunContext.from_dir(out), read_result(out)
    tuned, weights = fine_tuned_like(RunContext.from_dir(out), tmp_path / "finetune", allocation(result))
    report = benchmark.bench(ctx, result, rounds=1, calls=1, names=["pruned", "torch"], weights=weights)
    assert report["weights"] == str(weights) and [row["runtime"] for row in report["rows"]] == ["pruned", "torch"]
    with torch.no_grad():
        inputs = [batch.inputs for batch in ctx.data.heldout]
        expected = heldout_metrics("encoder", torch.cat([tuned(x) for x in inputs]), torch.cat([ctx.loaded.model(x) for x in inputs]))
    assert report["rows"][0]["cosine_mean"] == pytest.approx(expected["cosine"], abs=1e-5)  # the fine-tuned weights ran
    assert expected["cosine"] < 0.999
    monkeypatch.setattr(benchmark, "bench", lambda *args, **kwargs: report)  # the command's files, without timing again
    assert run_cli("bench", out, "--weights", weights).exit_code == 0
    assert json.loads((weights.parent / "bench.json").read_text()) == report and not (out / "bench.json").exists()
    missing = run_cli("bench", out, "--weights", tmp_path / "nowhere.safetensors")
    assert missing.exit_code == 2 and "--weights" in missing.output and "Traceback" not in missing.output


def test_the_profilers_reference_paths_include_compiled_torch_and_onnx_runtime(tmp_path):
    from engine.model.sources import load_hf
    from engine.runtime.paths import reference_paths

    loaded = load_hf(str(tiny_bert(tmp_path / "tiny-bert")))
    inputs = dict(loaded.tokenizer(["One sentence.", "And another, longer one."], padding="max_length", max_length=16,
                                   return_tensors="pt"))
    names = [name for name, module in loaded.model.named_modules() if isinstance(module, torch.nn.Linear)]
    runners, eager, missing = reference_paths(loaded.model, names, inputs, loaded.run_model, 1)
    assert set(runners) == {"torch", "onednn", "compiled", "onnxruntime"} and missing == {}
    expected = loaded.run(inputs)
    for name, run in runners.items():
        assert torch.allclose(torch.as_tensor(run()), expected, atol=1e-4), name


# ---------------------------------------------------------------------------- a fine-tuning's weights
def fine_tuned_like(ctx, folder, levels):
    """The run's final model with every weight moved off its value (zeros kept), written as a
    fine-tuning writes it: a pruned.safetensors with the allocation in its metadata."""
    from engine.export.weights import write_pruned_weights

    model = ctx.final_model
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(1.25).add_(0.01 * (parameter != 0))
    return model, write_pruned_weights(folder, model, {"allocation": levels, "source": "spdy finetune"})


@pytest.mark.slow  # 28 s; the cache itself is tested fast in test_compiled_runtime.py
def test_compiled_load_of_fine_tuned_weights_computes_them_not_the_cached_final_model(tmp_path):
    from engine.export.result import allocation, read_result

    out = tiny_bert_run(tmp_path)
    ctx = RunContext.from_dir(out)
    tokenizer = ctx.loaded.tokenizer
    batch = tokenizer(["Return the sum of two numbers.", "Open a file."], padding=True, return_tensors="pt")
    with torch.no_grad():
        final = load(out)(**batch).last_hidden_state  # compiled first: the run's compile cache holds the final model
        tuned, path = fine_tuned_like(ctx, tmp_path / "finetune", allocation(read_result(out)))
        got = load(out, weights=path)(**batch).last_hidden_state
        expected = tuned(**batch).last_hidden_state
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got, final, rtol=1e-2, atol=1e-3)


def test_weights_that_cannot_run_as_measured_are_refused_with_the_file_named(tmp_path):
    from engine.core.grid import int8_level
    from engine.export.result import allocation, read_result
    from engine.export.weights import write_pruned_weights

    out = tmp_path / "run"
    assert run_cli("run", write_profile(tmp_path, extra=MAGNITUDE_DATABASE, export=NO_VERIFY), "--out", out).exit_code == 0
    ctx, levels = RunContext.from_dir(out), allocation(read_result(out))
    missing = tmp_path / "nowhere" / "pruned.safetensors"
    with pytest.raises(RunError, match=re.escape(f"weights {missing}: cannot read the weights")):
        load(out, runtime="eager", weights=missing)
    unlabelled = write_pruned_weights(tmp_path / "unlabelled", ctx.final_model, {})
    with pytest.raises(RunError, match="no allocation in its metadata"):
        load(out, runtime="eager", weights=unlabelled)
    other = write_pruned_weights(tmp_path / "other", torch.nn.Sequential(torch.nn.Linear(3, 2)), {"allocation": {"0": "0.0000"}})
    with pytest.raises(RunError, match=re.escape(f"weights {other}: the weights do not fit the model")):
        load(out, runtime="eager", weights=other)
    name = next(iter(levels))
    stranger = tmp_path / "stranger.safetensors"  # written by hand: our writer refuses such an allocation itself
    save_file(ctx.final_model.state_dict(), stranger, metadata={"allocation": json.dumps({**levels, "no.such.layer": "0.0000"})})
    with pytest.raises(RunError, match="layer no.such.layer is not a prunable layer"):
        load(out, runtime="eager", weights=stranger)
    as_int8 = write_pruned_weights(tmp_path / "int8", ctx.final_model, {"allocation": {**levels, name: int8_level("0.0000")}})
    with pytest.raises(RunError, match=f"layer {name} is at an int8 level"):
        load(out, runtime="eager", weights=as_int8)
