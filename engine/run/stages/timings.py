"""Stage ``timings``: every prunable layer's time at every level on this machine -> ``timings.json``.

A table supplied by the profile (``hardware.timings``) is used as it is; otherwise the backend
measures one.  A cached table is reused only while its environment fingerprint matches (same
machine, libraries, threads, batch, shapes, levels and kernels).  Either way the target is
checked against the table before the (long) database build starts.
"""

from __future__ import annotations

from engine.core.environment import describe_environment
from engine.run.context import RunContext
from engine.run.plan import check_context
from engine.timing.table import TableError, check_table, load_table, save_table

PRODUCT = "timings.json"


def is_done(ctx: RunContext) -> bool:
    path = ctx.run_dir / PRODUCT
    if not path.exists():
        return False
    try:
        table = load_table(path)
    except TableError:
        return False
    if ctx.profile.hardware.timings:
        return table.environment.get("source") == ctx.profile.hardware.timings
    shapes = {layer.name: list(layer.input_shape) for layer in ctx.timed_layers}
    expected = ctx.backend.fingerprint(describe_environment(), ctx.profile.hardware, shapes, ctx.profile.levels())
    return table.environment.get("fingerprint") == expected


def make(ctx: RunContext) -> None:
    check_context(ctx)  # e.g. a search.skip glob that matches no layer: before minutes of timing
    hardware = ctx.profile.hardware
    if hardware.timings:
        table = load_table(hardware.timings)
        missing = [name for name in ctx.loaded.layer_names if name not in table.names]
        if missing:
            raise TableError(f"{hardware.timings}: no timings for layer(s) {', '.join(missing[:5])}")
        table.environment["source"] = hardware.timings
    else:
        table = ctx.backend.profile(
            ctx.loaded, ctx.timing_inputs(), ctx.timed_layers, ctx.profile.levels(), hardware, ctx.log, ctx.profile.run.seed,
        )
        check_table(table, str(ctx.run_dir / PRODUCT))  # refused now, not when a later stage reads it back
    save_table(table, ctx.run_dir / PRODUCT)
    ctx.table = table
    check_target(ctx)


def check_target(ctx: RunContext) -> None:
    """Fail before the database build if the measured table cannot meet the target."""
    ctx.problem().solve(None, ctx.profile.search.buckets)


def after_skip(ctx: RunContext) -> None:
    check_context(ctx)
    check_target(ctx)
