"""`spdy`: the headless command line.

stdout carries data (a table, or JSON with --json); stderr carries progress and diagnostics.
User mistakes end with a one-line message and a documented exit code, never a traceback.
"""

from __future__ import annotations

import json
import sys
from enum import IntEnum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="SPDY: find the per-layer sparsity that meets a measured speedup with the least loss.",
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)


class Exit(IntEnum):
    """Exit codes of every `spdy` command."""

    OK = 0
    INTERNAL = 1  # a bug: please report it with `spdy env`
    BAD_INPUT = 2  # missing file, malformed table or profile, bad option
    INFEASIBLE = 3  # the target speedup cannot be met on the timing table
    INTERRUPTED = 130


def fail(message: str, code: Exit = Exit.BAD_INPUT) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    return typer.Exit(int(code))


# ---------------------------------------------------------------------------- solve
@app.command()
def solve(
    timings: Path = typer.Option(..., "--timings", help="Timing table (original SPDY text format or our JSON)."),
    target: float = typer.Option(..., "--target", help="Target end-to-end speedup, e.g. 2.0."),
    skip: list[str] = typer.Option([], "--skip", help="Layer name or glob kept dense (its dense time still counts)."),
    costs: str = typer.Option("prior", "--costs", help="'prior' ((i/(n-1))^2 per level) or a JSON file {layer: [cost per level]}."),
    buckets: int = typer.Option(10_000, "--buckets", help="DP time buckets."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Solve the DP once on a timing table: the least-cost allocation within the speedup budget."""
    from engine.search import dp
    from engine.search.budget import make_problem
    from engine.timing.table import TableError, load_table

    try:
        table = load_table(timings)
        problem = make_problem(table, target, skip)
        cost_matrix = None if costs == "prior" else _read_costs(Path(costs), problem)
        allocation = problem.solve(cost_matrix, buckets)
    except (TableError, ValueError) as exc:
        if isinstance(exc, dp.InfeasibleTarget):
            raise fail(str(exc), Exit.INFEASIBLE) from None
        raise fail(str(exc)) from None
    for warning in table.warnings:
        err.print(f"note: {timings}: {warning}")
    result = {
        "target_speedup": target,
        "base_time": table.base,
        "prunable_time": table.prunable,
        "budget": problem.budget,
        "predicted_time": allocation.predicted_time,
        "predicted_speedup": allocation.predicted_speedup,
        "cost": allocation.cost,
        "layers": allocation.as_rows(),
    }
    if as_json:
        print(json.dumps(result, indent=1))
        return
    grid = Table(title=f"{timings.name} at {target:g}x", show_edge=False)
    for column in ("layer", "level", "time (s)", ""):
        grid.add_column(column, justify="left" if column in ("layer", "") else "right")
    for row, is_skipped in zip(result["layers"], problem.skipped):
        grid.add_row(row["name"], row["level"], f"{row['time']:.6f}", "skipped" if is_skipped else "")
    out.print(grid)
    out.print(
        f"predicted {allocation.predicted_time:.6f} s of budget {table.base / target:.6f} s "
        f"-> {allocation.predicted_speedup:.4f}x (target {target:g}x, max {problem.max_speedup:.4f}x), cost {allocation.cost:.4f}"
    )


def _read_costs(path: Path, problem) -> "object":
    import numpy as np

    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such costs file") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object {{layer name: [cost per level]}}")
    matrix = np.full(problem.times.shape, np.inf)
    for row, name in enumerate(problem.table.names):
        if name not in data:
            raise ValueError(f"{path}: no costs for layer {name!r}")
        values = data[name]
        if not isinstance(values, list) or len(values) != len(problem.levels[row]):
            raise ValueError(f"{path}: layer {name!r} needs {len(problem.levels[row])} costs (one per level)")
        matrix[row, : len(values)] = values
    return matrix


# ---------------------------------------------------------------------------- check
@app.command()
def check(profile: Path = typer.Argument(..., help="TOML profile to validate.")) -> None:
    """Validate a profile and print it with every default filled in."""
    from engine.core.profile import ProfileError, load_profile, to_toml

    try:
        resolved = load_profile(profile)
    except ProfileError as exc:
        raise fail(str(exc)) from None
    for note in resolved.notes:
        err.print(f"note: {note}", markup=False, highlight=False)
    print(f"# {profile}: valid; resolved profile with every default:")
    print(to_toml(resolved), end="")


# ---------------------------------------------------------------------------- env
@app.command()
def env(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Versions, CPU, threads and GPU: a block to paste into bug reports."""
    from engine.core.environment import describe_environment

    info = describe_environment()
    if as_json:
        print(json.dumps(info, indent=1))
        return
    print("```")
    for key, value in info.items():
        print(f"{key}: {value}")
    print("```")


# ---------------------------------------------------------------------------- runs
def _user_errors() -> tuple[type[Exception], ...]:
    """Exceptions that mean bad input (a message for the user), not a bug."""
    from engine.core.errors import RunError
    from engine.core.profile import ProfileError
    from engine.timing.table import TableError

    errors: list[type[Exception]] = [ProfileError, RunError, TableError]
    for module, name in (
        ("engine.model.sources", "ModelError"), ("engine.model.data", "DataError"), ("engine.backends.verify", "VerifyError"),
        ("engine.export.result", "ResultError"),
    ):
        try:
            errors.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _run_stages(profile: Path, run_dir: Optional[Path], resume: bool, only: Optional[tuple[str, ...]] = None) -> dict:
    from engine.search.dp import InfeasibleTarget
    from engine.run.pipeline import execute, open_run

    from spdy_tui.progress import StderrProgress

    listener = StderrProgress(err)
    try:
        run = open_run(profile, run_dir, resume, listener=listener)
        for note in run.profile.notes:
            err.print(f"note: {note}", markup=False, highlight=False)
        err.print(f"run directory: {run.run_dir}")
        return execute(run, only) if only else execute(run)
    except InfeasibleTarget as exc:
        raise fail(str(exc), Exit.INFEASIBLE) from None
    except _user_errors() as exc:
        raise fail(str(exc)) from None
    finally:
        listener.close()


OUT_OPTION = typer.Option(None, "--out", help="Run directory (default: <run.out_dir>/<run.name>).")
RESUME_OPTION = typer.Option(False, "--resume", help="Continue an interrupted run in the same directory.")


@app.command()
def run(
    profile: Path = typer.Argument(..., help="TOML profile."),
    out_dir: Optional[Path] = OUT_OPTION,
    resume: bool = RESUME_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print result.json on stdout."),
) -> None:
    """Run everything: timings, database, search, baselines, final model, verify, export."""
    result = _run_stages(profile, out_dir, resume)
    if as_json:
        print(json.dumps(result, indent=1))
    elif result:
        measured = result.get("measured_speedup")
        out.print(
            f"target {result['target_speedup']:g}x: predicted {result['predicted_speedup']:.3f}x, "
            f"measured {'-' if measured is None else f'{measured:.3f}x'} (dense baseline: {result['dense_baseline']}); "
            f"calibration loss {result['loss']['calibration']:.5g}, held-out {result['heldout_metric']} {result['loss']['heldout']:.4f}"
        )


@app.command()
def timings(
    profile: Path = typer.Argument(..., help="TOML profile."),
    out_dir: Optional[Path] = OUT_OPTION,
    resume: bool = RESUME_OPTION,
    fmt: str = typer.Option("json", "--format", help="Also write the table as 'spdy-txt' (timings.txt)."),
) -> None:
    """Measure every prunable layer at every level on this machine (writes timings.json)."""
    if fmt not in ("json", "spdy-txt"):
        raise fail(f"--format must be json or spdy-txt, got {fmt!r}")
    _run_stages(profile, out_dir, resume, ("timings",))
    if fmt == "spdy-txt":
        from engine.core.profile import load_profile
        from engine.timing.table import load_table, save_table

        resolved = load_profile(profile)
        directory = out_dir or Path(resolved.run.out_dir) / resolved.run.name
        save_table(load_table(directory / "timings.json"), directory / "timings.txt", "spdy-txt")
        err.print(f"wrote {directory / 'timings.txt'}")


@app.command()
def db(profile: Path = typer.Argument(..., help="TOML profile."), out_dir: Optional[Path] = OUT_OPTION, resume: bool = RESUME_OPTION) -> None:
    """Build the database of pruned, reconstructed weights (db/ in the run directory)."""
    from engine.core.profile import load_profile
    from engine.database.store import Database

    _run_stages(profile, out_dir, resume, ("database",))
    resolved = load_profile(profile)
    directory = (out_dir or Path(resolved.run.out_dir) / resolved.run.name) / "db"
    database = Database.open(directory)
    err.print(f"database {directory}: {len(database.layers())} layers, {database.disk_bytes() / 2**20:.1f} MiB on disk")


@app.command()
def verify(run_dir: Path = typer.Argument(..., help="A run directory with a result.json.")) -> None:
    """Re-measure a run's speedup end to end with sparse kernels."""
    from engine.core.events import EventLog
    from engine.export.result import read_result
    from engine.run.context import RunContext
    from engine.run.stages import verify as verify_stage

    try:
        if not (run_dir / "result.json").exists():
            raise fail(f"{run_dir}: no result.json (run `spdy run` first)")
        with EventLog(run_dir / "events.jsonl") as log:
            verify_stage.make(RunContext.from_dir(run_dir, log))
        outcome = read_result(run_dir)["verify"]
    except _user_errors() as exc:
        raise fail(str(exc)) from None
    out.print(
        f"predicted {outcome['predicted']:.3f}x, measured {outcome['measured']:.3f}x "
        f"(dense {outcome['dense_seconds'] * 1e3:.1f} ms on {outcome['dense_baseline']}, sparse {outcome['sparse_seconds'] * 1e3:.1f} ms)"
    )


# ---------------------------------------------------------------------------- finetune
@app.command()
def finetune(
    run_dir: Path = typer.Argument(..., help="A finished `spdy run` directory (with result.json and profile.toml)."),
    data: Optional[Path] = typer.Option(
        None, "--data", help="Training data: a text file (one sample per line) or a .safetensors/.pt/.npy file "
        "with inputs (and labels). Default: the profile's data without its held-out samples (digits: the train split)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs in all (default 15, as in recipe.yaml)."),
    pruning_end: Optional[int] = typer.Option(
        None, "--pruning-end", help="Epoch at whose start every layer reaches its level (default: two thirds of --epochs)."),
    init_sparsity: Optional[float] = typer.Option(None, "--init-sparsity", help="Sparsity of the first mask update (default 0.05)."),
    update_frequency: Optional[int] = typer.Option(None, "--update-frequency", help="Epochs between mask updates (default 1)."),
    allocation: str = typer.Option(
        "spdy", "--allocation", help="Which allocation of result.json: spdy, or a baseline (uniform, global-magnitude, prior, squared-error)."),
    loss: Optional[str] = typer.Option(
        None, "--loss", help="auto (cross-entropy on labels for classifiers, cosine distillation for encoders), cross-entropy, kl, cosine or mse."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Adam learning rate (default 1e-3; 5e-5 for transformers)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Training batch size (default 32)."),
    train_samples: Optional[int] = typer.Option(None, "--train-samples", help="Use a seeded subset of this many training samples (default: all)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: the profile's hardware.threads)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Output folder (default RUN_DIR/finetune, or RUN_DIR/finetune-<allocation>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted fine-tuning from its last checkpoint."),
    verify: Optional[bool] = typer.Option(
        None, "--verify/--no-verify", help="Re-measure the speedup end to end at the end (default: the profile's export.verify)."),
    as_json: bool = typer.Option(False, "--json", help="Print the fine-tuning's result.json on stdout."),
) -> None:
    """Gradual magnitude pruning to a run's allocation with fine-tuning (the schedule of recipe.yaml)."""
    from engine.recovery import finetune as engine_finetune

    from spdy_tui.progress import StderrProgress

    options = engine_finetune.Options(
        allocation=allocation, epochs=epochs, pruning_end=pruning_end, init_sparsity=init_sparsity,
        update_frequency=update_frequency, loss=loss, lr=lr, batch_size=batch_size, train_samples=train_samples,
        data=None if data is None else str(data.resolve()), threads=threads,
    )
    listener = StderrProgress(err)
    try:
        job = engine_finetune.open_finetune(run_dir, options, out_dir, resume, listener=listener, verify=verify)
        err.print(f"fine-tuning into {job.out}")
        result = engine_finetune.execute(job)
    except _user_errors() as exc:
        raise fail(str(exc)) from None
    finally:
        listener.close()
    if as_json:
        print(json.dumps(result, indent=1))
        return
    held, measured = result["heldout"], result["measured_speedup"]

    def number(value):
        return "-" if value is None else f"{value:.4f}"

    out.print(
        f"{result['allocation']} allocation, gradual pruning: held-out {result['heldout_metric']} {number(held['gradual'])} "
        f"(one-shot magnitude {number(held['one_shot_magnitude'])}, one-shot in the run {number(held['one_shot_run'])}, "
        f"dense {number(held['dense'])}); predicted {number(result['predicted_speedup'])}x, "
        f"measured {'-' if measured is None else f'{measured:.3f}x'}; wrote {job.out}"
    )


@app.command()
def inspect(
    path: Path = typer.Argument(..., help="A run directory or its events.jsonl (live, finished or killed)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Summarise a run's log: stages, evaluations, best loss curve, allocation, baselines, speedup."""
    from spdy_tui.inspect import render_summary, summary_json

    log = path / "events.jsonl" if path.is_dir() else path
    if not log.exists():
        raise fail(f"{log}: no such run log")
    if as_json:
        print(json.dumps(summary_json(log), indent=1))
    else:
        render_summary(log, out)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(int(Exit.INTERRUPTED))


if __name__ == "__main__":  # pragma: no cover
    main()
