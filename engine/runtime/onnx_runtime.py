"""ONNX Runtime (CPU) as a dense baseline: a BERT-style encoder with its pooling, exported to ONNX.

The baseline a user already has for a sentence encoder is ONNX Runtime (sentence-transformers ships
an ONNX backend), not torch eager, so a sparse speedup is also stated against it.

* ``PooledEncoder(model)`` wraps a Hugging Face encoder and the sentence-transformers pooling (masked
  mean of the token states, L2-normalised, as ``engine.model.sources.mean_pooled_embedding``), so
  the exported graph returns the embeddings and ONNX Runtime computes everything a call needs.
* ``export_onnx(model, example_inputs, path)`` exports it, batch and sequence dimensions dynamic.
  It tries the dynamo exporter (``torch.onnx.export(..., dynamo=True)``, torch.export + onnxscript)
  first and falls back to the TorchScript-based one; it returns which one wrote the file.  Export
  the model with eager attention (``attn_implementation="eager"``, see ``load_eager_encoder``): an
  SDPA export can disagree with torch on padded batches.
* ``quantize_int8(src, dst)``: ``onnxruntime.quantization.quantize_dynamic`` (weights int8 per
  output channel, activations quantised on the fly): the int8 reference point.
* ``OrtEncoder(path, threads)``: an ``InferenceSession`` on the CPU provider with
  ``intra_op_num_threads=threads``, ``inter_op_num_threads=1``, sequential execution, and its
  thread pool's spinning disabled (``session.intra_op.allow_spinning = "0"``: spinning threads steal
  the cores from whatever runs next, torch or numba, and distort side-by-side timings).  Calling it
  with the tokenizer's dict returns a torch tensor of embeddings.

``onnxruntime`` and ``onnx`` are imported lazily: ``ort_available()`` says whether they are here.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "sentence_embedding"  # not "embedding": the dynamo exporter names the aten.embedding node so
DEFAULT_OPSET = 18  # the dynamo exporter's own opset (it converts down less reliably)


def ort_available() -> bool:
    """True if onnxruntime and onnx import."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class PooledEncoder(nn.Module):
    """An encoder and its sentence-transformers pooling: masked mean of the last hidden states,
    L2-normalised.  Positional inputs (input_ids, attention_mask, token_type_ids) for the export."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)


def load_eager_encoder(path: str) -> nn.Module:
    """A Hugging Face encoder from a local folder with eager attention (the exportable form), fp32,
    eval mode, without its pooler (not part of a sentence embedding)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel

    model = AutoModel.from_pretrained(path, local_files_only=True, attn_implementation="eager").float().eval()
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model


def _positional(inputs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    types = inputs.get("token_type_ids")
    return (
        ids.long(),
        (torch.ones_like(ids) if mask is None else mask).long(),
        (torch.zeros_like(ids) if types is None else types).long(),
    )


def _export_dynamo(wrapper: nn.Module, args: tuple, path: Path, opset: int) -> None:
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    shapes = {name: {0: batch, 1: seq} for name in INPUT_NAMES}
    program = torch.onnx.export(
        wrapper, args, dynamo=True, opset_version=opset, input_names=list(INPUT_NAMES),
        output_names=[OUTPUT_NAME], dynamic_shapes=shapes, external_data=False, verbose=False,
    )
    program.save(str(path))


def _export_torchscript(wrapper: nn.Module, args: tuple, path: Path, opset: int) -> None:
    axes = {name: {0: "batch", 1: "seq"} for name in INPUT_NAMES}
    axes[OUTPUT_NAME] = {0: "batch"}
    torch.onnx.export(
        wrapper, args, str(path), dynamo=False, opset_version=opset, input_names=list(INPUT_NAMES),
        output_names=[OUTPUT_NAME], dynamic_axes=axes, do_constant_folding=True,
    )


def export_onnx(
    model: nn.Module, example_inputs: dict, path: str | os.PathLike, opset: int = DEFAULT_OPSET, exporter: str = "auto"
) -> str:
    """Export ``PooledEncoder(model)`` to ``path`` (an .onnx file, weights inside); returns the exporter
    used: "dynamo" or "torchscript".  ``exporter="auto"`` tries dynamo, then TorchScript, both at
    ``opset`` (17 or higher)."""
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise ValueError(f"exporter must be 'auto', 'dynamo' or 'torchscript', got {exporter!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = PooledEncoder(model).eval()
    args = _positional(example_inputs)
    errors = []
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter in ("auto", "dynamo"):
            try:
                _export_dynamo(wrapper, args, path, opset)
                return "dynamo"
            except Exception as exc:  # noqa: BLE001 - any exporter failure means: try the other one
                if exporter == "dynamo":
                    raise
                errors.append(f"dynamo: {type(exc).__name__}: {exc}")
        try:
            _export_torchscript(wrapper, args, path, opset)
        except Exception as exc:  # noqa: BLE001
            raise RuntimeError("ONNX export failed: " + "; ".join([*errors, f"torchscript: {exc}"])) from exc
    return "torchscript"


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike, per_channel: bool = True) -> Path:
    """Dynamic int8 quantisation of ``src`` (weights QInt8, per output channel by default) into ``dst``."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # "Please consider to run pre-processing before quantization" on every call
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(src), str(dst), per_channel=per_channel, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    return dst


def session_options(threads: int, optimization: str = "all") -> Any:
    """CPU session options for timing: ``threads`` intra-op threads, one inter-op, no spinning."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


class OrtEncoder:
    """An exported ``PooledEncoder`` in ONNX Runtime on the CPU; call with the tokenizer's dict."""

    def __init__(self, path: str | os.PathLike, threads: int, optimization: str = "all"):
        import onnxruntime as ort

        self.path = str(path)
        self.threads = threads
        self.session = ort.InferenceSession(
            self.path, sess_options=session_options(threads, optimization), providers=["CPUExecutionProvider"]
        )
        self.input_names = [item.name for item in self.session.get_inputs()]

    def feeds(self, inputs: dict) -> dict:
        """The session's inputs as int64 NumPy arrays (prepare once to time the session alone)."""
        values = dict(zip(INPUT_NAMES, _positional(inputs)))
        return {name: values[name].numpy() for name in self.input_names}

    def run_feeds(self, feeds: dict) -> Any:
        return self.session.run([OUTPUT_NAME], feeds)[0]

    def __call__(self, inputs: dict) -> torch.Tensor:
        return torch.from_numpy(self.run_feeds(self.feeds(inputs)))
