"""Search evaluations per second: fast evaluation on versus off, and 1 versus 2 workers.

    .venv/bin/python benchmarks/bench_search.py RUN_DIR [--inits 20] [--window 10]
    .venv/bin/python benchmarks/bench_search.py RUN_DIR --replay 200


RUN_DIR is a run directory whose timings and database are built (e.g. by `spdy db PROFILE`).
Each variant runs the same shortened search (same seed) from scratch; the final allocation must
be identical across variants (asserted), so only the speed differs.  Variants run one after the
other in this process (workers in child processes), in the order given, then again in reverse,
and the two timings are averaged to cancel slow drift.

A short search is mostly random initialisation, where neither acceleration can help much.
``--replay N`` measures the workload of a real search instead: the last N evaluations logged in
RUN_DIR's events.jsonl (a finished run's local search), each scored against the best loss the
run had at that moment and accepted where the run accepted it, so early abandon and activation
reuse see exactly the bounds and references they saw in the run.  Every variant must reach the
run's verdict (better than the bound or not) on every candidate (asserted).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

# Search flags, plus "trim_padding" (a [data] key: padded text batches regrouped by length and cut
# to their longest sample; the same losses up to float rounding, so its trajectory is compared
# separately from the exact variants).
VARIANTS = {
    "plain (padded, no abandon, no reuse)": dict(trim_padding=False, early_abandon=False, reuse_activations=False, workers=1),
    "early abandon": dict(trim_padding=False, early_abandon=True, reuse_activations=False, workers=1),
    "activation reuse": dict(trim_padding=False, early_abandon=False, reuse_activations=True, workers=1),
    "abandon + reuse": dict(trim_padding=False, early_abandon=True, reuse_activations=True, workers=1),
    "trimmed padding only": dict(trim_padding=True, early_abandon=False, reuse_activations=False, workers=1),
    "fast (trim + abandon + reuse)": dict(trim_padding=True, early_abandon=True, reuse_activations=True, workers=1),
    "fast, 2 workers": dict(trim_padding=True, early_abandon=True, reuse_activations=True, workers=2),
}


def with_flags(profile, flags: dict):
    """``profile`` with the variant's [search] flags and its [data] trim_padding."""
    search = {key: value for key, value in flags.items() if key != "trim_padding"}
    data = dataclasses.replace(profile.data, trim_padding=flags.get("trim_padding", profile.data.trim_padding))
    return dataclasses.replace(profile, search=dataclasses.replace(profile.search, **search), data=data)


def run_variant(run_dir: Path, flags: dict, inits: int, window: int):
    from engine.core.profile import load_profile
    from engine.run.context import RunContext
    from engine.search.spdy import Search, SearchSettings

    profile = with_flags(load_profile(run_dir / "profile.toml"), flags)
    search = profile.search
    run = RunContext(profile, run_dir)
    the_problem = run.problem()
    settings = SearchSettings(inits, window, search.layer_fraction, search.buckets, batch=search.workers, seed=profile.run.seed)
    if search.workers > 1:  # workers read profile.toml themselves, so hand them the flags too
        scorer = _pooled_with_flags(run_dir, flags, search.workers, profile.hardware.threads)
    else:
        scorer = run.scorer()
    started = time.perf_counter()
    result = Search(the_problem, scorer, settings).run()
    seconds = time.perf_counter() - started
    if hasattr(scorer, "close"):  # the pooled scorer's workers
        scorer.close()
    return result, seconds


def _pooled_with_flags(run_dir: Path, flags: dict, workers: int, threads: int):
    from engine.executors.processes import PooledScorer

    return PooledScorer(_build_with_flags, (str(run_dir), flags), workers, max(1, threads // workers))


def _build_with_flags(run_dir: str, flags: dict):
    from engine.core.profile import load_profile
    from engine.run.context import RunContext

    profile = with_flags(load_profile(Path(run_dir) / "profile.toml"), flags)
    return RunContext(profile, Path(run_dir)).scorer()


def replay(run_dir: Path, flags: dict, events: list[dict], start_best: list[str]) -> float:
    """Seconds to score ``events`` in order with the variant's scorer (see the module docstring)."""
    import math

    from engine.core.profile import load_profile
    from engine.run.context import RunContext

    profile = with_flags(load_profile(run_dir / "profile.toml"), flags)
    scorer = RunContext(profile, run_dir).scorer()
    scorer.accept(start_best)
    started = time.perf_counter()
    for previous, event in zip(events, events[1:]):
        loss = scorer.score([event["levels"]], previous["best"])[0]
        assert (math.isfinite(loss) and loss < previous["best"]) == event["accepted"], f"verdict differs at evaluation {event['n']}"
        if event["accepted"]:
            scorer.accept(event["levels"])
    return time.perf_counter() - started


def main_replay(run_dir: Path, count: int, names: list[str]) -> None:
    from engine.run.context import RunContext
    from engine.run.stages.search import logged_evaluations

    logged = logged_evaluations(RunContext.from_dir(run_dir))
    window = logged[-count - 1 :]
    accepted_before = [event for event in logged[: len(logged) - len(window) + 1] if event["accepted"]]
    start_best = accepted_before[-1]["levels"]
    abandoned = sum(event["loss"] is None for event in window[1:])
    print(f"{run_dir}: replaying evaluations {window[1]['n']}-{window[-1]['n']} ({len(window) - 1}; "
          f"{abandoned} abandoned in the run, {sum(e['accepted'] for e in window[1:])} accepted)\n", flush=True)
    names = [name for name in names if VARIANTS[name]["workers"] == 1]
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for sweep in (names, list(reversed(names))):
        for name in sweep:
            seconds[name].append(replay(run_dir, VARIANTS[name], window, start_best))
            print(f"  {name}: {seconds[name][-1]:.1f} s", flush=True)
    base = sum(seconds[names[0]]) / 2
    print("\n| variant | evaluations / s | vs plain | seconds (two sweeps) |")
    print("|---|---|---|---|")
    for name in names:
        mean = sum(seconds[name]) / 2
        print(f"| {name} | {(len(window) - 1) / mean:.2f} | {base / mean:.2f}x | {', '.join(f'{s:.1f}' for s in seconds[name])} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--inits", type=int, default=20)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--replay", type=int, default=0, help="score the last N logged evaluations of RUN_DIR instead")
    args = parser.parse_args()
    if args.replay:
        main_replay(args.run_dir, args.replay, [name for name in VARIANTS if name in args.variants])
        return
    order = [name for name in VARIANTS if name in args.variants]
    timings: dict[str, list[float]] = {name: [] for name in order}
    results = {}
    for sweep in (order, list(reversed(order))):
        for name in sweep:
            result, seconds = run_variant(args.run_dir, VARIANTS[name], args.inits, args.window)
            timings[name].append(seconds)
            results[name] = result
            print(f"  {name}: {result.evaluations} evaluations in {seconds:.1f} s", flush=True)
    for trim in (False, True):  # abandon, reuse and workers are exact: same trajectory asserted
        group = [name for name in order if VARIANTS[name]["trim_padding"] == trim]
        for name in group[1:]:
            assert results[name].allocation.levels == results[group[0]].allocation.levels, f"{name} changed the final allocation"
            assert results[name].evaluations == results[group[0]].evaluations, f"{name} changed the evaluation count"
    same = len({tuple(result.allocation.levels) for result in results.values()}) == 1
    base = results[order[0]].evaluations / (sum(timings[order[0]]) / 2)
    print(f"\n{args.run_dir}: inits {args.inits}, window {args.window}; identical final allocation within the padded and "
          f"within the trimmed variants (asserted); trimmed vs padded: {'identical' if same else 'different'} final allocation\n")
    print("| variant | evaluations | evaluations / s | vs plain | seconds (two sweeps) |")
    print("|---|---|---|---|---|")
    for name in order:
        rate = results[name].evaluations / (sum(timings[name]) / 2)
        print(f"| {name} | {results[name].evaluations} | {rate:.2f} | {rate / base:.2f}x | {', '.join(f'{s:.1f}' for s in timings[name])} |")


if __name__ == "__main__":
    main()
