"""`spdy check` and `spdy layers`: what a profile means and what its run will do, before any work."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from spdy_tui.cli.base import (
    Exit,
    argument,
    fail,
    json_flag,
    note,
    option,
    out,
    print_json,
)
from spdy_tui.cli.overrides import load

PROFILE_ARGUMENT = argument("TOML profile.", "PROFILE")
SET_OPTION = option(
    [], "--set", metavar="SECTION.KEY=VALUE",
    help="Override one profile key, checked like the file (repeatable): --set search.target=2 --set run.name=demo. "
    "The value is a TOML value or a bare string.",
)


def plan_json(plan) -> dict:
    return {
        "layers": [layer_json(layer) for layer in plan.layers],
        "levels": list(plan.levels),
        "skipped": list(plan.skipped),
        "cells": int(plan.cells),
        "database_bytes": int(plan.database_bytes),
        "estimated_seconds": {stage: float(seconds) for stage, seconds in plan.estimated_seconds.items()},
        "notes": list(plan.notes),
    }


def layer_json(layer) -> dict:
    return {"name": layer.name, "kind": layer.kind, "weight_shape": list(layer.weight_shape)}


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def shape(layer) -> str:
    return " x ".join(str(size) for size in layer.weight_shape)


def plan_lines(plan) -> list[str]:
    """What the run will do, as plain lines (``spdy check`` prints them as TOML comments)."""
    skipped = set(plan.skipped)
    names = [layer.name for layer in plan.layers]
    width = max([len("layer"), *map(len, names)])
    shapes = [shape(layer) for layer in plan.layers]
    shape_width = max([len("weight shape"), *map(len, shapes)])
    lines = [f"{len(plan.layers)} prunable layers ({len(skipped)} kept dense), {len(plan.levels)} levels each:"]
    lines.append(f"  {'layer':<{width}}  {'weight shape':<{shape_width}}  kind")
    for layer, layer_shape in zip(plan.layers, shapes):
        dense = "  (kept dense)" if layer.name in skipped else ""
        lines.append(f"  {layer.name:<{width}}  {layer_shape:<{shape_width}}  {layer.kind}{dense}")
    lines.append(f"database: {plan.cells} (layer, level) cells, about {plan.database_bytes / 2**20:.1f} MiB on disk")
    total = sum(plan.estimated_seconds.values())
    stages = ", ".join(f"{stage} {duration(seconds)}" for stage, seconds in plan.estimated_seconds.items())
    lines.append(f"estimated time: {stages}; total about {duration(total)}")
    lines.extend(f"note: {text}" for text in plan.notes)
    return lines


def _plan(profile):
    """The run plan of ``profile`` (``engine.run.plan``), or None where this engine has no planner."""
    try:
        from engine.run.plan import plan_run
    except ModuleNotFoundError as exc:
        if exc.name != "engine.run.plan":
            raise
        return None
    return plan_run(profile)


def check(
    profile: Path = PROFILE_ARGUMENT,
    overrides: list[str] = SET_OPTION,
    as_json: bool = json_flag("the resolved profile and the run plan"),
) -> None:
    """Validate a profile, print it with every default filled in, and what its run will do."""
    from engine.core.profile_toml import to_toml

    resolved = load(profile, overrides)
    plan = _plan(resolved)
    for text in resolved.notes if plan is None else ():  # the plan's notes include the profile's
        note(text)
    if plan is None:
        note("this engine has no run planner (engine.run.plan): the profile is checked, the model is not loaded")
    if as_json:
        print_json({
            "profile": str(profile), "valid": True, "overrides": list(overrides), "resolved": resolved.to_dict(),
            "notes": list(resolved.notes), "plan": None if plan is None else plan_json(plan),
        })
        return
    print(f"# {profile}: valid; resolved profile with every default" + (" and the --set overrides:" if overrides else ":"))
    print(to_toml(resolved), end="")
    if plan is not None:
        print("\n# what the run will do:")
        for line in plan_lines(plan):
            print(f"# {line}")


def layers(
    profile: Path = PROFILE_ARGUMENT,
    overrides: list[str] = SET_OPTION,
    as_json: bool = json_flag("the layers"),
) -> None:
    """List the prunable layers (name, kind, weight shape): what model.include/exclude and search.skip globs match."""
    resolved = load(profile, overrides)
    for text in resolved.notes:
        note(text)
    plan = _plan(resolved)
    if plan is None:
        raise fail("this engine has no run planner (engine.run.plan) to list the layers with", Exit.INTERNAL)
    skipped = set(plan.skipped)
    if as_json:
        print_json([{**layer_json(layer), "kept_dense": layer.name in skipped} for layer in plan.layers])
        return
    table = Table(show_edge=False)
    for column in ("layer", "kind", "weight shape") + (("search.skip",) if skipped else ()):
        table.add_column(column)
    for layer in plan.layers:
        table.add_row(layer.name, layer.kind, shape(layer), *(("kept dense" if layer.name in skipped else "",) if skipped else ()))
    out.print(table)
