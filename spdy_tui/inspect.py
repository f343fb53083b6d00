"""`spdy inspect`: a run log summarised on the terminal (or as JSON).

Works on a live, finished or killed run: the reducer (``engine.run.runlog``) ignores a truncated
last line and missing fields.  A file that is not a run log (or an empty one) raises
``engine.core.events.RunLogError`` (a ValueError: the command's exit code 2); complete lines that
are not events are counted and reported (``unreadable_lines``, and a warning line).
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine.model.losses import METRIC_NAMES
from engine.run.runlog import RunState, relax_line, summarise, unreadable_warning
from spdy_tui.plot import loss_plot


def summary_json(path: Path) -> dict:
    state = summarise(path)
    return {
        "stages": state.stages,
        "timing": {"done": state.timing.done, "total": state.timing.total},
        "database": {"done": state.database.done, "total": state.database.total},
        "gap": {"done": state.gap.done, "total": state.gap.total, "loss": state.gap_loss},
        "evaluations": len(state.evaluations),
        "best_loss": state.best_loss,
        "predicted_speedup": state.predicted_speedup,
        "allocation": [
            {"name": c.name, "level": c.level, "seconds": c.seconds, "share": c.share} for c in state.allocation()
        ],
        "baselines": state.baselines,
        "final": state.final,
        "verify": state.verify,
        "tighten": state.tighten,
        "relax": state.relax,
        "errors": state.errors,
        "finished": state.finished,
        "unreadable_lines": state.unreadable_lines,
        "warnings": [unreadable_warning(state.unreadable_lines)] if state.unreadable_lines else [],
    }


def _value(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def quality_text(quality: dict | None) -> str:
    """Held-out metrics in words: 'cosine to dense (mean) 0.91, neighbour recall@10 0.8'."""
    return ", ".join(f"{METRIC_NAMES.get(key, key)} {_value(value)}" for key, value in (quality or {}).items()) or "-"


def render_summary(path: Path, console: Console) -> None:
    state: RunState = summarise(path)
    stages = ", ".join(f"{name}: {status}" for name, status in state.stages.items()) or "none"
    console.print(escape(str(path)), style="bold")
    if state.unreadable_lines:
        console.print(f"[yellow]warning:[/] {escape(unreadable_warning(state.unreadable_lines))}")
    console.print(f"stages: {stages}")
    if state.timing.total:
        console.print(f"timings: {state.timing.done}/{state.timing.total} measurements of {len(state.timing.per_layer)} layers")
    if state.database.total:
        console.print(f"database: {state.database.done}/{state.database.total} (layer, level) entries built")
    if state.gap.total:
        loss = f", last loss {state.gap_loss:.4g}" if state.gap_loss is not None else ""
        console.print(f"global AdaPrune: {state.gap.done}/{state.gap.total} steps{loss}")
    if state.evaluations:
        console.print(f"search: {len(state.evaluations)} evaluations, best calibration loss {state.best_loss:.6g}")
        losses = [point.loss for point in state.evaluations]
        bests = [point.best for point in state.evaluations]
        console.print(loss_plot(losses, bests, width=72, height=10))
    allocation = state.allocation()
    if allocation:
        table = Table(title="best allocation", show_edge=False)
        for column in ("layer", "level", "time (ms)", "share"):
            table.add_column(column, justify="left" if column == "layer" else "right")
        for choice in allocation:
            seconds = "" if choice.seconds is None else f"{choice.seconds * 1e3:.3f}"
            share = "" if choice.share is None else f"{choice.share:.1%}"
            table.add_row(escape(choice.name), escape(choice.level), seconds, share)
        console.print(table)
    if state.predicted_speedup is not None:
        console.print(f"predicted speedup: {state.predicted_speedup:.3f}x")
    for name, baseline in state.baselines.items():
        loss = baseline.get("loss")
        speedup = baseline.get("predicted_speedup")
        console.print(
            f"baseline {name}: loss {'-' if loss is None else f'{loss:.6g}'}, "
            f"predicted {'-' if speedup is None else f'{speedup:.3f}x'}"
            + (f"; held-out {quality_text(baseline['quality'])}" if baseline.get("quality") else "")
        )
    if state.final:
        console.print(f"final model: calibration loss {_value(state.final.get('loss'))}; held-out " + quality_text(state.final.get("quality")))
    if state.verify:
        verify = state.verify
        console.print(f"verify: predicted {verify['predicted']:.3f}x, measured {verify['measured']:.3f}x")
    for event in state.tighten:
        console.print(f"closed loop round {event['round']}: measured {event['measured']:.3f}x < target {event['target']:g}x, "
                      f"searched on at {event['search_target']:.3f}x")
    for event in state.relax:
        console.print(relax_line(event))
    for message in state.errors:
        console.print(f"[red]error:[/] {escape(str(message))}")
    if state.finished:
        console.print(f"finished: {state.finished.get('status')} after {state.finished.get('wall_seconds', 0):.0f} s")
    elif state.events:
        console.print("finished: not yet (running, or killed; `spdy run --resume` continues it)")
