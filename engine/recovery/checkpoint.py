"""Training checkpoints: everything a fine-tuning needs to continue bit for bit after a kill.

A checkpoint is a folder ``checkpoint-<epochs done, 4 digits>/`` holding

    model.safetensors      the model's state dict
    masks.safetensors      the keep masks (bool tensors), by layer name
    optimizer.safetensors  the optimiser state: tensors as "state.<param index>.<name>", and in
                           the metadata its param_groups and any non-tensor state, as JSON

and ``state.json`` beside the folders names the latest complete one.  The folder is written
first (each file atomically), then ``state.json`` is replaced atomically, then older folders are
removed, so after a kill at any point ``state.json`` names a complete checkpoint; a folder it
does not name is an unfinished write and is ignored.  Nothing is unpickled: tensors go through
safetensors, the rest through JSON.  No random state is stored: the trainer derives each epoch's
generators from (seed, epoch), so an epoch continued after a resume draws what it would have.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from engine.core import atomic

STATE_FILE = "state.json"


class CheckpointError(ValueError):
    """A checkpoint cannot be read back; the message names the file."""


def folder_name(epoch: int) -> str:
    return f"checkpoint-{epoch:04d}"


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies (safetensors refuses shared or strided storage)."""
    return {key: tensor.detach().to("cpu").contiguous().clone() for key, tensor in state.items()}


def _optimizer_file(optimizer: torch.optim.Optimizer) -> bytes:
    saved = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in saved["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value
            else:
                scalars[f"state.{index}.{name}"] = value
    metadata = {"param_groups": json.dumps(saved["param_groups"]), "scalars": json.dumps(scalars)}
    return safetensors_bytes(_tensors(tensors), metadata=metadata)


def save(directory: str | Path, epoch: int, model: torch.nn.Module, masks: dict[str, torch.Tensor],
         optimizer: torch.optim.Optimizer, state: dict) -> Path:
    """Write the checkpoint after ``epoch`` epochs, then point ``state.json`` (``state`` plus
    ``epoch`` and ``checkpoint``) at it, then remove older checkpoints."""
    directory = Path(directory)
    folder = directory / folder_name(epoch)
    if folder.exists():
        shutil.rmtree(folder)  # an unfinished write of this same epoch
    folder.mkdir(parents=True)
    atomic.write_bytes(folder / "model.safetensors", safetensors_bytes(_tensors(model.state_dict())))
    atomic.write_bytes(folder / "masks.safetensors", safetensors_bytes(_tensors(masks)))
    atomic.write_bytes(folder / "optimizer.safetensors", _optimizer_file(optimizer))
    record = {**state, "epoch": epoch, "checkpoint": folder.name}
    atomic.write_text(directory / STATE_FILE, json.dumps(record, indent=1))
    for old in directory.glob("checkpoint-*"):
        if old.is_dir() and old.name != folder.name:
            shutil.rmtree(old)
    return folder


def write_state(directory: str | Path, state: dict) -> None:
    """Replace ``state.json`` (e.g. to mark the fine-tuning finished)."""
    atomic.write_text(Path(directory) / STATE_FILE, json.dumps(state, indent=1))


def load_state(directory: str | Path) -> dict | None:
    """``state.json``, or None if there is none yet."""
    path = Path(directory) / STATE_FILE
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint state ({exc})") from None
    if not isinstance(state, dict) or not isinstance(state.get("epoch"), int):
        raise CheckpointError(f"{path}: not a checkpoint state (no epoch)")
    return state


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})
    except (OSError, SafetensorError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc})") from None


def restore(directory: str | Path, state: dict, model: torch.nn.Module,
            optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Load the checkpoint ``state`` names into ``model`` and ``optimizer``; returns the masks."""
    folder = Path(directory) / str(state.get("checkpoint", ""))
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: the checkpoint named by {STATE_FILE} is missing")
    weights, _ = _read(folder / "model.safetensors")
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(f"{folder / 'model.safetensors'}: does not fit the model ({exc})") from None
    masks, _ = _read(folder / "masks.safetensors")
    tensors, metadata = _read(folder / "optimizer.safetensors")
    try:
        scalars = json.loads(metadata["scalars"])
        param_groups = json.loads(metadata["param_groups"])
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(f"{folder / 'optimizer.safetensors'}: no optimiser param_groups in its metadata") from None
    per_param: dict[int, dict] = {}
    for key, value in [*tensors.items(), *scalars.items()]:
        _, index, name = key.split(".", 2)
        per_param.setdefault(int(index), {})[name] = value
    try:
        optimizer.load_state_dict({"state": per_param, "param_groups": param_groups})
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{folder / 'optimizer.safetensors'}: does not fit the optimiser ({exc})") from None
    return masks
