"""`spdy run`: the stages of a run, in order, each skipped when its product is already valid.

    timings -> database -> search -> baselines -> final -> verify -> export

Each stage (``engine.run.stages``) writes its product atomically into the run directory; a
stage whose product is valid is skipped (``stage`` event with state "skipped"), so a run killed
at any point resumes with ``resume=True`` and loses no finished work: the timing table and the
finished database layers are on disk, and the search replays every evaluation already in the log
(its trajectory is deterministic, so it reaches the same allocation as an uninterrupted run).
Stages share nothing but the run context (``engine.run.context``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from engine.export.result import has_result, read_result
from engine.run.context import RunContext
from engine.run.directory import open_run
from engine.run import stages
from engine.run.stages import baselines, database, export, final, search, timings, verify


def _nothing(_ctx: RunContext) -> None:
    return None


@dataclass(frozen=True)
class Stage:
    name: str
    is_done: Callable[[RunContext], bool]
    make: Callable[[RunContext], None]
    after_skip: Callable[[RunContext], None] = _nothing  # a check that must hold even for a finished product


STAGES: tuple[Stage, ...] = (
    Stage("timings", timings.is_done, timings.make, timings.after_skip),
    Stage("database", database.is_done, database.make),
    Stage("search", search.is_done, search.make),
    Stage("baselines", baselines.is_done, baselines.make),
    Stage("final", final.is_done, final.make),
    Stage("verify", verify.is_done, verify.make),
    Stage("export", export.is_done, export.make),
)
STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)
assert STAGE_NAMES == stages.ORDER, "engine.run.stages.ORDER names the stages of this table, in order"

__all__ = ["STAGES", "STAGE_NAMES", "Stage", "execute", "open_run"]


def execute(ctx: RunContext, only: tuple[str, ...] = STAGE_NAMES) -> dict:
    """Run the ``only`` stages (all by default) in order, skipping finished ones; returns result.json's content."""
    status = "failed"
    try:
        for stage in STAGES:
            if stage.name not in only:
                continue
            if stage.is_done(ctx):
                ctx.log.emit("stage", name=stage.name, state="skipped")
                stage.after_skip(ctx)
            else:
                ctx.log.emit("stage", name=stage.name, state="started")
                stage.make(ctx)
                ctx.log.emit("stage", name=stage.name, state="done")
        status = "ok"
        return read_result(ctx.run_dir) if has_result(ctx.run_dir) else {}
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except Exception as exc:
        ctx.log.emit("error", message=str(exc))
        raise
    finally:
        ctx.log.emit("run_finished", status=status, wall_seconds=round(time.time() - ctx.started, 3))
        ctx.log.close()
