"""Atomic file writes: write a temporary file beside the target, fsync, then rename over it.

A reader (or a resumed run) therefore sees either the old file or the complete new one,
never a half-written file, even if the writer is killed with SIGKILL.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))
