"""A small braille plot of the search: every evaluation's loss as a dot, the best so far as a line.

A braille character is a 2 x 4 grid of dots, so a plot of ``width`` x ``height`` cells holds
``2 width`` x ``4 height`` points.  Shapes carry the meaning (scattered dots versus a falling
staircase), colour only helps, so the plot reads the same under NO_COLOR.
"""

from __future__ import annotations

import math
from typing import Sequence

from rich.text import Text

BRAILLE_BASE = 0x2800
# bit of the dot at (column, row) inside one braille cell
DOT_BITS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))
Y_LABEL_WIDTH = 9


class BrailleCanvas:
    """A grid of braille cells that dots are switched on in, addressed in dot coordinates."""

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.cells = [[0] * width for _ in range(height)]

    def set(self, x: int, y: int) -> None:
        """Switch on the dot at column x (from the left) and row y (from the top)."""
        if 0 <= x < 2 * self.width and 0 <= y < 4 * self.height:
            self.cells[y // 4][x // 2] |= DOT_BITS[x % 2][y % 4]

    def vertical(self, x: int, y0: int, y1: int) -> None:
        for y in range(min(y0, y1), max(y0, y1) + 1):
            self.set(x, y)


def loss_plot(
    losses: Sequence[float | None],
    bests: Sequence[float | None],
    width: int,
    height: int,
    loss_style: str = "",
    best_style: str = "bold",
) -> Text:
    """Losses and best-so-far against evaluation number 1..N, with a y scale and an x range.

    ``width`` and ``height`` are the whole plot in cells, labels included; missing values
    (abandoned candidates, nothing found yet) are left out.
    """
    plot_width, plot_height = max(width - Y_LABEL_WIDTH - 1, 2), max(height - 1, 1)
    finite = [value for value in (*losses, *bests) if value is not None and math.isfinite(value)]
    if not finite:
        return Text("no evaluations yet", style="dim")
    low, high = min(finite), max(finite)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    count = max(len(losses), len(bests))

    def to_x(index: int) -> int:
        return round(index * (2 * plot_width - 1) / max(count - 1, 1))

    def to_y(value: float) -> int:
        return round((high - value) * (4 * plot_height - 1) / (high - low))

    scatter, staircase = BrailleCanvas(plot_width, plot_height), BrailleCanvas(plot_width, plot_height)
    for index, value in enumerate(losses):
        if value is not None:
            scatter.set(to_x(index), to_y(value))
    previous: tuple[int, int] | None = None
    for index, value in enumerate(bests):
        if value is None:
            continue
        x, y = to_x(index), to_y(value)
        if previous is not None:
            for step_x in range(previous[0], x):
                staircase.set(step_x, previous[1])
            staircase.vertical(x, previous[1], y)
        staircase.set(x, y)
        previous = (x, y)

    text = Text(no_wrap=True, overflow="crop")
    for row in range(plot_height):
        label = _y_label(row, plot_height, low, high)
        text.append(f"{label:>{Y_LABEL_WIDTH}}┤")
        for column in range(plot_width):
            bits_best, bits_loss = staircase.cells[row][column], scatter.cells[row][column]
            bits = bits_best | bits_loss
            style = best_style if bits_best else loss_style
            text.append(chr(BRAILLE_BASE + bits) if bits else " ", style=style)
        text.append("\n")
    axis = f"1 .. {count} evaluations"
    text.append(" " * Y_LABEL_WIDTH + "└" + axis.rjust(plot_width, "─")[-plot_width:])
    return text


def _y_label(row: int, rows: int, low: float, high: float) -> str:
    """The scale at the top, middle and bottom rows; blank elsewhere."""
    if row == 0:
        return f"{high:.4g}"
    if row == rows - 1:
        return f"{low:.4g}"
    if rows >= 5 and row == rows // 2:
        return f"{high - (high - low) * (row * 4 + 1.5) / (4 * rows - 1):.4g}"
    return ""
