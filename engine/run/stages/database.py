"""Stage ``database``: pruned, reconstructed weights for every (layer, level) -> ``db/``.

The layers still to build (missing, corrupt or stale: ``engine.database.store.plan_database``)
are built by the profile's database executor (``database.executor``, ``engine.executors``), each
independently; the main process records each finished layer in the index and logs its levels'
``db`` events, so a killed build resumes where it was, whatever the executor.  An executor that
builds one layer per work item gets the layers' H collected once here and stored beside the
database (``engine.database.hessians``), removed when the build is done, and the layers largest
first (``build_cost``), so no worker is left with a large layer while the others idle at the end;
the index lists them in the model's order all the same.
"""

from __future__ import annotations

import math

from engine.database import hessians
from engine.database.store import Database, record_layer, remove_temporaries
from engine.executors import open_executor
from engine.run import workers
from engine.run.context import RunContext


def is_done(ctx: RunContext) -> bool:
    return Database.is_complete(ctx.run_dir / "db", ctx.loaded.layer_names, ctx.profile.levels(), ctx.profile.database)


def make(ctx: RunContext) -> None:
    config = ctx.profile.database
    build(ctx, open_executor(
        config.executor, config.workers, ctx.profile.hardware.threads, ctx.profile.ray, shared=[str(ctx.run_dir)],
    ))


def build_cost(weight_shape: tuple[int, ...]) -> int:
    """A layer's build work, relatively: rows x columns^2 (OBS updates every row against the inverse
    Hessian of its columns), to hand the largest layers out first."""
    return weight_shape[0] * math.prod(weight_shape[1:]) ** 2


def build(ctx: RunContext, executor) -> None:
    """Build the run's missing database layers on ``executor``, recording and logging each one."""
    remove_temporaries(ctx.run_dir / "db")
    plan = workers.database_plan(ctx)
    done = plan.already_done
    if executor.name == "inline":
        workers.adopt(ctx)
        function, chunks = workers.build_database_layers, [plan.todo]
    else:
        workers.share_hessians(ctx, plan)  # once here, not once per one-layer work item
        largest_first = sorted(plan.todo, key=lambda name: build_cost(tuple(ctx.loaded.module(name).weight.shape)), reverse=True)
        function, chunks = workers.built_database_layers, [[name] for name in largest_first]
    for built in executor.map(function, (str(ctx.run_dir),), chunks):
        for name, entry in built:
            record_layer(plan.directory, name, entry, order=ctx.loaded.layer_names)
            for level in entry["levels"]:
                done += 1
                ctx.log.emit("db", layer=name, level=level, error=entry["errors"][level], done=done, total=plan.total)
    hessians.remove(plan.directory)
    ctx.__dict__.pop("database", None)  # read the finished database afresh
