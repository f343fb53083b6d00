"""What a worker runs: a run's work items, rebuilt from the run directory alone.

An executor (``engine.executors``) starts these by name in a fresh interpreter, or calls them in
this process.  Each reads the run's own ``profile.toml`` (``RunContext.from_dir``), loads the
model, data and database once per process, and so computes exactly what the main process would:
everything is derived from the profile and its seed.  Workers never write the run log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from engine.database import hessians
from engine.run.context import RunContext

_CONTEXTS: dict[str, RunContext] = {}
_PLANS: dict[str, object] = {}  # run directory -> its database build plan, made once per process


def adopt(ctx: RunContext) -> None:
    """Let work items of ``ctx.run_dir`` run on this (already loaded) context in this process."""
    _CONTEXTS[_key(ctx.run_dir)] = ctx


def _key(run_dir) -> str:
    return str(Path(run_dir).resolve())


def context(run_dir: str) -> RunContext:
    key = _key(run_dir)
    if key not in _CONTEXTS:
        _CONTEXTS[key] = RunContext.from_dir(run_dir)
    return _CONTEXTS[key]


def build_scorer(run_dir: str):
    """A worker's scorer: the run's model, calibration batches and database."""
    return context(run_dir).scorer()


def build_database_layers(run_dir: str, names: list[str]) -> Iterator[tuple[str, dict]]:
    """Build the database layers ``names`` of the run; yields (name, index entry) per layer built."""
    from engine.database.store import build_layers

    ctx = context(run_dir)
    plan = _PLANS.get(_key(run_dir)) or database_plan(ctx)
    calibration = ctx.reconstruction_inputs
    shared = hessians.read(plan.directory, names, hessians.key(plan.fingerprints))  # None: collect them here
    yield from build_layers(
        ctx.loaded, calibration, names, plan, ctx.profile.database, ctx.profile.run.seed, hessians=shared
    )


def built_database_layers(run_dir: str, names: list[str]) -> list[tuple[str, dict]]:
    """``build_database_layers`` as a list (what a worker process sends back)."""
    return list(build_database_layers(run_dir, names))


def share_hessians(ctx: RunContext, plan) -> None:
    """Collect H of every layer still to build once, here, and store them for the work items to
    read (``engine.database.hessians``): without it each one-layer item repeats the dense pass."""
    from engine.database.reconstruct import needs_hessians
    from engine.model.layer_inputs import collect_hessians

    if not needs_hessians(ctx.profile.database) or not plan.todo:
        return
    key = hessians.key(plan.fingerprints)
    if hessians.covers(plan.directory, plan.todo, key):
        return  # a killed build's file, still current
    modules = {name: ctx.loaded.module(name) for name in plan.todo}
    hessians.write(plan.directory, collect_hessians(ctx.loaded, ctx.reconstruction_inputs, modules), key)


def database_plan(ctx: RunContext):
    """The run's database build plan (digests of every weight and of the reconstruction inputs), made
    here and kept for this process's later work items."""
    from engine.database.store import plan_database

    calibration = ctx.reconstruction_inputs
    plan = plan_database(
        ctx.loaded, calibration, ctx.loaded.layers, ctx.profile.levels(), ctx.profile.database, ctx.run_dir / "db",
        ctx.profile.run.seed,
    )
    _PLANS[_key(ctx.run_dir)] = plan
    return plan
