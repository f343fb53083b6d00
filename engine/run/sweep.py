"""`spdy sweep`: one timing table and one database, then a search per target speedup.

    DIR/sweep.json          the sweep: profile, targets, and each run's directory and state (this module owns it)
    DIR/shared/             a run of the profile's first two stages only (timings.json, db/); its profile
                            keeps search.target = 1 (no search runs there)
    DIR/target-<X>/         the whole run at target X, with timings.json and db/ as symbolic links to
                            ../shared/ (nothing is copied), so its timings and database stages are skipped
    DIR/tradeoff.md, .png   the trade-off across the finished runs (``engine.export.tradeoff``)

Nothing in a target run depends on the target before the search (the timing table's fingerprint
and the database's completeness do not name it), so the shared products serve every target, and
each target run is a run like any other: `spdy run`'s stages, resumable, inspectable.  The runs go
one after another, smallest target first; a target the table cannot meet is recorded as
``infeasible`` and the sweep goes on.  Resuming (``resume``) skips the runs that finished, continues
the one that was interrupted, and may add targets to the sweep.

States of a run in sweep.json: pending, running, done, infeasible, failed, interrupted.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from pathlib import Path
from typing import Callable

from engine.core.errors import RunError
from engine.core.profile import Profile, load_profile
from engine.core.profile_toml import to_toml
from engine.export.result import ResultError, has_result, read_json_object, write_json
from engine.export.tradeoff import MARKDOWN, PNG, read_run_points, write_tradeoff
from engine.run.directory import open_run
from engine.run.pipeline import execute
from engine.search.dp import InfeasibleTarget

SWEEP = "sweep.json"
SHARED = "shared"
SHARED_PRODUCTS = ("timings.json", "db")  # linked into every target run
SHARED_STAGES = ("timings", "database")
STATES = ("pending", "running", "done", "infeasible", "failed", "interrupted")


def parse_targets(text: str) -> tuple[float, ...]:
    """``"1.25,1.5,2"`` -> (1.25, 1.5, 2.0), sorted; ``RunError`` naming the value that is not a speedup."""
    targets: list[float] = []
    for item in (part.strip() for part in str(text).split(",")):
        if not item:
            continue
        try:
            value = float(item)
        except ValueError:
            raise RunError(f"--targets: {item!r} is not a number (give speedups like 1.25,1.5,2)") from None
        if not math.isfinite(value) or value < 1.0:
            raise RunError(f"--targets: {item!r} is not a speedup (each target must be a finite number >= 1)")
        if value in targets:
            raise RunError(f"--targets: {item!r} is given twice")
        targets.append(value)
    if not targets:
        raise RunError(f"--targets: no target in {text!r} (give speedups like 1.25,1.5,2)")
    return tuple(sorted(targets))


def target_dir(target: float) -> str:
    """The run directory's name for a target: target-1.25, target-2."""
    return f"target-{target:g}"


def is_sweep(path: str | os.PathLike) -> bool:
    return (Path(path) / SWEEP).is_file()


def read_sweep(directory: str | os.PathLike) -> dict | None:
    """DIR/sweep.json, or None when there is none (or it is not a sweep record)."""
    try:
        record = read_json_object(Path(directory) / SWEEP, "a sweep record")
    except ResultError:
        return None
    return record if isinstance(record.get("runs"), list) else None


def write_sweep(directory: str | os.PathLike, record: dict) -> None:
    write_json(Path(directory) / SWEEP, record)


def run_is_finished(run_dir: Path) -> bool:
    """Every stage's product is there: result.json and the report (the last stage's)."""
    return has_result(run_dir) and (run_dir / "report.md").exists()


def new_record(profile_path: str, targets: tuple[float, ...]) -> dict:
    return {
        "version": 1,
        "profile": str(profile_path),
        "targets": sorted(targets),
        "metric": None,
        "shared": {"dir": SHARED, "state": "pending", "message": ""},
        "runs": [{"target": target, "dir": target_dir(target), "state": "pending", "message": ""} for target in sorted(targets)],
        "tradeoff": None,
    }


def _merged(record: dict, targets: tuple[float, ...]) -> dict:
    """A resumed sweep with ``targets`` added (runs already listed keep their state)."""
    known = {run["target"] for run in record["runs"]}
    runs = record["runs"] + [{"target": t, "dir": target_dir(t), "state": "pending", "message": ""}
                             for t in targets if t not in known]
    runs.sort(key=lambda run: run["target"])
    return {**record, "targets": [run["target"] for run in runs], "runs": runs}


def link_shared(run_dir: Path) -> None:
    """timings.json and db/ of the run as relative links to the sweep's shared run (none replaced)."""
    for name in SHARED_PRODUCTS:
        link = run_dir / name
        if not link.exists() and not link.is_symlink():
            link.symlink_to(Path("..") / SHARED / name)


class Sweep:
    """One sweep directory being worked through; ``run()`` does it all."""

    def __init__(self, profile_path: str | os.PathLike, targets: tuple[float, ...], out: str | os.PathLike,
                 resume: bool = False, listener: Callable[[], Callable] | None = None,
                 on_note: Callable[[str], None] | None = None, source: str | None = None):
        self.profile_path, self.out = Path(profile_path), Path(out)
        self.source = source or str(profile_path)  # how messages and sweep.json name the profile
        self.profile: Profile = load_profile(self.profile_path)
        self.listener, self.on_note = listener, on_note or (lambda _text: None)
        if self.out.exists() and not self.out.is_dir():
            raise RunError(f"sweep directory {self.out} is an existing file; choose another --out")
        existing = read_sweep(self.out) if self.out.is_dir() else None
        if self.out.is_dir() and any(self.out.iterdir()):
            if not resume:
                raise RunError(f"sweep directory {self.out} already exists; add --resume to continue it or choose another --out")
            if existing is None:
                raise RunError(f"cannot resume {self.out}: it has no {SWEEP}, so it is not a sweep `spdy sweep` made")
        self.record = _merged(existing, targets) if existing else new_record(self.source, targets)
        self.record["profile"] = self.source

    # ------------------------------------------------------------------ the steps
    def run(self) -> dict:
        """The shared stages, then every target's run; sweep.json and the trade-off kept up to date."""
        self.out.mkdir(parents=True, exist_ok=True)
        self.save()
        with tempfile.TemporaryDirectory(prefix="spdy-sweep-") as folder:
            self._shared(Path(folder))
            for number, run in enumerate(self.record["runs"], start=1):
                if run["state"] == "done" and run_is_finished(self.out / run["dir"]):
                    self.on_note(f"target {run['target']:g}x: done already ({self.out / run['dir']})")
                    continue
                self.on_note(f"target {run['target']:g}x ({number} of {len(self.record['runs'])}): {self.out / run['dir']}")
                self._target(run, Path(folder))
        self._write_tradeoff()  # also on a resume with every run done: `spdy bench` may have added ONNX Runtime points
        return self.record

    def _shared(self, folder: Path) -> None:
        shared, state = self.out / SHARED, self.record["shared"]
        if state["state"] == "done" and all((shared / name).exists() for name in SHARED_PRODUCTS):
            return
        self.on_note(f"timing table and database, once for every target: {shared}")
        profile = self._with_target(1.0)
        self._attempt(state, lambda: execute(self._open(profile, folder, shared), SHARED_STAGES))

    def _target(self, run: dict, folder: Path) -> None:
        run_dir = self.out / run["dir"]
        profile = self._with_target(run["target"])

        def work() -> None:
            ctx = self._open(profile, folder, run_dir)
            link_shared(run_dir)
            execute(ctx)

        self._attempt(run, work)
        self._write_tradeoff()

    def _attempt(self, entry: dict, work: Callable[[], None]) -> None:
        """Run ``work`` with ``entry``'s state kept in sweep.json; an infeasible target is recorded, not raised."""
        entry.update(state="running", message="")
        self.save()
        try:
            work()
        except InfeasibleTarget as exc:
            entry.update(state="infeasible", message=str(exc))
            self.on_note(f"{entry['dir']}: infeasible (the table cannot meet it); going on")
            return
        except KeyboardInterrupt:
            entry.update(state="interrupted", message="interrupted; continue with --resume")
            raise
        except BaseException as exc:
            entry.update(state="failed", message=str(exc))
            raise
        finally:
            self.save()
        entry.update(state="done")
        self.save()

    # ------------------------------------------------------------------ helpers
    def _with_target(self, target: float) -> Profile:
        return dataclasses.replace(self.profile, search=dataclasses.replace(self.profile.search, target=target))

    def _open(self, profile: Profile, folder: Path, run_dir: Path):
        """open_run on the profile written to a temporary file; messages name the user's profile instead."""
        file = folder / f"{run_dir.name}.toml"
        file.write_text(to_toml(profile))
        resume = run_dir.is_dir() and any(run_dir.iterdir())
        try:
            return open_run(file, run_dir, resume, listener=self.listener() if self.listener else None)
        except RunError as exc:
            raise RunError(str(exc).replace(str(file), f"{self.source} (target {profile.search.target:g})")) from None

    def points(self) -> list:
        return [point for run in self.record["runs"] if run["state"] == "done"
                for point in read_run_points(self.out / run["dir"])]

    def _write_tradeoff(self) -> None:
        points = self.points()
        if not points:
            return
        if self.record.get("metric") is None:
            first = next(run for run in self.record["runs"] if run["state"] == "done")
            self.record["metric"] = read_json_object(self.out / first["dir"] / "result.json").get("heldout_metric")
        write_tradeoff(self.out, points, self.record["metric"] or "held-out")
        self.record["tradeoff"] = {"markdown": MARKDOWN, "png": PNG}
        self.save()

    def save(self) -> None:
        write_sweep(self.out, self.record)


def sweep(profile_path: str | os.PathLike, targets: tuple[float, ...], out: str | os.PathLike, resume: bool = False,
          listener: Callable[[], Callable] | None = None, on_note: Callable[[str], None] | None = None,
          source: str | None = None) -> dict:
    """Run (or resume) a sweep; the sweep record (sweep.json's content).  ``source`` names the profile in
    sweep.json and messages when ``profile_path`` is a temporary file (a profile with --set overrides)."""
    return Sweep(profile_path, targets, out, resume, listener, on_note, source).run()
