"""`spdy run`, `spdy timings`, `spdy db` and `spdy verify`: the stages of a run, all or some."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

from spdy_tui.cli.base import (
    argument,
    err,
    existing_dir,
    fail,
    flag,
    json_flag,
    note,
    option,
    out,
    output_dir,
    print_json,
)
from spdy_tui.cli.check import PROFILE_ARGUMENT, SET_OPTION
from spdy_tui.cli.overrides import load, profile_file

OUT_OPTION = option(None, "--out", metavar="DIR", help="Run directory (default: <run.out_dir>/<run.name>).")
RESUME_OPTION = flag("--resume", help="Continue an interrupted run in the same directory.")


def run_stages(profile: Path, overrides: list[str], out_dir: Optional[Path], resume: bool,
               only: Optional[tuple[str, ...]] = None) -> tuple[Path, dict]:
    """Run the stages (``only`` some, or all) of a profile; its run directory and result.json's content."""
    output_dir(out_dir)
    resolved = load(profile, overrides)
    for text in resolved.notes:
        note(text)
    from engine.run.pipeline import execute, open_run
    from spdy_tui.progress import StderrProgress

    listener = StderrProgress(err)
    try:
        with profile_file(profile, overrides, resolved) as path:
            run = open_run(path, out_dir, resume, listener=listener)
            for text in run.profile.notes:  # what opening the run directory noticed
                if text not in resolved.notes:
                    note(text)
            err.print(f"run directory: {run.run_dir}")
            return run.run_dir, (execute(run, only) if only else execute(run))
    finally:
        listener.close()


def run(
    profile: Path = PROFILE_ARGUMENT,
    out_dir: Optional[Path] = OUT_OPTION,
    resume: bool = RESUME_OPTION,
    overrides: list[str] = SET_OPTION,
    as_json: bool = json_flag("result.json"),
) -> None:
    """Run everything: timings, database, search, baselines, final model, verify, export."""
    _, result = run_stages(profile, overrides, out_dir, resume)
    if as_json:
        print_json(result)
    elif result:
        from spdy_tui.inspect import quality_text  # (imports torch: not at CLI start-up)

        measured = result.get("measured_speedup")
        out.print(
            f"target {result['target_speedup']:g}x: predicted {result['predicted_speedup']:.3f}x, "
            f"measured {'-' if measured is None else f'{measured:.3f}x'} (dense baseline: {result['dense_baseline']}); "
            f"calibration loss {result['loss']['calibration']:.5g}, held-out "
            + (quality_text(result["quality"]) if result.get("quality") else f"{result['heldout_metric']} {result['loss']['heldout']:.4f}")
        )


def timings(
    profile: Path = PROFILE_ARGUMENT,
    out_dir: Optional[Path] = OUT_OPTION,
    resume: bool = RESUME_OPTION,
    fmt: str = option("json", "--format", metavar="FORMAT", help="json (timings.json only), or spdy-txt: also timings.txt, SPDY's text format."),
    overrides: list[str] = SET_OPTION,
    as_json: bool = json_flag("the timing table"),
) -> None:
    """Measure every prunable layer at every level on this machine (writes timings.json)."""
    if fmt not in ("json", "spdy-txt"):
        raise fail(f"--format must be json or spdy-txt, got {fmt!r}")
    run_dir, _ = run_stages(profile, overrides, out_dir, resume, ("timings",))
    from engine.timing.table import load_table, save_table

    files = [run_dir / "timings.json"]
    table = load_table(files[0])
    if fmt == "spdy-txt":
        files.append(run_dir / "timings.txt")
        save_table(table, files[1], "spdy-txt")
    for file in files:
        err.print(f"wrote {file}")
    if as_json:
        print_json({"run_dir": str(run_dir), "files": [str(file) for file in files], "table": table.to_json()})


def db(
    profile: Path = PROFILE_ARGUMENT,
    out_dir: Optional[Path] = OUT_OPTION,
    resume: bool = RESUME_OPTION,
    overrides: list[str] = SET_OPTION,
    as_json: bool = json_flag("the database's summary"),
) -> None:
    """Build the database of pruned, reconstructed weights (db/ in the run directory)."""
    run_dir, _ = run_stages(profile, overrides, out_dir, resume, ("database",))
    from engine.database.store import Database

    directory = run_dir / "db"
    database = Database.open(directory)
    size = database.disk_bytes()
    err.print(f"database {directory}: {len(database.layers())} layers, {size / 2**20:.1f} MiB on disk")
    if as_json:
        print_json({"run_dir": str(run_dir), "database": str(directory), "layers": len(database.layers()), "disk_bytes": size})


def verify(
    run_dir: Path = argument("A run directory with a result.json.", "RUN_DIR"),
    threads: Optional[int] = option(None, "--threads", metavar="N", min=1,
                                    help="CPU threads for the measurement (default: the run's hardware.threads)."),
    as_json: bool = json_flag("the verify record"),
) -> None:
    """Re-measure a run's speedup end to end with sparse kernels."""
    existing_dir(run_dir, "run directory")
    if not (run_dir / "result.json").is_file():
        raise fail(f"{run_dir}: no result.json (run `spdy run` first)")
    if (run_dir / "state.json").is_file() and not (run_dir / "profile.toml").is_file():
        run = run_dir.parent if (run_dir.parent / "profile.toml").is_file() else "RUN_DIR"
        raise fail(f"{run_dir} is a fine-tuning, not a run: measure it with `spdy finetune {run} --out {run_dir} --resume`")
    from engine.core.events import EventLog
    from engine.export.result import read_result
    from engine.run.context import RunContext
    from engine.run.stages import verify as verify_stage

    with EventLog(run_dir / "events.jsonl") as log:
        ctx = RunContext.from_dir(run_dir, log)
        if threads is not None:
            hardware = replace(ctx.profile.hardware, threads=threads)
            ctx = RunContext(replace(ctx.profile, hardware=hardware), run_dir, log)
        verify_stage.remeasure(ctx)
    outcome = read_result(run_dir)["verify"]
    if as_json:
        print_json(outcome)
        return
    out.print(
        f"predicted {outcome['predicted']:.3f}x, measured {outcome['measured']:.3f}x "
        f"(dense {outcome['dense_seconds'] * 1e3:.1f} ms on {outcome['dense_baseline']}, sparse {outcome['sparse_seconds'] * 1e3:.1f} ms)"
    )


def bench(
    run_dir: Path = argument("A finished run directory.", "RUN_DIR"),
    rounds: int = option(10, "--rounds", metavar="N", min=1, help="Interleaved rounds (each runtime runs --calls timed passes per round)."),
    calls: int = option(3, "--calls", metavar="N", min=1, help="Timed passes per runtime per round."),
    weights: Optional[Path] = option(None, "--weights", metavar="FILE",
                                     help="Time this pruned.safetensors (a fine-tuning's) as the pruned model; "
                                          "the bench files go next to it."),
    as_json: bool = json_flag("the bench record"),
) -> None:
    """The deployable model against every dense path (torch, oneDNN, compiled, ONNX Runtime fp32 and int8),
    each in its own process, interleaved; writes bench.json, bench.md and bench.png into the run directory
    (with --weights, into that file's folder)."""
    existing_dir(run_dir, "run directory")
    if not (run_dir / "final.safetensors").is_file():
        raise fail(f"{run_dir}: no final.safetensors (run `spdy run` first)")
    if weights is not None and not weights.is_file():
        raise fail(f"--weights {weights}: no such file")
    from engine.core.environment import describe_environment
    from engine.deploy import bench as benchmark
    from engine.export.files import write_bench
    from engine.export.result import read_result
    from engine.run.context import RunContext

    ctx = RunContext.from_dir(run_dir)
    report = benchmark.bench(ctx, read_result(run_dir), rounds=rounds, calls=calls, on_progress=lambda line: err.print(line),
                             weights=weights)
    table = benchmark.markdown(report, describe_environment())
    write_bench(run_dir if weights is None else weights.parent, report, table, benchmark.png(report))
    if as_json:
        print_json(report)
    else:
        out.print(table)
