"""A SHA-256 of tensors and plain values, nested: what a fingerprint or a cache key is made of.

    digest(value) = sha256 over, depth first: a tensor's dtype, shape and bytes; a dict's keys in
                    sorted order, each followed by its value; a list's items in order; repr(value)
                    of anything else

Used for the database's layer fingerprints (``engine.database.store``), the fine-tuning teacher's
sample fingerprint (``engine.recovery.training_data``) and the compiled runtime's weights key
(``engine.runtime.compiled``).  Changing it changes every stored fingerprint.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch


def _digest_into(hasher, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        hasher.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        hasher.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")  # 0-dim too
    elif isinstance(value, dict):
        for key in sorted(value):
            hasher.update(repr(key).encode())
            _digest_into(hasher, value[key])
    elif isinstance(value, (list, tuple)):
        for item in value:
            _digest_into(hasher, item)
    else:
        hasher.update(repr(value).encode())


def digest(value: Any) -> str:
    """sha256 of tensors (dtype, shape, bytes), dicts, lists and plain values, nested."""
    hasher = hashlib.sha256()
    _digest_into(hasher, value)
    return hasher.hexdigest()
