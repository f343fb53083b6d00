"""Stage ``baselines``: the simpler allocations SPDY must beat, at the same target -> ``baselines.json``.

uniform (one level for every layer; uniform-int8: one int8 level), prior (the DP with SPDY's prior alone), squared-error (the
DP on the database's per-layer output errors) and global-magnitude (one magnitude threshold for
all layers), each scored on the calibration loss and the held-out metric.
"""

from __future__ import annotations

from engine.model.losses import primary_metric
from engine.run import products
from engine.run.context import RunContext
from engine.search import baselines
from engine.search.budget import Allocation, Problem
from engine.search.dp import InfeasibleTarget


def is_done(ctx: RunContext) -> bool:
    return ctx.baselines_record is not None


def allocation_for(ctx: RunContext, name: str, problem: Problem) -> Allocation:
    if name in ("uniform", "uniform-int8"):
        return baselines.uniform(problem, int8=name == "uniform-int8")
    if name == "prior":
        return baselines.prior(problem, ctx.profile.search.buckets)
    if name == "squared-error":
        return baselines.squared_error(problem, ctx.database.errors(), ctx.profile.search.buckets)
    loaded = ctx.loaded
    weights = {layer: loaded.model.get_submodule(layer).weight.detach() for layer in loaded.layer_names}
    return baselines.global_magnitude(problem, weights)


def make(ctx: RunContext, target: float | None = None) -> None:
    """Every baseline at the profile's target (or ``target``: the closed loop's tightened one)."""
    problem = ctx.problem(target)
    scorer = ctx.scorer()
    records = {}
    for name in ctx.profile.search.baselines:
        try:
            allocation = allocation_for(ctx, name, problem)
        except InfeasibleTarget as exc:
            records[name] = {"error": str(exc), "predicted_speedup": None, "loss": {"calibration": None, "heldout": None}}
            continue
        calibration = scorer.loss(allocation.levels)
        quality = ctx.heldout_quality(allocation.levels)
        heldout = primary_metric(quality)
        records[name] = {
            "levels": allocation.levels, "predicted_speedup": allocation.predicted_speedup,
            "loss": {"calibration": calibration, "heldout": heldout}, "quality": quality,
        }
        ctx.log.emit(
            "baseline", name=name, loss=calibration, heldout=heldout, quality=quality, predicted_speedup=allocation.predicted_speedup
        )
    scorer.stitcher.restore()
    products.write_baselines(ctx.run_dir, records)
    ctx.__dict__.pop("baselines_record", None)
