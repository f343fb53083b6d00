"""The run directory: create it for a profile, or reopen it to resume, and refuse what would mix runs.

A directory that already holds a run is reopened only with ``resume`` and only for the same
profile (its saved ``profile.toml``); the profile used is always saved there, and the run log
gets a ``run_started`` event with the profile, seed and environment.

What is refused (``RunError``, naming the directory): ``--out`` naming an existing file; a
non-empty directory without ``resume``; ``resume`` into a directory without a ``profile.toml``
(another program's files, or another run's log: not a run this command made) or whose
``profile.toml`` differs.  One exception: a directory holding only the ``profile.toml`` and
``events.jsonl`` of an attempt that ended (its log has ``run_finished``) before finishing any
stage, e.g. one that failed loading its model, has no work to keep, so a new run may start
there afresh (its log is replaced) and says so in a note.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from engine.core import atomic
from engine.core.environment import describe_environment
from engine.core.errors import RunError
from engine.core.events import EventLog, RunLogError, scan_log
from engine.core.profile import ProfileError, load_profile
from engine.core.profile_toml import to_toml
from engine.run.context import RunContext

NO_WORK_ENTRIES = {"profile.toml", "events.jsonl"}  # all an attempt leaves that finished no stage


def open_run(profile_path: str | Path, out: str | Path | None = None, resume: bool = False, listener=None) -> RunContext:
    """Create (or, with ``resume``, reopen) the run directory of a profile; its context, logging."""
    profile = load_profile(profile_path)
    run_dir = Path(out) if out else Path(profile.run.out_dir) / profile.run.name
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"run directory {run_dir} is an existing file, not a directory; choose another --out")
    fresh_log = False
    if run_dir.is_dir() and any(run_dir.iterdir()):
        unfinished = attempt_without_work(run_dir)
        if unfinished is not None and not (resume and _same_profile(run_dir, profile)):
            fresh_log = True
            note = (
                f"{run_dir} held only an attempt that stopped before finishing any stage ({unfinished}); "
                "this run starts there afresh and replaces its events.jsonl"
            )
            profile = dataclasses.replace(profile, notes=(*profile.notes, note))
        elif not resume:
            raise RunError(f"run directory {run_dir} already exists; add --resume to continue it or choose another --out")
        else:
            saved = run_dir / "profile.toml"
            if not saved.exists():
                raise RunError(
                    f"cannot resume {run_dir}: it has no profile.toml, so it is not a run directory `spdy run` made "
                    f"(it holds {', '.join(sorted(entry.name for entry in run_dir.iterdir())[:5])}); choose another --out"
                )
            try:
                previous = load_profile(saved)
            except ProfileError as exc:
                raise RunError(f"cannot resume: {exc}") from None
            if _results_keys(previous) != _results_keys(profile):
                raise RunError(f"cannot resume {run_dir}: its profile.toml differs from {profile_path}")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot create run directory {run_dir}: {exc.strerror or exc}") from None
    if fresh_log:
        (run_dir / "events.jsonl").unlink(missing_ok=True)
    atomic.write_text(run_dir / "profile.toml", to_toml(profile))
    log = EventLog(run_dir / "events.jsonl", listener=listener)
    log.emit("run_started", profile=profile.to_dict(), seed=profile.run.seed, resume=resume, environment=describe_environment())
    return RunContext(profile, run_dir, log)


def attempt_without_work(run_dir: Path) -> str | None:
    """How the attempt in ``run_dir`` ended, if it ended without finishing any stage and left no
    product (only profile.toml and a run log whose last attempt logged run_finished); else None.

    A run still going (no run_finished yet), a killed one, or a directory with anything else in it
    is kept: it may hold work, or be another program's."""
    names = {entry.name for entry in run_dir.iterdir()}
    if names != NO_WORK_ENTRIES:
        return None
    try:
        events = scan_log(run_dir / "events.jsonl").events
    except RunLogError:
        return None
    starts = [row for row, event in enumerate(events) if event["type"] == "run_started"]
    if any(event["type"] == "stage" and event.get("state") == "done" for event in events):
        return None
    last = events[starts[-1]:]
    finished = [event for event in last if event["type"] == "run_finished"]
    if not finished:
        return None
    errors = [str(event.get("message", "")) for event in last if event["type"] == "error"]
    status = str(finished[-1].get("status", "?"))
    return f"{status}: {errors[-1]}" if errors else status


# Where work runs, which never changes a result: a killed run may resume with another executor.
PLACEMENT_KEYS = {"search": ("executor", "workers"), "database": ("executor", "workers"), "ray": ("address", "shared_path")}


def _results_keys(profile) -> dict:
    """The profile as a dict without ``PLACEMENT_KEYS``."""
    values = profile.to_dict()
    return {section: {key: value for key, value in body.items() if key not in PLACEMENT_KEYS.get(section, ())}
            for section, body in values.items()}


def _same_profile(run_dir: Path, profile) -> bool:
    try:
        return load_profile(run_dir / "profile.toml").to_dict() == profile.to_dict()
    except ProfileError:
        return False
