"""Progress on stderr for headless runs, driven by the run's events."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class StderrProgress:
    """An event listener: one progress bar per long stage, a line per stage change and result."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True, highlight=False)
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=self.console, transient=True,
        )
        self.tasks: dict[str, int] = {}
        self.started = False

    def _bar(self, name: str, done: int, total: int | None, description: str) -> None:
        if not self.started:
            self.progress.start()
            self.started = True
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(description, total=total)
        self.progress.update(self.tasks[name], completed=done, total=total, description=description)

    def __call__(self, event: dict) -> None:
        kind = event["type"]
        if kind == "stage":
            self.console.print(f"stage {event['name']}: {event['state']}", markup=False)
        elif kind == "timing":
            self._bar("timing", event["done"], event["total"], f"timing {event['layer']}")
        elif kind == "db":
            self._bar("db", event["done"], event["total"], f"database {event['layer']}")
        elif kind == "eval":
            best = event["best"]
            self._bar("eval", event["n"], None, f"search {event['phase']} best {best:.5g}" if best is not None else "search")
        elif kind == "baseline":
            self.console.print(f"baseline {event['name']}: loss {event['loss']:.5g}, predicted {event['predicted_speedup']:.3f}x")
        elif kind == "verify":
            self.console.print(f"verify: predicted {event['predicted']:.3f}x, measured {event['measured']:.3f}x")
        elif kind == "finetune":
            self._finetune(event)
        elif kind == "error":
            self.console.print(f"error: {event['message']}", markup=False)
        elif kind == "run_finished":
            self.close()

    def _finetune(self, event: dict) -> None:
        phase, epochs = event["phase"], event["epochs"]
        if phase == "started":
            self.console.print(
                f"finetune: {event.get('samples')} samples, loss {event.get('loss')}, {epochs} epochs"
                + (f", resuming at epoch {event['epoch'] + 1}" if event.get("resume") else ""), markup=False)
        elif phase == "step":
            self._bar("finetune", event["step"], event["steps"], f"finetune epoch {event['epoch'] + 1}/{epochs}")
        elif phase == "epoch":
            heldout = event.get("heldout")
            self.console.print(
                f"finetune epoch {event['epoch'] + 1}/{epochs}: loss {event['loss']:.5g}"
                + ("" if heldout is None else f", held-out {heldout:.4f}"), markup=False)
        elif phase == "verify":
            self.console.print(f"verify: predicted {event['predicted']:.3f}x, measured {event['measured']:.3f}x")
        elif phase in ("done", "interrupted", "failed"):
            self.close()

    def close(self) -> None:
        if self.started:
            self.progress.stop()
            self.started = False
