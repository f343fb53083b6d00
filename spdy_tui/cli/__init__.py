"""`spdy`: the headless command line.

stdout carries data (a table, or JSON with --json); stderr carries progress and diagnostics.
User mistakes end with a one-line message and a documented exit code (``Exit``), never a
traceback; with --json the error is also a JSON object on stdout. The commands, in the order of
a run: check, layers, timings, db, run, sweep, solve, verify, bench, finetune, inspect, env.
"""

from __future__ import annotations

import inspect as _inspect
import sys

import typer
from rich.markup import escape

from spdy_tui.cli import check as _check
from spdy_tui.cli import finetune as _finetune
from spdy_tui.cli import runs as _runs
from spdy_tui.cli import sweep as _sweep
from spdy_tui.cli import tools as _tools
from spdy_tui.cli.base import Exit, SpdyCommand, SpdyGroup, err, fail

__all__ = ["Exit", "app", "fail", "main"]

app = typer.Typer(
    cls=SpdyGroup,
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# pipeline order: what `spdy --help` lists
COMMANDS = (
    ("check", _check.check),
    ("layers", _check.layers),
    ("timings", _runs.timings),
    ("db", _runs.db),
    ("run", _runs.run),
    ("sweep", _sweep.sweep),
    ("solve", _tools.solve),
    ("verify", _runs.verify),
    ("bench", _runs.bench),
    ("finetune", _finetune.finetune),
    ("inspect", _tools.inspect),
    ("env", _tools.env),
)
for _name, _function in COMMANDS:
    app.command(_name, cls=SpdyCommand, help=escape(_inspect.getdoc(_function) or ""))(_function)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("spdy-tui")
    except PackageNotFoundError:  # pragma: no cover (a source tree that was never installed)
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        print(f"spdy {version()}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", callback=_print_version, is_eager=True, metavar=""),
) -> None:
    """SPDY: find the per-layer sparsity that meets a measured speedup with the least loss.

    Exit codes: 0 ok, 1 internal error, 2 bad input, 3 infeasible target, 130 interrupted.
    """


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # outside any command (while Typer parses): the same line and code
        err.print("interrupted")
        sys.exit(int(Exit.INTERRUPTED))

