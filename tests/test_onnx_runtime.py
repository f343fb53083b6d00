"""ONNX Runtime baseline: a tiny random BERT (no downloads) exported with its pooling matches torch."""

import pytest
import torch
from torch import nn

from engine.runtime.onnx_runtime import PooledEncoder, export_onnx, ort_available, session_options

pytestmark = pytest.mark.skipif(not ort_available(), reason="onnxruntime/onnx not installed (pip install onnx onnxruntime onnxscript)")


def tiny_bert() -> nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=120, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=64, attn_implementation="eager",
    )
    return BertModel(config, add_pooling_layer=False).eval()


def tiny_inputs(batch: int = 4, tokens: int = 16, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 120, (batch, tokens), generator=generator)
    mask = torch.ones_like(ids)
    for row in range(1, batch):  # padded rows, as a tokenizer pads a batch
        mask[row, tokens - 3 * row :] = 0
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def reference(model: nn.Module, inputs: dict) -> torch.Tensor:
    from engine.model.sources import mean_pooled_embedding

    with torch.no_grad():
        return mean_pooled_embedding(model, inputs)


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    model = tiny_bert()
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    exporter = export_onnx(model, tiny_inputs(), path)
    return model, path, exporter


def test_pooled_encoder_is_mean_pooled_embedding():
    model, inputs = tiny_bert(), tiny_inputs()
    with torch.no_grad():
        pooled = PooledEncoder(model)(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
    torch.testing.assert_close(pooled, reference(model, inputs))


def test_ort_fp32_matches_torch_on_other_shapes(tiny_export):
    from engine.runtime.onnx_runtime import OrtEncoder

    model, path, exporter = tiny_export
    assert exporter in ("dynamo", "torchscript")
    encoder = OrtEncoder(path, threads=1)
    for inputs in (tiny_inputs(), tiny_inputs(batch=2, tokens=9, seed=1)):  # batch and sequence are dynamic
        got = encoder(inputs)
        torch.testing.assert_close(got, reference(model, inputs), rtol=1e-4, atol=1e-5)


def test_torchscript_exporter_fallback_matches_torch(tmp_path):
    from engine.runtime.onnx_runtime import OrtEncoder

    model, inputs = tiny_bert(), tiny_inputs()
    assert export_onnx(model, inputs, tmp_path / "ts.onnx", opset=17, exporter="torchscript") == "torchscript"
    torch.testing.assert_close(OrtEncoder(tmp_path / "ts.onnx", threads=1)(inputs), reference(model, inputs), rtol=1e-4, atol=1e-5)


def test_int8_dynamic_quantisation_stays_close(tiny_export, tmp_path):
    from engine.runtime.onnx_runtime import OrtEncoder, quantize_int8

    model, path, _ = tiny_export
    quantised = quantize_int8(path, tmp_path / "int8.onnx")
    assert quantised.stat().st_size < path.stat().st_size
    inputs = tiny_inputs()
    cosine = torch.nn.functional.cosine_similarity(OrtEncoder(quantised, threads=1)(inputs), reference(model, inputs))
    assert cosine.min() > 0.99


def test_session_options_disable_spinning():
    options = session_options(threads=2)
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_unknown_exporter_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="exporter"):
        export_onnx(tiny_bert(), tiny_inputs(), tmp_path / "x.onnx", exporter="tf")
