"""What every `spdy` command shares: exit codes, the two consoles, errors, option helpers.

Nothing here interprets text as rich markup: both consoles have markup off (a path or a layer
name with ``[/x]`` in it prints as written), styling goes through ``Text`` styles, and every
help text is escaped before Typer renders it.  Errors are classified without importing
anything: an engine error class can only have been raised if its module is already loaded, so
the handler looks in ``sys.modules`` (a Ctrl-C inside ``import torch`` must not import torch
again on its way out).
"""

from __future__ import annotations

import json
import sys
from contextvars import ContextVar
from enum import IntEnum
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, markup=False)

# True while a command that was given --json runs: errors then also go to stdout as JSON
JSON_MODE: ContextVar[bool] = ContextVar("spdy_json_mode", default=False)


class Exit(IntEnum):
    """Exit codes of every `spdy` command."""

    OK = 0
    INTERNAL = 1  # a bug: please report it with `spdy env`
    BAD_INPUT = 2  # missing file, malformed table or profile, bad option
    INFEASIBLE = 3  # the target speedup cannot be met on the timing table
    INTERRUPTED = 130


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=1))


def fail(message: str, code: Exit = Exit.BAD_INPUT) -> typer.Exit:
    """Say what went wrong (one line on stderr; with --json also a JSON object on stdout); raise the result."""
    if code == Exit.INTERRUPTED:
        err.print(message)
    else:
        err.print(Text.assemble(("error:", "bold red"), " ", message), soft_wrap=True)
    if JSON_MODE.get():
        print_json({"error": message, "exit_code": int(code)})
        sys.stdout.flush()
    return typer.Exit(int(code))


def note(message: str) -> None:
    err.print(f"note: {message}", soft_wrap=True)


# Engine errors that mean "the input cannot work" (exit 2), by module and class name.
USER_ERRORS = (
    ("engine.core.profile", "ProfileError"),
    ("engine.core.errors", "RunError"),
    ("engine.core.events", "RunLogError"),
    ("engine.timing.table", "TableError"),
    ("engine.model.sources", "ModelError"),
    ("engine.model.data", "DataError"),
    ("engine.backends.verify", "VerifyError"),
    ("engine.export.result", "ResultError"),
    ("engine.recovery.checkpoint", "CheckpointError"),
    ("engine.runtime.semi24", "Semi24Error"),
    ("engine.run.plan", "PlanError"),
)


def user_error_code(exc: BaseException) -> Exit | None:
    """The exit code of an exception that is the user's to fix, or None for a bug. Imports nothing."""
    dp = sys.modules.get("engine.search.dp")
    infeasible = getattr(dp, "InfeasibleTarget", None)
    if infeasible is not None and isinstance(exc, infeasible):
        return Exit.INFEASIBLE
    for module, name in USER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return Exit.BAD_INPUT
    if isinstance(exc, OSError) and exc.filename is not None:  # a path we were given cannot be used
        return Exit.BAD_INPUT
    return None


def user_message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


def _no_placeholder_on_flags(params: list) -> list:
    """Typer shows ``<bool>`` after flags (--help, --resume...), as if they took a value: show nothing."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class SpdyCommand(TyperCommand):
    def get_params(self, ctx):
        return _no_placeholder_on_flags(super().get_params(ctx))


class SpdyGroup(TyperGroup):
    """The command group: one place that turns interrupts and user errors into exit codes."""

    def get_params(self, ctx):
        return _no_placeholder_on_flags(super().get_params(ctx))

    def parse_args(self, ctx, args):
        ctx.meta["spdy.json"] = "--json" in args
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        token = JSON_MODE.set(bool(ctx.meta.get("spdy.json")))
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            raise fail("interrupted", Exit.INTERRUPTED) from None
        except typer.TyperException as exc:  # a usage error: Typer shows it, unless JSON was asked for
            if not JSON_MODE.get():
                raise
            code = getattr(exc, "exit_code", Exit.BAD_INPUT)
            raise fail(exc.format_message(), Exit(code) if code in set(Exit) else Exit.BAD_INPUT) from None
        except Exception as exc:
            code = user_error_code(exc)
            if code is None:
                if JSON_MODE.get():
                    print_json({"error": f"internal error: {type(exc).__name__}: {exc}", "exit_code": int(Exit.INTERNAL)})
                raise
            raise fail(user_message(exc), code) from None
        finally:
            JSON_MODE.reset(token)


# ---------------------------------------------------------------------------- options
def option(default: Any, *names: str, help: str, metavar: str | None = None, **kwargs: Any) -> Any:
    """A Typer option whose help is shown as written (never as markup)."""
    return typer.Option(default, *names, help=escape(help), metavar=metavar, **kwargs)


def flag(*names: str, help: str, default: Any = False) -> Any:
    """A flag: no placeholder in the help, as it takes no value."""
    return typer.Option(default, *names, help=escape(help), metavar="")


def argument(help: str, metavar: str) -> Any:
    return typer.Argument(..., help=escape(help), metavar=metavar, show_default=False)


def json_flag(what: str) -> Any:
    return flag("--json", help=f"Print {what} as JSON on stdout (errors too: {{\"error\": ..., \"exit_code\": N}}).")


def existing_dir(path: Path, what: str) -> Path:
    """``path`` as a directory that exists, or a clear refusal."""
    if not path.exists():
        raise fail(f"{path}: no such {what}")
    if not path.is_dir():
        raise fail(f"{path}: is a file, not a {what}")
    return path


def output_dir(path: Path | None, option_name: str = "--out") -> Path | None:
    """An output folder option: refused when it names an existing file."""
    if path is not None and path.exists() and not path.is_dir():
        raise fail(f"{option_name} {path}: is a file, not a directory (give a new or existing folder)")
    return path
