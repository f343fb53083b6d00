"""Start `spdy run` as a detached child, and stop it on request.

The run gets its own session (so its own process group): quitting the UI, or losing the SSH
connection that carried it, never signals the run.  Its stdout and stderr go to files rather than
pipes, so nothing blocks or breaks when the UI is gone; they sit beside the run directory
(``runs/NAME.stdout.log``, ``runs/NAME.stderr.log``) because `spdy run` wants its directory new
or empty.  Stopping sends SIGINT to the whole group, which the CLI turns into exit code 130.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class RunProcess:
    """A `spdy run` child writing into ``run_dir``."""

    process: subprocess.Popen
    profile: Path
    run_dir: Path

    @property
    def exit_code(self) -> int | None:
        """None while running, else its exit status (negative: killed by that signal)."""
        return self.process.poll()

    def stop(self) -> None:
        """Ask the run to stop, as Ctrl-C would (its whole process group)."""
        if self.exit_code is None:
            os.killpg(self.process.pid, signal.SIGINT)

    @property
    def resume_command(self) -> str:
        return f"spdy run {self.profile} --out {self.run_dir} --resume"

    def stderr_tail(self, lines: int = 6) -> list[str]:
        """The last lines the run wrote to stderr."""
        path = console_log(self.run_dir, "stderr")
        if not path.exists():
            return []
        return path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]


def console_log(run_dir: Path, stream: str) -> Path:
    """Where the child's stdout or stderr goes: runs/NAME.stdout.log, runs/NAME.stderr.log."""
    return run_dir.with_name(f"{run_dir.name}.{stream}.log")


def new_run_dir(profile: Path, runs_root: Path) -> Path:
    """runs/<profile name>-<date>-<time>, unique even for two starts within a second."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate, suffix = runs_root / f"{profile.stem}-{stamp}", 1
    while candidate.exists() or console_log(candidate, "stderr").exists():
        suffix += 1
        candidate = runs_root / f"{profile.stem}-{stamp}-{suffix}"
    return candidate


def start_run(profile: Path, run_dir: Path, command: list[str] | None = None, resume: bool = False) -> RunProcess:
    """Start ``spdy run PROFILE --out RUN_DIR [--resume]`` (or ``command``) detached; run_dir is left to the run."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    command = command or [sys.executable, "-m", "spdy_tui.cli", "run", str(profile), "--out", str(run_dir), *(["--resume"] if resume else [])]
    with open(console_log(run_dir, "stdout"), "ab") as stdout, open(console_log(run_dir, "stderr"), "ab") as stderr:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    return RunProcess(process, profile, run_dir)
