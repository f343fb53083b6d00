"""The run log: typed events, one JSON object per line in ``events.jsonl``.

Every event has ``v`` (schema version), ``t`` (unix seconds) and ``type``; the other fields
depend on the type (architecture.md, "The event log").  The writer appends and flushes each
line, never rewrites; the reader ignores a truncated last line (a writer killed mid-line), so a
log can be read while its run is going, after it finished, or after it was killed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterator

SCHEMA_VERSION = 1

# type -> fields every event of that type carries (others may be added, none renamed)
EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    "run_started": ("profile", "seed"),
    "stage": ("name", "state"),
    "timing": ("layer", "level", "seconds", "done", "total"),
    "db": ("layer", "level", "error", "done", "total"),
    "eval": ("n", "phase", "loss", "best", "accepted"),
    "best": ("n", "loss", "levels"),
    "baseline": ("name", "loss", "predicted_speedup"),
    "verify": ("predicted", "measured", "dense_seconds", "sparse_seconds"),
    "run_finished": ("status", "wall_seconds"),
    "error": ("message",),
    # `spdy finetune` (engine.recovery.finetune): phase started, prune, step, epoch, verify, done, interrupted
    # or failed; epoch is the 0-based epoch the event is about (prune, step, epoch), else the
    # number of epochs finished (started: where it starts; done, verify: all)
    "finetune": ("phase", "epoch", "epochs"),
}
STAGE_STATES = ("started", "done", "skipped")


class EventLog:
    """Append-only writer of ``events.jsonl``."""

    def __init__(self, path: str | os.PathLike, listener=None):
        self.path = Path(path)
        self.listener = listener  # called with every event after it is written (e.g. progress on stderr)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair_tail()
        self._handle = open(self.path, "a", encoding="utf-8")

    def _repair_tail(self) -> None:
        """Terminate a line left unfinished by a killed writer, so new events start on a fresh line."""
        if self.path.exists() and self.path.stat().st_size:
            with open(self.path, "rb+") as handle:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    handle.write(b"\n")

    def emit(self, type: str, **fields) -> dict:
        if type not in EVENT_FIELDS:
            raise ValueError(f"unknown event type {type!r}")
        missing = [name for name in EVENT_FIELDS[type] if name not in fields]
        if missing:
            raise ValueError(f"event {type!r} lacks {missing}")
        if type == "stage" and fields["state"] not in STAGE_STATES:
            raise ValueError(f"stage state must be one of {STAGE_STATES}")
        event = {"v": SCHEMA_VERSION, "t": round(time.time(), 3), "type": type, **fields}
        self._handle.write(json.dumps(event, separators=(",", ":"), default=_plain) + "\n")
        self._handle.flush()
        if self.listener is not None:
            self.listener(event)
        return event

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


def _plain(value):
    """numpy scalars and arrays as plain JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_events(path: str | os.PathLike) -> Iterator[dict]:
    """Every complete event in the log; a malformed line (a truncated write) is skipped."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if not line.endswith("\n"):
                return  # the writer is mid-line (or was killed there)
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict) and "type" in event:
                yield event


class Follower:
    """Incremental reader for a live log: each ``poll()`` returns the events appended since the last."""

    def __init__(self, path: str | os.PathLike, listener=None):
        self.path = Path(path)
        self.listener = listener  # called with every event after it is written (e.g. progress on stderr)
        self._offset = 0
        self._partial = b""

    def poll(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            chunk = handle.read()
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()  # the unfinished tail, kept until its newline arrives
        events = []
        for line in lines:
            try:
                event = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(event, dict) and "type" in event:
                events.append(event)
        return events


class NullLog:
    """A log that writes nothing: scoring workers, benchmarks and tests build a run context with it."""

    def emit(self, type: str, **fields) -> dict:
        return {"type": type, **fields}

    def close(self) -> None:
        return None
