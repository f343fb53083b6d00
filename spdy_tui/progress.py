"""Progress on stderr for headless runs, driven by the run's events.

On a terminal: a progress bar per long stage, a line per stage change and result.  Elsewhere (CI
logs, nohup, the TUI's console log) bars do not draw, so a heartbeat line says where the run is
(stage, counts, minutes in the stage) at least every ``heartbeat`` seconds, even through a stretch
with no event at all.  Nothing printed here is read as rich markup: layer names and messages are
user data.
"""

from __future__ import annotations

import threading
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

HEARTBEAT_SECONDS = 30.0


class StderrProgress:
    """An event listener: one progress bar per long stage, a line per stage change and result."""

    def __init__(self, console: Console | None = None, heartbeat: float = HEARTBEAT_SECONDS):
        self.console = console or Console(stderr=True, highlight=False)
        self.progress = Progress(
            TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=self.console, transient=True,
        )
        self.tasks: dict[str, int] = {}
        self.started = False
        self.heartbeat = heartbeat
        self.bars = self.console.is_terminal  # bars draw on a terminal; elsewhere the heartbeat speaks
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_line = time.monotonic()
        self._stage: tuple[str, float] | None = None  # the stage running and when it started
        self._stages_seen = 0
        self._counts: dict[str, tuple[str, int, int | None]] = {}  # bar -> (description, done, total)

    # ------------------------------------------------------------------ output
    def _line(self, text: str) -> None:
        with self._lock:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)
            self._last_line = time.monotonic()

    def status(self) -> str:
        """Where the run is: its stage, minutes in it, and the counts of the bar last moved."""
        with self._lock:
            parts = []
            if self._stage is not None:
                name, since = self._stage
                parts.append(f"stage {name} running for {_minutes(time.monotonic() - since)}")
            for description, done, total in self._counts.values():
                parts.append(f"{description}: {done}/{total}" if total else f"{description}: {done}")
            idle = "between stages" if self._stages_seen else "starting (loading the model and data)"
            return "still working: " + ("; ".join(parts) if parts else idle)

    def _beat(self) -> None:
        while not self._stop.wait(min(self.heartbeat, 1.0)):
            if time.monotonic() - self._last_line >= self.heartbeat:
                self._line(self.status())

    def _ensure_heartbeat(self) -> None:
        if self.bars or (self._thread is not None and self._thread.is_alive()):
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="spdy-progress-heartbeat", daemon=True)
        self._thread.start()

    def _bar(self, name: str, done: int, total: int | None, description: str) -> None:
        with self._lock:
            self._counts = {name: (description, done, total)}  # the moving bar only: earlier stages are done
            if not self.bars:
                if time.monotonic() - self._last_line >= self.heartbeat:
                    self._line(self.status())
                return
            if not self.started:
                self.progress.start()
                self.started = True
            if name not in self.tasks:
                self.tasks[name] = self.progress.add_task(description, total=total)
            self.progress.update(self.tasks[name], completed=done, total=total, description=description)

    # ------------------------------------------------------------------ events
    def __call__(self, event: dict) -> None:
        kind = event["type"]
        self._ensure_heartbeat()
        if kind == "stage":
            with self._lock:
                if event["state"] == "started":
                    self._stage, self._counts = (str(event["name"]), time.monotonic()), {}
                    self._stages_seen += 1
                elif self._stage is not None and self._stage[0] == event["name"]:
                    self._stage, self._counts = None, {}
            self._line(f"stage {event['name']}: {event['state']}")
        elif kind == "timing":
            self._bar("timing", event["done"], event["total"], f"timing {event['layer']}")
        elif kind == "db":
            self._bar("db", event["done"], event["total"], f"database {event['layer']}")
        elif kind == "gap":
            self._bar("gap", event["done"], event["total"], f"global AdaPrune, loss {event['loss']:.4g}")
        elif kind == "eval":
            best = event["best"]
            self._bar("eval", event["n"], None, f"search {event['phase']} best {best:.5g}" if best is not None else "search")
        elif kind == "baseline":
            self._line(f"baseline {event['name']}: loss {event['loss']:.5g}, predicted {event['predicted_speedup']:.3f}x")
        elif kind == "verify":
            self._line(f"verify: predicted {event['predicted']:.3f}x, measured {event['measured']:.3f}x")
        elif kind == "tighten":
            self._line(f"closed loop round {event['round']}: measured {event['measured']:.3f}x < target {event['target']:g}x; "
                       f"searching on at {event['search_target']:.3f}x")
        elif kind == "relax":
            from engine.run.runlog import relax_line

            self._line(relax_line(event))
        elif kind == "finetune":
            self._finetune(event)
        elif kind == "error":
            self._line(f"error: {event['message']}")
        elif kind == "run_finished":
            self.close()

    def _finetune(self, event: dict) -> None:
        phase, epochs = event["phase"], event["epochs"]
        if phase == "started":
            self._line(
                f"finetune: {event.get('samples')} samples, loss {event.get('loss')}, {epochs} epochs"
                + (f", resuming at epoch {event['epoch'] + 1}" if event.get("resume") else ""))
        elif phase == "preparing":
            self._line(f"finetune: {event.get('what')}")
        elif phase == "step":
            self._bar("finetune", event["step"], event["steps"], f"finetune epoch {event['epoch'] + 1}/{epochs}")
        elif phase == "epoch":
            heldout = event.get("heldout")
            self._line(
                f"finetune epoch {event['epoch'] + 1}/{epochs}: loss {event['loss']:.5g}"
                + ("" if heldout is None else f", held-out {heldout:.4f}"))
        elif phase == "verify":
            self._line(f"verify: predicted {event['predicted']:.3f}x, measured {event['measured']:.3f}x")
        elif phase in ("done", "interrupted", "failed"):
            self.close()

    def close(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        with self._lock:
            if self.started:
                self.progress.stop()
                self.started = False


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
