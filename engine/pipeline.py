"""`spdy run`: the stages of a run, their products in the run directory, and resume.

    timings -> database -> search -> baselines -> final -> verify -> export

Each stage writes its product atomically into the run directory and is skipped (``stage``
event with state "skipped") when a valid product is already there, so a run killed at any point
resumes with ``resume=True`` and loses no finished work: the timing table and the finished
database layers are on disk, and the search replays every evaluation already in the log (its
trajectory is deterministic, so it reaches the same allocation as an uninterrupted run).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine import atomic
from engine.config import Profile, ProfileError, load_profile, to_toml
from engine.events import EventLog, read_events

STAGES = ("timings", "database", "search", "baselines", "final", "verify", "export")


class RunError(RuntimeError):
    """The run cannot go on; the message says why and what to do."""


@dataclass
class Run:
    profile: Profile
    run_dir: Path
    log: EventLog
    started: float = field(default_factory=time.time)
    state: dict = field(default_factory=dict)  # what earlier stages hand to later ones


def open_run(profile_path: str | Path, out: str | Path | None = None, resume: bool = False, listener=None) -> Run:
    """Create (or, with ``resume``, reopen) the run directory of a profile."""
    profile = load_profile(profile_path)
    run_dir = Path(out) if out else Path(profile.run.out_dir) / profile.run.name
    if run_dir.exists() and any(run_dir.iterdir()):
        if not resume:
            raise RunError(f"run directory {run_dir} already exists; add --resume to continue it or choose another --out")
        saved = run_dir / "profile.toml"
        if saved.exists():
            try:
                previous = load_profile(saved)
            except ProfileError as exc:
                raise RunError(f"cannot resume: {exc}") from None
            if previous.to_dict() != profile.to_dict():
                raise RunError(f"cannot resume {run_dir}: its profile.toml differs from {profile_path}")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(run_dir / "profile.toml", to_toml(profile))
    log = EventLog(run_dir / "events.jsonl", listener=listener)
    from engine.environment import describe_environment

    log.emit("run_started", profile=profile.to_dict(), seed=profile.run.seed, resume=resume, environment=describe_environment())
    return Run(profile, run_dir, log)


def execute(run: Run, only: tuple[str, ...] = STAGES) -> dict:
    """Run the ``only`` stages (all by default) in order, skipping finished ones; returns result.json's content."""
    from engine import finish, stages

    status = "failed"
    try:
        for name in (stage for stage in STAGES if stage in only):
            module = stages if hasattr(stages, f"stage_{name}") else finish
            step = getattr(module, f"stage_{name}")
            if getattr(module, f"done_{name}")(run):
                run.log.emit("stage", name=name, state="skipped")
                getattr(module, f"load_{name}")(run)
            else:
                run.log.emit("stage", name=name, state="started")
                step(run)
                run.log.emit("stage", name=name, state="done")
        status = "ok"
        return json.loads((run.run_dir / "result.json").read_text()) if (run.run_dir / "result.json").exists() else {}
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except Exception as exc:
        run.log.emit("error", message=str(exc))
        raise
    finally:
        run.log.emit("run_finished", status=status, wall_seconds=round(time.time() - run.started, 3))
        run.log.close()


def logged_evaluations(run_dir: Path) -> list[dict]:
    """The ``eval`` events already in a run's log (for replay on resume)."""
    path = run_dir / "events.jsonl"
    return [event for event in read_events(path) if event["type"] == "eval"] if path.exists() else []


def finite(value: float) -> float | None:
    """JSON has no inf: abandoned losses are written as null."""
    return value if isinstance(value, float) and math.isfinite(value) else None
