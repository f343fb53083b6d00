"""The run log: typed events, one JSON object per line in ``events.jsonl``.

Every event has ``v`` (schema version), ``t`` (unix seconds) and ``type``; the other fields
depend on the type (architecture.md, "The event log").  The writer appends and flushes each
line, never rewrites; the reader ignores a truncated last line (a writer killed mid-line), so a
log can be read while its run is going, after it finished, or after it was killed.

A run log starts with a ``run_started`` event (``engine.run.directory.open_run`` writes it
first).  The readers for display, ``scan_log`` (a whole log) and ``Follower`` (a live one), refuse
a file whose first line is anything else (binary data, a TOML file, another program's JSON
lines) with ``RunLogError``, and count the complete lines in the middle that are not events
(``unreadable``: a line cut short when a killed run was resumed, or corruption), so a viewer can
say so instead of skipping them without a word.  ``read_events`` stays lenient: the stages use it
on their own run's log.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
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
    # the final model (engine.run.stages.final): its calibration loss and every held-out metric
    "final": ("loss", "heldout", "quality"),
    # global AdaPrune on the final model (export.gap): done of total steps, the step's training loss
    "gap": ("done", "total", "loss"),
    "verify": ("predicted", "measured", "dense_seconds", "sparse_seconds"),
    # the closed loop (engine.run.stages.verify): the measured speedup fell short, so the search
    # continues at a tighter target (search_target) from its best coefficients
    "tighten": ("round", "target", "measured", "search_target"),
    # the closed loop spending a surplus (export.relax): outcome "searching" (measured: the surplus
    # measurement), then "kept" or "restored" (measured: the relaxed model's measurement)
    "relax": ("target", "measured", "search_target", "outcome"),
    "run_finished": ("status", "wall_seconds"),
    "error": ("message",),
    # `spdy finetune` (engine.recovery.finetune): phase preparing (with ``what``), started, prune, step,
    # epoch, verify, done, interrupted or failed; epoch is the 0-based epoch the event is about (prune,
    # step, epoch), else the number of epochs finished (preparing, started: where it starts; done, verify: all)
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


class RunLogError(ValueError):
    """A file is not a run log, or holds no event where one is needed; the message names the file."""


def _parse(line: bytes) -> dict | None:
    """The event on one complete line, or None (not JSON, not an object with a type, binary)."""
    if b"\0" in line:
        return None
    try:
        event = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return event if isinstance(event, dict) and isinstance(event.get("type"), str) else None


def _not_a_log(path, first: bytes) -> RunLogError:
    shown = first[:40].decode("utf-8", errors="replace")
    binary = "\ufffd" in shown or any(ord(char) < 32 and char not in "\t\r" for char in shown)
    what = "binary data" if binary else repr(shown + ("..." if len(first) > 40 else ""))
    return RunLogError(
        f"{path}: not a run log: a run log's first line is a run_started event, this one starts with {what} "
        "(give a run directory or the events.jsonl that `spdy run` writes)"
    )


def _could_start_a_log(partial: bytes) -> bool:
    """Whether an unfinished first line may still become a run_started event (a run just starting)."""
    return partial.lstrip()[:1] in (b"", b"{") and b"\0" not in partial


@dataclass
class LogScan:
    """A whole log, read once: its events, and how many complete lines were not events."""

    events: list[dict] = field(default_factory=list)
    unreadable: int = 0  # complete lines that are not events (the unfinished last line is not counted)


def scan_log(path: str | os.PathLike) -> LogScan:
    """Every event of a run log and the count of unreadable lines.

    RunLogError when the file cannot be read, is empty, holds no complete line yet, or does not
    start with a run_started event."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise RunLogError(f"{path}: cannot read the run log: {exc.strerror or exc}") from None
    if not data.strip():
        raise RunLogError(f"{path}: the run log is empty (a run that has just started has written nothing yet)")
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" after a final newline, else the unfinished last line
    if not lines:
        if _could_start_a_log(tail):
            raise RunLogError(f"{path}: the run log holds no complete event yet (a run that has just started writes one in a moment)")
        raise _not_a_log(path, tail)
    first = _parse(lines[0])
    if first is None or first["type"] != "run_started":
        raise _not_a_log(path, lines[0])
    scan = LogScan()
    for line in lines:
        event = _parse(line)
        if event is None:
            scan.unreadable += 1
        else:
            scan.events.append(event)
    return scan


def check_log_start(path: str | os.PathLike) -> None:
    """RunLogError unless the log is empty, still writing its first line, or starts with run_started."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(1 << 16)
    except OSError as exc:
        raise RunLogError(f"{path}: cannot read the run log: {exc.strerror or exc}") from None
    first, newline, _ = head.partition(b"\n")
    if not newline:
        if not _could_start_a_log(first) or len(head) == 1 << 16:
            raise _not_a_log(path, first)
        return
    event = _parse(first)
    if event is None or event["type"] != "run_started":
        raise _not_a_log(path, first)


class Follower:
    """Incremental reader for a live log: each ``poll()`` returns the events appended since the last.

    An empty or not yet created log is fine (a run just starting).  ``unreadable`` counts the
    complete lines that were not events; ``error`` is set (and nothing more is returned) once the
    first line shows the file is not a run log.  A log that shrinks was replaced: it is read again
    from the start."""

    def __init__(self, path: str | os.PathLike, listener=None):
        self.path = Path(path)
        self.listener = listener  # called with every event after it is written (e.g. progress on stderr)
        self.unreadable = 0
        self.error: str | None = None
        self._offset = 0
        self._lines = 0
        self._partial = b""

    def poll(self) -> list[dict]:
        if self.error is not None or not self.path.exists():
            return []
        with open(self.path, "rb") as handle:
            if os.fstat(handle.fileno()).st_size < self._offset:  # replaced by a new run
                self._offset, self._lines, self._partial, self.unreadable = 0, 0, b"", 0
            handle.seek(self._offset)
            chunk = handle.read()
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()  # the unfinished tail, kept until its newline arrives
        events = []
        for line in lines:
            self._lines += 1
            event = _parse(line)
            if self._lines == 1 and (event is None or event["type"] != "run_started"):
                self.error = str(_not_a_log(self.path, line))
                return []
            if event is None:
                self.unreadable += 1
            else:
                events.append(event)
        if self._lines == 0 and not _could_start_a_log(self._partial[:1 << 16]):
            self.error = str(_not_a_log(self.path, self._partial[:64]))
            return []
        return events


class NullLog:
    """A log that writes nothing: scoring workers, benchmarks and tests build a run context with it."""

    def emit(self, type: str, **fields) -> dict:
        return {"type": type, **fields}

    def close(self) -> None:
        return None
