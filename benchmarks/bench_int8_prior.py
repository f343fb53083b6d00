"""The search's prior over a mixed (int8 + fp32) choice set: levels ranked by error versus grid order.

    .venv/bin/python benchmarks/bench_int8_prior.py RUN_DIR --target 2.0 [--target 1.5 ...] [--prior "int8 last" ...]

RUN_DIR is a run with ``grid.int8`` whose timings and database are built.  For each target, the
profile's full search (same seed, same settings) runs once per prior:

    error rank   each layer's levels ranked by the database's reconstruction error (what runs use:
                 ``engine.search.budget.error_ranks``), cost (rank / (n - 1))^2
    grid order   the levels as the grid sorts them, by sparsity with each int8 level right after
                 the fp32 level of its mask, cost (position / (n - 1))^2: the fp32-only prior as is
    int8 last    the fp32 levels by sparsity, then the int8 levels: choices appended to the grid

and the table gives the final calibration loss, the held-out cosine of the allocation, the number
of evaluations and the search's seconds.  ``--evaluations N`` stops each search after N evaluations
(its best so far is the result): a prior that keeps the search improving for much longer is then
compared at equal work.  The prior also drives the "prior" baseline (every
coefficient 1), shown too.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path


def int8_last(levels: list[list[str]]) -> list[list[int]]:
    """Ranks putting each layer's fp32 levels first (in grid order), then its int8 levels."""
    from engine.search.budget import ranks_by

    return [ranks_by([(label.startswith("q8:"), column) for column, label in enumerate(labels)]) for labels in levels]


class EnoughEvaluations(Exception):
    """The search reached ``--evaluations``."""


def capped_search_class():
    from engine.search.spdy import Search

    class CappedSearch(Search):
        """The search, stopped (EnoughEvaluations) once it has made ``cap`` evaluations."""

        def __init__(self, *args, cap: int | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.cap = cap

        def _record(self, evaluation):
            super()._record(evaluation)
            if self.cap is not None and self.evaluations >= self.cap:
                raise EnoughEvaluations

    return CappedSearch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--target", type=float, action="append", required=True)
    parser.add_argument("--prior", action="append", default=None, help="error rank, grid order, int8 last (default: all)")
    parser.add_argument("--evaluations", type=int, default=None, help="stop each search after this many evaluations")
    args = parser.parse_args()
    args.prior = args.prior or ["error rank", "grid order", "int8 last"]

    from engine.model.losses import primary_metric
    from engine.run.context import RunContext
    from engine.runtime.execution import set_threads
    from engine.search.spdy import SearchSettings

    CappedSearch = capped_search_class()

    run = RunContext.from_dir(args.run_dir)
    set_threads(run.profile.hardware.threads)
    config = run.profile.search
    settings = SearchSettings(config.random_inits, config.window, config.layer_fraction, config.buckets, seed=run.profile.run.seed)
    scorer = run.scorer()
    print("| target | prior | SPDY calibration loss | SPDY held-out cosine | evaluations | seconds | prior-DP baseline loss |")
    print("|---|---|---|---|---|---|---|")
    for target in args.target:
        ranked = run.problem(target)
        priors = {"error rank": ranked, "grid order": dataclasses.replace(ranked, ranks=None),
                  "int8 last": dataclasses.replace(ranked, ranks=int8_last(ranked.levels))}
        for label, problem in priors.items():
            if label not in args.prior:
                continue
            started = time.perf_counter()
            search = CappedSearch(problem, scorer, settings, cap=args.evaluations)
            try:
                result = search.run()
                levels, loss = result.allocation.levels, result.loss
            except EnoughEvaluations:
                levels, loss = search.allocate(search.best_c).levels, search.best_loss
            seconds = time.perf_counter() - started
            heldout = primary_metric(run.heldout_quality(levels))
            prior = scorer.loss(problem.solve(None, config.buckets).levels)
            print(f"| {target:g}x | {label} | {loss:.6f} | {heldout:.4f} | {search.evaluations} | {seconds:.0f} | {prior:.6f} |",
                  flush=True)


if __name__ == "__main__":
    main()
