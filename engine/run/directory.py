"""The run directory: create it for a profile, or reopen it to resume, and refuse what would mix runs.

A directory that already holds a run is reopened only with ``resume`` and only for the same
profile (its saved ``profile.toml``); the profile used is always saved there, and the run log
gets a ``run_started`` event with the profile, seed and environment.
"""

from __future__ import annotations

from pathlib import Path

from engine.core import atomic
from engine.core.environment import describe_environment
from engine.core.errors import RunError
from engine.core.events import EventLog
from engine.core.profile import ProfileError, load_profile, to_toml
from engine.run.context import RunContext


def open_run(profile_path: str | Path, out: str | Path | None = None, resume: bool = False, listener=None) -> RunContext:
    """Create (or, with ``resume``, reopen) the run directory of a profile; its context, logging."""
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
    log.emit("run_started", profile=profile.to_dict(), seed=profile.run.seed, resume=resume, environment=describe_environment())
    return RunContext(profile, run_dir, log)
