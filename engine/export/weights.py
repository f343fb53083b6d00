"""The weights a user takes away, and their one writer and reader each:

    pruned.safetensors   the final (or fine-tuned) model's state dict: every weight as the model computes with it
                         (pruned layers with exact zeros, an int8 layer as q * scale in float32),
                         so ``load_file`` + ``load_state_dict`` into the plain model reproduce the
                         outputs (an int8 layer's to int8 rounding of its input)
    int8.safetensors     the int8 layers, for an int8 runtime; per layer L of the allocation at an
                         int8 level:
                             L.weight_q      int8 (out, in), zeros where pruned
                             L.weight_scale  float32 (out,)
                         with L.weight = weight_q * weight_scale[:, None] exactly, and at run time
                             x_q[t] = clamp(round(x[t] / s_t), -127, 127),  s_t = max_k |x[t, k]| / 127,
                             y[t, r] = (float32(sum_k x_q[t, k] * weight_q[r, k]) * s_t) * weight_scale[r] + bias[r]
                         (``engine.runtime.int8``).  Metadata: "format" = "spdy-int8", "version" = "1",
                         "levels" = JSON {layer: level}.

``engine.deploy.load(RUN_DIR)`` runs the same weights from the run's final model.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from engine.core.atomic import write_bytes
from engine.core.grid import is_int8, level_sparsity
from engine.export.result import plain_json
from engine.runtime.int8 import SCALE, int8_codes

PRUNED = "pruned.safetensors"
INT8 = "int8.safetensors"
INT8_FORMAT, INT8_VERSION = "spdy-int8", "1"


def write_pruned_weights(run_dir: str | os.PathLike, model: torch.nn.Module, metadata: Mapping) -> Path:
    """The model's state dict as safetensors, int8 scales left out (``load_file`` + ``load_state_dict`` reload it).

    Tensors sharing storage (tied weights) are cloned, since safetensors refuses shared storage.
    Metadata values that are not strings are stored as JSON; if ``metadata["allocation"]`` maps
    layer names to levels, each such ``<layer>.weight`` must hold at least that many exact zeros.
    """
    state: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for key, tensor in model.state_dict().items():
        if key.endswith("." + SCALE):
            continue
        tensor = tensor.detach().to("cpu").contiguous()
        if tensor.numel() and tensor.untyped_storage().data_ptr() in storages:
            tensor = tensor.clone()
        storages.add(tensor.untyped_storage().data_ptr())
        state[key] = tensor
    for name, level in dict(metadata.get("allocation", {})).items():
        weight = state.get(f"{name}.weight")
        if weight is None:
            raise ValueError(f"allocation names {name}, which has no {name}.weight in the model")
        zeros = weight.numel() - int(torch.count_nonzero(weight))
        if zeros < math.floor(level_sparsity(level) * weight.numel()) - 1:
            raise ValueError(f"{name}.weight has {zeros}/{weight.numel()} zeros, level {level} needs more: "
                             "is the pruned (stitched) model being saved?")
    text_metadata = {"format": "pt"}
    text_metadata.update({str(key): value if isinstance(value, str) else json.dumps(plain_json(value))
                          for key, value in metadata.items()})
    return _write(Path(run_dir) / PRUNED, safetensors_bytes(state, metadata=text_metadata))


def read_pruned_weights(path: str | os.PathLike, dense: torch.nn.Module) -> tuple[torch.nn.Module, dict[str, str]]:
    """(a copy of ``dense`` with ``path``'s weights loaded, in eval mode; the allocation its metadata
    records, {layer: level}).  ValueError, naming the file, for anything that is not a pruned.safetensors
    of this model."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}
        levels = json.loads(metadata.get("allocation", "{}"))
    except (OSError, ValueError, SafetensorError) as exc:
        raise ValueError(f"{path}: cannot read the weights ({exc})") from None
    if not isinstance(levels, dict) or not levels:
        raise ValueError(f"{path}: no allocation in its metadata; is it a pruned.safetensors written by spdy?")
    model = copy.deepcopy(dense)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path}: the weights do not fit the model ({str(exc).splitlines()[0]})") from None
    return model.eval(), {str(name): str(level) for name, level in levels.items()}


def write_int8_weights(run_dir: str | os.PathLike, model: torch.nn.Module, allocation: Mapping[str, str]) -> Path | None:
    """int8.safetensors for the allocation's int8 layers (marked in ``model``); None when it has none."""
    levels = {name: level for name, level in allocation.items() if is_int8(level)}
    if not levels:
        return None
    tensors = {}
    for name, level in levels.items():
        q, scale = int8_codes(model.get_submodule(name))
        tensors[f"{name}.weight_q"], tensors[f"{name}.weight_scale"] = q.contiguous(), scale.float().contiguous()
    metadata = {"format": INT8_FORMAT, "version": INT8_VERSION, "levels": json.dumps(levels, sort_keys=True)}
    return _write(Path(run_dir) / INT8, safetensors_bytes(tensors, metadata=metadata))


def read_int8_weights(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """({layer: level}, {layer: (weight_q, weight_scale)}) from an int8.safetensors file."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != INT8_FORMAT or metadata.get("version") != INT8_VERSION:
            raise ValueError(f"{path}: not a {INT8_FORMAT} v{INT8_VERSION} file (metadata {metadata})")
        levels = json.loads(metadata["levels"])
        return levels, {name: (handle.get_tensor(f"{name}.weight_q"), handle.get_tensor(f"{name}.weight_scale")) for name in levels}


def _write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, content)
    return path
