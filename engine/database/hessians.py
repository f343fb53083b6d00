"""The build's Hessians, collected once and read by every worker: ``<run>/db/hessians.safetensors``.

OBS and magnitude builds need each layer's H = 2 X X^T over the reconstruction inputs, and
collecting it is one dense forward pass over all of them.  An executor that builds the database
one layer per work item would repeat that pass per layer (36 passes over 1024 sentences for the
default profile), so the parent collects every layer's H once (``write``) and each work item
reads the ones it builds (``read``); every executor then uses the same H, bit for bit.

The file is keyed by ``key`` (a digest of the build plan's fingerprints: settings, levels, every
layer's dense weight and the reconstruction inputs); a file with another key is stale and is
never read.  It is a temporary of the build: ``remove`` deletes it once every layer is built, and
a killed build's file is reused when the build resumes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from engine.core import atomic

FILE = "hessians.safetensors"


def key(fingerprints: dict[str, str]) -> str:
    """What a build's H depend on: every layer's fingerprint (``BuildPlan.fingerprints``: settings,
    levels, the dense weight, the reconstruction inputs), digested."""
    return hashlib.sha256(json.dumps(fingerprints, sort_keys=True).encode()).hexdigest()


def write(directory: Path, hessians: dict[str, torch.Tensor], key: str) -> None:
    """Store ``hessians`` (layer name -> H) under ``key``, atomically."""
    data = safetensors_bytes({name: h.contiguous() for name, h in hessians.items()}, metadata={"key": key})
    atomic.write_bytes(Path(directory) / FILE, data)


def _open_current(directory: Path, names: list[str], key: str):
    """The stored file opened, if it is current (``key``) and holds H of every one of ``names``; else None."""
    path = Path(directory) / FILE
    if not path.is_file():
        return None
    handle = safe_open(path, framework="pt")
    if (handle.metadata() or {}).get("key") == key and set(names) <= set(handle.keys()):
        return handle
    return None


def covers(directory: Path, names: list[str], key: str) -> bool:
    """The stored file is current (``key``) and holds H of every one of ``names``."""
    return _open_current(directory, names, key) is not None


def read(directory: Path, names: list[str], key: str) -> dict[str, torch.Tensor] | None:
    """H of each of ``names`` from the stored file, or None when it does not cover them for ``key``
    (missing, stale, or without one of the layers): the caller then collects its own."""
    handle = _open_current(directory, names, key)
    return None if handle is None else {name: handle.get_tensor(name) for name in names}


def remove(directory: Path) -> None:
    """Delete the file (once every layer is built)."""
    (Path(directory) / FILE).unlink(missing_ok=True)
