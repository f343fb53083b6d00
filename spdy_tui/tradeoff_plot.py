"""The trade-off as text: held-out quality against speedup, one marker character per series.

Each series (``engine.export.tradeoff.series``) gets its own character, so the plot reads without
colour: ``●`` SPDY measured, ``○`` SPDY predicted, a letter per baseline and per ONNX Runtime
reference point (``u`` uniform, ``g`` global magnitude, ``p`` prior, ``e`` squared error, ``F`` ONNX
Runtime fp32, ``I`` its int8).  A point at (s, q) lands in the cell

    column = round((s - s_min) / (s_max - s_min) * (width - 1)),  row = round((q_max - q) / (q_max - q_min) * (height - 1)),

later series drawn over earlier ones, SPDY measured last (on top).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from rich.text import Text

MARKERS = {"spdy measured": "●", "spdy predicted": "○", "uniform": "u", "global-magnitude": "g", "prior": "p",
           "squared-error": "e", "onnxruntime": "F", "onnxruntime-int8": "I"}
Y_LABEL_WIDTH = 7
DRAW_ORDER = ("onnxruntime", "onnxruntime-int8", "spdy predicted", "spdy measured")  # the rest first, these last


def marker(name: str) -> str:
    return MARKERS.get(name, name[:1] or "?")


def tradeoff_plot(series: Mapping[str, Sequence[tuple[float, float]]], width: int, height: int, metric: str = "held-out") -> Text:
    """The plot in ``width`` x ``height`` cells, axes included (the legend is ``legend``)."""
    points = [point for values in series.values() for point in values]
    if not points:
        return Text("no finished run yet: the trade-off appears as runs finish", style="dim")
    plot_width, plot_height = max(width - Y_LABEL_WIDTH - 1, 4), max(height - 1, 2)
    xs, ys = [x for x, _ in points], [y for _, y in points]
    x_low, x_high = min(xs), max(xs)
    y_low, y_high = min(ys), max(ys)
    if x_high - x_low < 1e-9:
        x_low, x_high = x_low - 0.5, x_high + 0.5
    if y_high - y_low < 1e-9:
        y_low, y_high = y_low - 0.01, y_high + 0.01
    grid = [[" "] * plot_width for _ in range(plot_height)]
    names = sorted(series, key=lambda name: DRAW_ORDER.index(name) + 1 if name in DRAW_ORDER else 0)
    for name in names:
        for x, y in series[name]:
            column = round((x - x_low) / (x_high - x_low) * (plot_width - 1))
            row = round((y_high - y) / (y_high - y_low) * (plot_height - 1))
            grid[row][column] = marker(name)
    text = Text(no_wrap=True, overflow="crop")
    for row, cells in enumerate(grid):
        label = f"{y_high:.4g}" if row == 0 else f"{y_low:.4g}" if row == plot_height - 1 else ""
        text.append(f"{label:>{Y_LABEL_WIDTH}}┤")
        for cell in cells:
            text.append(cell, style="bold" if cell == "●" else "")
        text.append("\n")
    low, high = f"{x_low:.2f}x", f"{x_high:.2f}x"
    axis = low + f" speedup → {metric} ↑ ".center(max(plot_width - len(low) - len(high), 0), "─") + high
    text.append(" " * Y_LABEL_WIDTH + "└" + axis[:plot_width])
    return text


def legend(series: Mapping[str, Sequence]) -> Text:
    """Which character is which series (wraps at the pane's width)."""
    return Text("  ".join(f"{marker(name)} {name}" for name in series), style="dim")
