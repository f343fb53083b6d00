"""Stage ``search``: SPDY's local search over per-layer sensitivity coefficients -> ``search.json``.

Candidates are scored by the profile's search executor (``search.executor``); every evaluation is
logged (``eval``, and ``best`` when accepted).  A resumed search replays the evaluations already
in the log by their allocation key: the trajectory is deterministic, so it reaches the same
allocation as an uninterrupted run.
"""

from __future__ import annotations

import math

from engine.core.errors import RunError
from engine.core.events import read_events
from engine.executors import open_executor
from engine.export.result import finite
from engine.run import products, workers
from engine.run.context import RunContext
from engine.search.spdy import Search, SearchSettings, allocation_key


def is_done(ctx: RunContext) -> bool:
    return ctx.search_record is not None


def logged_evaluations(ctx: RunContext) -> list[dict]:
    """The ``eval`` events already in the run's log (for replay on resume)."""
    path = ctx.run_dir / "events.jsonl"
    return [event for event in read_events(path) if event["type"] == "eval"] if path.exists() else []


def make(ctx: RunContext) -> None:
    record = run_search(ctx, ctx.problem())
    products.write_search(ctx.run_dir, record)
    ctx.__dict__.pop("search_record", None)


def run_search(ctx: RunContext, problem, start=None, settings: SearchSettings | None = None) -> dict:
    """SPDY's search on ``problem``, every evaluation logged; the search record (search.json's fields).

    ``start``: coefficients scored first, before the random inits (the closed loop).  Losses of
    allocations already in the log are replayed, whatever round scored them: an allocation's loss
    does not depend on the target.  Evaluations are numbered on from those already logged."""
    if not problem.searchable:
        dropped = f" ({len(problem.dropped)} levels slower than dense dropped)" if getattr(problem, "dropped", None) else ""
        raise RunError(
            f"{ctx.run_dir / 'timings.json'}: no layer has a usable level besides dense{dropped}: on this machine no "
            "allocation is faster than the dense model, so there is nothing to search"
        )
    config = ctx.profile.search
    logged = logged_evaluations(ctx)
    replay = {event["key"]: (math.inf if event["loss"] is None else event["loss"]) for event in logged if "key" in event}
    offset = max((event["n"] for event in logged), default=0) if start is not None else 0
    already = 0 if start is not None else len(logged)
    settings = settings or SearchSettings(
        config.random_inits, config.window, config.layer_fraction, config.buckets, batch=config.workers,
        seed=ctx.profile.run.seed,
    )

    def on_evaluation(event):
        if event.n <= already:
            return  # replayed from the log of an interrupted run
        n = event.n + offset
        ctx.log.emit(
            "eval", n=n, phase=event.phase, k=event.k, loss=finite(event.loss), best=finite(event.best),
            accepted=event.accepted, predicted_speedup=event.predicted_speedup, key=allocation_key(event.levels),
            levels=event.levels,
        )
        if event.accepted:
            times = [layer.seconds_at(level) for layer, level in zip(problem.table.layers, event.levels)]
            ctx.log.emit(
                "best", n=n, loss=event.loss, levels=event.levels, names=problem.table.names, times=times,
                budget=problem.budget, predicted_speedup=event.predicted_speedup,
            )

    executor = open_executor(
        config.executor, config.workers, ctx.profile.hardware.threads, ctx.profile.ray, shared=[str(ctx.run_dir)],
    )
    if executor.name == "inline":
        workers.adopt(ctx)
    scorer = executor.scorer(workers.build_scorer, (str(ctx.run_dir),))
    try:
        result = Search(problem, scorer, settings, on_evaluation, replay, start=start).run()
    finally:
        scorer.close()
    return {
        "coefficients": result.coefficients.tolist(),
        "levels": result.allocation.levels,
        "loss": result.loss,
        "evaluations": result.evaluations + offset,
        "predicted_speedup": result.allocation.predicted_speedup,
    }
