"""Stage ``database``: pruned, reconstructed weights for every (layer, level) -> ``db/``.

The layers still to build (missing, corrupt or stale: ``engine.database.store.plan_database``)
are built by the profile's database executor (``database.executor``, ``engine.executors``), each
independently; the main process records each finished layer in the index and logs its levels'
``db`` events, so a killed build resumes where it was, whatever the executor.
"""

from __future__ import annotations

from engine.database.store import Database, record_layer, remove_temporaries
from engine.executors import open_executor
from engine.run import workers
from engine.run.context import RunContext


def is_done(ctx: RunContext) -> bool:
    return Database.is_complete(ctx.run_dir / "db", ctx.loaded.layer_names, ctx.profile.levels(), ctx.profile.database)


def make(ctx: RunContext) -> None:
    config = ctx.profile.database
    executor = open_executor(
        config.executor, config.workers, ctx.profile.hardware.threads, ctx.profile.ray, shared=[str(ctx.run_dir)],
    )
    remove_temporaries(ctx.run_dir / "db")
    plan = workers.database_plan(ctx)
    done = plan.already_done
    if executor.name == "inline":
        workers.adopt(ctx)
        function, chunks = workers.build_database_layers, [plan.todo]
    else:
        function, chunks = workers.built_database_layers, [[name] for name in plan.todo]
    for built in executor.map(function, (str(ctx.run_dir),), chunks):
        for name, entry in built:
            record_layer(plan.directory, name, entry)
            for level in entry["levels"]:
                done += 1
                ctx.log.emit("db", layer=name, level=level, error=entry["errors"][level], done=done, total=plan.total)
    ctx.__dict__.pop("database", None)  # read the finished database afresh
