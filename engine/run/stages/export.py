"""Stage ``export``: the files a user takes away (``engine.export.files``): profile.txt, recipe.yaml,
torchao_config.json, pruned.safetensors and report.md with its plots."""

from __future__ import annotations

from engine.core.environment import describe_environment
from engine.core.events import read_events
from engine.export import files, weights
from engine.export.result import allocation, read_result
from engine.run.context import RunContext


def is_done(ctx: RunContext) -> bool:
    return (ctx.run_dir / "report.md").exists()


def make(ctx: RunContext) -> None:
    result = read_result(ctx.run_dir)
    files.write_profile_txt(ctx.run_dir, result["layers"])
    files.write_recipe(ctx.run_dir, result["layers"])
    files.write_torchao_config(ctx.run_dir, result["layers"])
    if ctx.profile.export.weights:
        weights.write_pruned_weights(ctx.run_dir, ctx.final_model, {"allocation": allocation(result)})
        weights.write_int8_weights(ctx.run_dir, ctx.final_model, allocation(result))
    evaluations = [
        (event["n"], event["loss"], event["best"]) for event in read_events(ctx.run_dir / "events.jsonl") if event["type"] == "eval"
    ]
    files.write_report(ctx.run_dir, result, evaluations, describe_environment())
