"""Stage ``verify``: the final model on the backend's kernels, its output checked and its speedup
measured end to end against the dense baseline -> ``result.json``'s ``measured_speedup`` and
``verify`` (``engine.backends``)."""

from __future__ import annotations

from engine.export.result import allocation, read_result, update_result
from engine.run.context import RunContext


def is_done(ctx: RunContext) -> bool:
    if not ctx.profile.export.verify:
        return True
    try:
        return read_result(ctx.run_dir).get("measured_speedup") is not None
    except ValueError:
        return False


def make(ctx: RunContext) -> None:
    result = read_result(ctx.run_dir)
    outcome = ctx.backend.verify(
        ctx.loaded, ctx.final_model, allocation(result), ctx.timing_inputs(), ctx.table, ctx.profile.hardware,
        result["predicted_speedup"],
    )
    ctx.log.emit("verify", **outcome)
    update_result(ctx.run_dir, measured_speedup=outcome["measured"], verify=outcome)
