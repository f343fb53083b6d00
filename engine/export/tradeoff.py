"""The trade-off across runs: speedup against held-out quality, as points, a markdown table and a PNG.

Each finished run contributes, from its ``result.json`` (and ``bench.json`` when `spdy bench` ran):

    spdy              predicted speedup (timing table) and measured speedup (end to end), its held-out metric
    <baseline>        every baseline at the same target: predicted speedup and held-out metric
    onnxruntime       ONNX Runtime fp32, dense: measured speedup and held-out cosine to dense (bench.json)
    onnxruntime-int8  ONNX Runtime dynamic int8: the same (bench.json)

A point's ``quality`` is the run's held-out metric (accuracy, agreement or cosine to dense); the
ONNX Runtime points carry bench's cosine to dense, so they share the axis only with runs whose
metric is a cosine (encoders) and are left out of the plot otherwise.  ``tradeoff.md`` and
``tradeoff.png`` are written by ``write_tradeoff`` (its one writer).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from engine.core.atomic import write_bytes, write_text
from engine.export.result import ResultError, read_json_object

MARKDOWN, PNG = "tradeoff.md", "tradeoff.png"
ONNX_POINTS = ("onnxruntime", "onnxruntime-int8")
OTHER_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:gray", "tab:olive", "tab:cyan")  # SPDY is red


@dataclass(frozen=True)
class Point:
    """One allocation (or reference runtime) of one run on the trade-off plane."""

    run: str  # the run's label (its directory name)
    method: str  # "spdy", a baseline's name, or an ONNX Runtime reference point
    target: float | None
    predicted: float | None  # speedup the timing table predicts
    measured: float | None  # speedup measured end to end
    loss: float | None  # calibration loss
    quality: float | None  # held-out metric (or cosine to dense for ONNX Runtime points)


def run_points(label: str, result: Mapping, bench: Mapping | None = None) -> list[Point]:
    """The points of one run: SPDY's allocation, every baseline, and bench's ONNX Runtime rows."""
    target, loss = result.get("target_speedup"), result.get("loss") or {}
    points = [Point(label, "spdy", target, result.get("predicted_speedup"), result.get("measured_speedup"),
                    loss.get("calibration"), loss.get("heldout"))]
    for name, entry in (result.get("baselines") or {}).items():
        scores = entry.get("loss") or {}
        points.append(Point(label, name, target, entry.get("predicted_speedup"), None,
                            scores.get("calibration"), scores.get("heldout")))
    for row in (bench or {}).get("rows", []):
        if row.get("runtime") in ONNX_POINTS:
            points.append(Point(label, row["runtime"], target, None, row.get("speedup"), None, row.get("cosine_mean")))
    return points


def read_run_points(run_dir: str | os.PathLike, label: str | None = None) -> list[Point]:
    """The points of a run directory; none while it has no result.json."""
    run_dir = Path(run_dir)
    try:
        result = read_json_object(run_dir / "result.json")
    except ResultError:
        return []
    try:
        bench = read_json_object(run_dir / "bench.json")
    except ResultError:
        bench = None
    return run_points(label or run_dir.name, result, bench)


def _number(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def markdown(points: Sequence[Point], metric: str = "held-out") -> str:
    """The table: one row per point, runs in the given order, SPDY first within a run."""
    lines = [f"| run | allocation | target | predicted speedup | measured speedup | calibration loss | {metric} |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for point in points:
        name = f"**{point.method}**" if point.method == "spdy" else point.method
        lines.append(f"| {point.run} | {name} | {_number(point.target, 'g')}{'x' if point.target else ''} | "
                     f"{_number(point.predicted, '.3f')}{'x' if point.predicted else ''} | "
                     f"{_number(point.measured, '.3f')}{'x' if point.measured else ''} | "
                     f"{_number(point.loss, '.4g')} | {_number(point.quality, '.4f')} |")
    return "\n".join(lines) + "\n"


def series(points: Iterable[Point], cosine_axis: bool) -> dict[str, list[tuple[float, float]]]:
    """(speedup, quality) per plotted series, each sorted by speedup: "spdy measured", "spdy predicted",
    one per baseline (predicted), and the ONNX Runtime points (measured) when the axis is a cosine."""
    out: dict[str, list[tuple[float, float]]] = {}
    for point in points:
        if point.quality is None:
            continue
        if point.method == "spdy":
            for kind, speedup in (("measured", point.measured), ("predicted", point.predicted)):
                if speedup is not None:
                    out.setdefault(f"spdy {kind}", []).append((speedup, point.quality))
        elif point.method in ONNX_POINTS:
            if cosine_axis and point.measured is not None:
                out.setdefault(point.method, []).append((point.measured, point.quality))
        elif point.predicted is not None:
            out.setdefault(point.method, []).append((point.predicted, point.quality))
    return {name: sorted(values) for name, values in out.items()}


def png(points: Sequence[Point], metric: str = "held-out") -> bytes:
    """Held-out quality against speedup: SPDY measured and predicted, every baseline, ONNX Runtime points."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.2), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    others = iter(OTHER_COLOURS * 4)
    for name, values in series(points, "cosine" in metric).items():
        xs, ys = zip(*values)
        if name == "spdy measured":
            axes.plot(xs, ys, "-o", color="tab:red", linewidth=2, label=name)
        elif name == "spdy predicted":
            axes.plot(xs, ys, "--o", color="tab:red", alpha=0.6, markerfacecolor="none", label=name)
        elif name in ONNX_POINTS:
            axes.plot(xs, ys, "*", markersize=12, color=next(others), label=f"{name} (dense reference)")
        else:
            axes.plot(xs, ys, ":s", alpha=0.8, markersize=4, color=next(others), label=f"{name} (predicted)")
    axes.set_xlabel("speedup over the fastest dense path")
    axes.set_ylabel(metric)
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=7, loc="best")
    axes.set_title("Trade-off: speedup vs held-out quality", loc="left")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def write_tradeoff(directory: str | os.PathLike, points: Sequence[Point], metric: str = "held-out") -> tuple[Path, Path]:
    """``tradeoff.md`` and ``tradeoff.png`` in ``directory``."""
    directory = Path(directory)
    table, picture = directory / MARKDOWN, directory / PNG
    write_text(table, f"# Trade-off\n\n{markdown(points, metric)}\n![speedup vs {metric}]({PNG})\n")
    write_bytes(picture, png(points, metric))
    return table, picture
