"""The state of a run, folded from its event log (architecture.md, "The event log").

``RunState.apply(event)`` is a pure reducer: the TUI feeds it events as a live log grows, and
``spdy inspect`` feeds it a whole finished log through ``summarise(path)``.  Unknown event types
are ignored (the schema is extended, never renamed) and a missing optional field never raises,
so a log written by a newer or older run still reads.

``summarise`` refuses a file that is not a run log, or an empty one (``RunLogError``, from
``engine.core.events.scan_log``), and records in ``unreadable_lines`` how many complete lines in
the log were not events, so a viewer can warn about them.

History: every ``best`` event marks a point of the run; ``RunState.at_best(i)`` is the state as
it was when the i-th best allocation was found, so a viewer can step through the search.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Iterable

from engine.core.events import RunLogError, scan_log
from engine.core.grid import level_sparsity

EVAL_RATE_WINDOW = 50  # evaluations per second are measured over the latest this many


@dataclass
class Progress:
    """A table being filled (layer, level) cell by cell: the timing table or the database.

    ``done`` / ``total`` count events (the in-model profiler sends one per sample, several per
    cell); ``per_layer`` counts each layer's distinct levels seen."""

    done: int = 0
    total: int = 0
    levels_seen: dict[str, set[str]] = field(default_factory=dict)  # layer -> levels, layers in first-seen order
    first_t: float | None = None
    first_done: int = 0  # ``done`` at first_t: a resumed run starts part way
    last_t: float | None = None

    def add(self, event: dict) -> None:
        t, done = event.get("t"), int(event.get("done", self.done + 1))
        if self.first_t is None:
            self.first_t, self.first_done = t, done - 1
        self.last_t = t
        self.done, self.total = done, int(event.get("total", max(self.total, done)))
        self.levels_seen.setdefault(str(event.get("layer", "?")), set()).add(str(event.get("level", "?")))

    @property
    def per_layer(self) -> dict[str, int]:
        """Distinct levels seen per layer, in first-seen order."""
        return {layer: len(levels) for layer, levels in self.levels_seen.items()}

    def restart_clock(self) -> None:
        """A resumed run: measure the rate from its next event, not across the pause."""
        self.first_t = None

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    def eta_seconds(self) -> float | None:
        """Seconds left at the rate seen so far (event times only, never the wall clock)."""
        if self.total and self.done >= self.total:
            return 0.0
        finished_here = self.done - self.first_done
        if self.first_t is None or self.last_t is None or finished_here < 2 or self.last_t <= self.first_t:
            return None
        return (self.total - self.done) * (self.last_t - self.first_t) / finished_here


@dataclass(frozen=True)
class EvalPoint:
    """One scored candidate; ``loss`` is None when scoring was abandoned (certainly no better)."""

    n: int
    phase: str
    k: int
    loss: float | None
    best: float | None
    accepted: bool
    predicted_speedup: float | None
    t: float | None


@dataclass(frozen=True)
class LayerChoice:
    """One layer of an allocation: its level, and its predicted time as a share of the budget."""

    name: str
    level: str
    sparsity: float | None
    seconds: float | None
    share: float | None


@dataclass
class RunState:
    run_started: dict | None = None
    stages: dict[str, str] = field(default_factory=dict)  # name -> started|done|skipped, in order
    timing: Progress = field(default_factory=Progress)
    database: Progress = field(default_factory=Progress)
    gap: Progress = field(default_factory=Progress)  # global AdaPrune steps on the final model
    gap_loss: float | None = None  # its latest step's training loss
    measured: dict[str, dict[str, float]] = field(default_factory=dict)  # layer -> level -> seconds
    evaluations: list[EvalPoint] = field(default_factory=list)
    best_history: list[dict] = field(default_factory=list)
    baselines: dict[str, dict] = field(default_factory=dict)
    final: dict | None = None  # the final model's calibration loss and held-out quality
    verify: dict | None = None
    tighten: list[dict] = field(default_factory=list)  # the closed loop's rounds (target tightened, search continued)
    relax: list[dict] = field(default_factory=list)  # the closed loop spending a surplus (searching, then kept or restored)
    errors: list[str] = field(default_factory=list)
    finished: dict | None = None
    first_t: float | None = None
    last_t: float | None = None
    unreadable_lines: int = 0  # complete lines of the log that were not events (set by whoever read the log)
    events: list[dict] = field(default_factory=list, repr=False)
    _best_positions: list[int] = field(default_factory=list, repr=False)  # index in events of each best

    @classmethod
    def from_events(cls, events: Iterable[dict]) -> RunState:
        state = cls()
        for event in events:
            state.apply(event)
        return state

    def apply(self, event: dict) -> None:
        """Fold one event into the state."""
        kind, t = event.get("type"), event.get("t")
        self.events.append(event)
        if isinstance(t, (int, float)):
            self.first_t = t if self.first_t is None else self.first_t
            self.last_t = t
        if kind == "run_started":
            self.run_started = event
            self.finished = None  # a resumed run: the earlier run_finished (interrupted) no longer holds
            self.timing.restart_clock()
            self.database.restart_clock()
        elif kind == "stage":
            self.stages[str(event.get("name"))] = str(event.get("state"))
        elif kind == "timing":
            self.timing.add(event)
            if isinstance(event.get("seconds"), (int, float)):
                self.measured.setdefault(str(event.get("layer")), {})[str(event.get("level"))] = event["seconds"]
        elif kind == "db":
            self.database.add(event)
        elif kind == "gap":
            self.gap.add(event)
            loss = event.get("loss")
            self.gap_loss = float(loss) if isinstance(loss, (int, float)) else None
        elif kind == "eval":
            self.evaluations.append(_eval_point(event))
        elif kind == "best":
            self._best_positions.append(len(self.events) - 1)
            self.best_history.append(event)
        elif kind == "baseline":
            self.baselines[str(event.get("name"))] = event
        elif kind == "final":
            self.final = event
        elif kind == "verify":
            self.verify = event
        elif kind == "tighten":
            self.tighten.append(event)
        elif kind == "relax":
            self.relax.append(event)
        elif kind == "error":
            self.errors.append(str(event.get("message")))
        elif kind == "run_finished":
            self.finished = event

    # ------------------------------------------------------------------ history
    def at_best(self, index: int) -> RunState:
        """The state as of the index-th best change (negative counts from the latest).

        It holds every event logged before that ``best`` event, the event itself, and the
        ``eval`` events of the same or earlier evaluations right after it (a writer may log the
        evaluation after announcing the best); nothing the search did later.
        """
        position = self._best_positions[index]
        best_n = self.best_history[index].get("n", math.inf)
        end = position + 1
        while end < len(self.events) and self.events[end].get("type") == "eval" and self.events[end].get("n", 0) <= best_n:
            end += 1
        return RunState.from_events(self.events[:end])

    # ------------------------------------------------------------------ derived
    @property
    def best(self) -> dict | None:
        return self.best_history[-1] if self.best_history else None

    @property
    def best_loss(self) -> float | None:
        if self.best is not None:
            return _finite(self.best.get("loss"))
        return self.evaluations[-1].best if self.evaluations else None

    @property
    def predicted_speedup(self) -> float | None:
        """Of the best allocation: from its own event, else from the evaluation that found it."""
        if self.best is None:
            return None
        if self.best.get("predicted_speedup") is not None:
            return self.best["predicted_speedup"]
        found = [point for point in self.evaluations if point.n == self.best.get("n")]
        return found[-1].predicted_speedup if found else None

    @property
    def elapsed_seconds(self) -> float | None:
        if self.finished is not None and isinstance(self.finished.get("wall_seconds"), (int, float)):
            return self.finished["wall_seconds"]
        return None if self.first_t is None else self.last_t - self.first_t

    def evals_per_second(self) -> float | None:
        recent = [point.t for point in self.evaluations[-EVAL_RATE_WINDOW:] if point.t is not None]
        if len(recent) < 2 or recent[-1] <= recent[0]:
            return None
        return (len(recent) - 1) / (recent[-1] - recent[0])

    def allocation(self) -> list[LayerChoice]:
        """The best allocation per layer; times from the event, else from measured timings."""
        if self.best is None:
            return []
        levels = [str(level) for level in self.best.get("levels", [])]
        names = self.best.get("names") or list(self.timing.per_layer)
        if len(names) != len(levels):
            names = [f"layer {row}" for row in range(len(levels))]
        times = self.best.get("times")
        if not times or len(times) != len(levels):
            times = [self.measured.get(name, {}).get(level) for name, level in zip(names, levels)]
        known = [seconds for seconds in times if seconds is not None]
        budget = self.best.get("budget") or (sum(known) if len(known) == len(times) else None)
        return [
            LayerChoice(name, level, _sparsity(level), seconds, seconds / budget if budget and seconds is not None else None)
            for name, level, seconds in zip(names, levels, times)
        ]


def summarise(path: str | os.PathLike) -> RunState:
    """The state of a run from its whole log (a run directory or its events.jsonl).

    RunLogError when there is no log, or it is empty or not a run log."""
    path = os.fspath(path)
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "events.jsonl")):
            raise RunLogError(f"{path}: not a run directory (it has no events.jsonl)")
        path = os.path.join(path, "events.jsonl")
    elif not os.path.exists(path):
        raise RunLogError(f"{path}: no such run log")
    scan = scan_log(path)
    state = RunState.from_events(scan.events)
    state.unreadable_lines = scan.unreadable
    return state


def unreadable_warning(count: int) -> str:
    """What a viewer says about ``count`` unreadable lines (empty for none)."""
    if not count:
        return ""
    lines = "line" if count == 1 else "lines"
    return (
        f"{count} {lines} of the run log could not be read and {'was' if count == 1 else 'were'} skipped "
        "(a line cut short when a killed run was resumed, or a damaged file)"
    )


def _eval_point(event: dict) -> EvalPoint:
    return EvalPoint(
        n=int(event.get("n", 0)),
        phase=str(event.get("phase", "")),
        k=int(event.get("k", 0)),
        loss=_finite(event.get("loss")),
        best=_finite(event.get("best")),
        accepted=bool(event.get("accepted", False)),
        predicted_speedup=event.get("predicted_speedup"),
        t=event.get("t"),
    )


def _finite(value) -> float | None:
    """A loss as a float; None for null, Infinity (an abandoned candidate) or anything odd."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _sparsity(level: str) -> float | None:
    try:
        return level_sparsity(level)
    except ValueError:
        return None


def relax_line(event: dict) -> str:
    """What a viewer says about a ``relax`` event (the closed loop spending a measured surplus)."""
    measured, target = event.get("measured", math.nan), event.get("target", math.nan)
    searched = event.get("search_target", math.nan)
    if event.get("outcome") == "searching":
        return f"closed loop: measured {measured:.3f}x > target {target:g}x; searching at {searched:.3f}x to spend it on quality"
    verdict = "kept" if event.get("outcome") == "kept" else f"short of {target:g}x, the faster model restored"
    return f"closed loop: the model searched at {searched:.3f}x measured {measured:.3f}x: {verdict}"
