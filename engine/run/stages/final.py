"""Stage ``final``: the searched allocation stitched, or rebuilt by sequential OBS (``export.sequential``),
optionally refined by global AdaPrune ->
``final.safetensors`` and ``result.json`` (calibration loss, held-out metric, predicted speedup)."""

from __future__ import annotations

import copy

import torch

from engine.export.result import has_result, write_result
from engine.model.losses import primary_metric, primary_metric_name
from engine.run import products
from engine.run.context import RunContext


def is_done(ctx: RunContext) -> bool:
    return has_result(ctx.run_dir) and products.has_final(ctx.run_dir)


def make(ctx: RunContext) -> None:
    make_final(ctx, ctx.search_record, ctx.problem())


def sequential_model(ctx: RunContext, levels: dict[str, str]):
    """A copy of the model with ``levels`` rebuilt by sequential OBS (``engine.database.sequential``)
    from the reconstruction samples; layers at the dense level keep their weights."""
    from engine.database.sequential import rebuild

    loaded, grid = ctx.loaded, ctx.profile.levels()
    inputs = ctx.reconstruction_inputs
    weights = rebuild(loaded, inputs, levels, {name: grid for name in levels}, ctx.profile.database, sequential=True)
    model = copy.deepcopy(loaded.model)
    with torch.no_grad():
        for name, weight in weights.items():
            model.get_submodule(name).weight.copy_(weight)
    return model


def make_final(ctx: RunContext, search: dict, problem, extra: dict | None = None) -> None:
    """Stitch ``search``'s allocation (+ global AdaPrune), write final.safetensors and result.json
    (its speedup predicted on ``problem``'s table, its target the profile's)."""
    loaded, data = ctx.loaded, ctx.data
    levels = search["levels"]
    chosen = dict(zip(loaded.layer_names, levels))
    scorer = ctx.scorer()
    calibration = scorer.loss(levels)
    scorer.stitcher.restore()  # the dense model again: gAP's targets and sequential OBS's weights come from it
    export = ctx.profile.export
    sequential = export.sequential and ctx.profile.database.method == "obs"
    # the allocation as the search scored it, like the baselines, when the final model is more than that
    stitched = ctx.heldout_quality(levels) if sequential or export.gap else None
    final = sequential_model(ctx, chosen) if sequential else scorer.stitcher.copy(chosen)
    if export.gap:
        from engine.database.gap import global_adaprune

        global_adaprune(
            loaded.model, final, loaded.layer_names, ctx.reconstruction_inputs, loaded.run_model,
            passes=export.gap_passes, lr=export.gap_lr, decay=export.gap_decay,
            on_step=lambda step, steps, loss: ctx.log.emit("gap", done=step, total=steps, loss=loss),
        )
    products.write_final(ctx.run_dir, final)
    ctx.final_model = final.eval()
    quality = ctx.heldout_quality(levels, model=final)
    ctx.log.emit("final", loss=calibration, heldout=primary_metric(quality), quality=quality)
    allocation = problem.allocation([problem.levels[row].index(level) for row, level in enumerate(levels)])
    table = ctx.table
    write_result(ctx.run_dir, {
        "target_speedup": ctx.profile.search.target,
        "predicted_speedup": allocation.predicted_speedup,
        "measured_speedup": None,
        "dense_baseline": table.dense_baseline or "as measured in the supplied table",
        "layers": allocation.as_rows(),
        "loss": {"calibration": calibration, "heldout": primary_metric(quality)},
        "heldout_metric": primary_metric_name(loaded.task, data.has_labels),
        "quality": quality,
        "gap": export.gap,
        **({"stitched_quality": stitched} if stitched else {}),
        "sequential": sequential,
        "baselines": ctx.baselines_record,
        "seed": ctx.profile.run.seed,
        "evaluations": search["evaluations"],
        "budget": problem.budget,
        "base_time": table.base,
        "predicted_time": allocation.predicted_time,
        "reference_time": table.reference_seconds,
        "runtime": ctx.backend.runtime(ctx.profile.hardware),
        **(extra or {}),
    })
