"""`spdy solve`, `spdy inspect` and `spdy env`: a DP on a table, a run log read back, the machine."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from spdy_tui.cli.base import (
    argument,
    fail,
    json_flag,
    note,
    option,
    out,
    print_json,
    user_error_code,
)


def solve(
    timings: Path = option(..., "--timings", metavar="FILE", help="Timing table (original SPDY text format or our JSON)."),
    target: float = option(..., "--target", metavar="X", help="Target end-to-end speedup, e.g. 2.0."),
    skip: list[str] = option([], "--skip", metavar="NAME", help="Layer name or glob kept dense (its dense time still counts); repeatable."),
    costs: str = option("prior", "--costs", metavar="prior|FILE",
                        help="'prior' ((i/(n-1))^2 per level) or a JSON file {layer name: [cost per level]}."),
    buckets: int = option(10_000, "--buckets", metavar="B", min=10, help="DP time buckets."),
    as_json: bool = json_flag("the allocation"),
) -> None:
    """Solve the DP once on a timing table: the least-cost allocation within the speedup budget."""
    from engine.search.budget import make_problem
    from engine.timing.table import load_table

    if timings.is_dir():
        raise fail(f"--timings {timings}: is a directory, not a timing table file")
    table = load_table(timings)
    try:
        problem = make_problem(table, target, skip)
        cost_matrix = None if costs == "prior" else _read_costs(Path(costs), problem)
        allocation = problem.solve(cost_matrix, buckets)
    except ValueError as exc:  # a bad --target, --skip or --costs; the engine's own errors go to the group's handler
        if user_error_code(exc) is not None:
            raise
        raise fail(str(exc)) from None
    for warning in table.warnings:
        note(f"{timings}: {warning}")
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
        print_json(result)
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


def _read_costs(path: Path, problem) -> object:
    from engine.search.budget import costs_from_mapping

    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"--costs {path}: no such costs file (give 'prior' or a JSON file)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--costs {path}: cannot read costs file: {getattr(exc, 'strerror', None) or exc}") from None
    return costs_from_mapping(problem, data, f"--costs {path}")


def inspect(
    path: Path = argument("A run directory or its events.jsonl (live, finished or killed).", "RUN_DIR|LOG"),
    as_json: bool = json_flag("the summary"),
) -> None:
    """Summarise a run's log: stages, evaluations, best loss curve, allocation, baselines, speedup."""
    log = path / "events.jsonl" if path.is_dir() else path
    if not log.exists():
        raise fail(f"{log}: no such run log" + (" (is it a run directory?)" if path.is_dir() else ""))
    from spdy_tui.inspect import render_summary, summary_json

    if as_json:
        print_json(summary_json(log))
    else:
        sys.stdout.write(_rendered(render_summary, log))


def _rendered(render, log: Path) -> str:
    """``render(log, console)``'s output (it styles with markup and escapes the log's own text)."""
    console = Console(file=io.StringIO(), highlight=False, soft_wrap=True, force_terminal=out.is_terminal, width=out.width)
    render(log, console)
    return console.file.getvalue()


def env(as_json: bool = json_flag("the environment")) -> None:
    """Versions, CPU, threads and GPU: a block to paste into bug reports."""
    from engine.core.environment import describe_environment

    info = describe_environment()
    if as_json:
        print_json(info)
        return
    print("```")
    for key, value in info.items():
        print(f"{key}: {value}")
    print("```")
