"""`spdy sweep`: one timing table and one database, a search per target, and the trade-off table."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from spdy_tui.cli.base import Exit, err, fail, flag, json_flag, note, option, out, output_dir, print_json
from spdy_tui.cli.check import PROFILE_ARGUMENT, SET_OPTION
from spdy_tui.cli.overrides import load, profile_file

TARGETS_OPTION = option(..., "--targets", metavar="X,Y,...", help="Target speedups, comma-separated (e.g. 1.25,1.5,2,3).")
OUT_OPTION = option(None, "--out", metavar="DIR", help="Sweep directory (default: <run.out_dir>/<run.name>-sweep).")
RESUME_OPTION = flag("--resume", help="Continue an interrupted sweep (finished runs are kept; new targets are added).")


def sweep(
    profile: Path = PROFILE_ARGUMENT,
    targets: str = TARGETS_OPTION,
    out_dir: Optional[Path] = OUT_OPTION,
    resume: bool = RESUME_OPTION,
    overrides: list[str] = SET_OPTION,
    as_json: bool = json_flag("sweep.json"),
) -> None:
    """Sweep target speedups: the timing table and database once, a search per target (each its own
    run directory), then tradeoff.md and tradeoff.png in the sweep directory."""
    from engine.run.sweep import parse_targets, sweep as run_sweep
    from spdy_tui.progress import StderrProgress

    wanted = parse_targets(targets)
    output_dir(out_dir)
    resolved = load(profile, overrides)
    for text in resolved.notes:
        note(text)
    directory = out_dir or Path(resolved.run.out_dir) / f"{resolved.run.name}-sweep"
    err.print(f"sweep directory: {directory}")
    with profile_file(profile, overrides, resolved) as path:
        record = run_sweep(path, wanted, directory, resume, listener=lambda: StderrProgress(err),
                           on_note=lambda text: err.print(f"sweep: {text}"), source=resolved.source)
    table = directory / "tradeoff.md"
    if as_json:
        print_json(record)
    elif table.is_file():
        out.print(table.read_text().split("\n![")[0].rstrip())
        err.print(f"wrote {table} and {directory / 'tradeoff.png'}")
    unmet = [run for run in record["runs"] if run["state"] != "done"]
    if unmet:
        listed = "; ".join(f"{run['target']:g}x {run['state']}: {run['message']}" for run in unmet)
        raise fail(f"not every target was met: {listed}", Exit.INFEASIBLE)
