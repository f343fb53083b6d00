"""The timing table as it is measured: per layer, its time against sparsity as a heat strip.

One row per layer: a strip of one cell per level (ascending sparsity), each cell the level's
time t relative to the layer's dense time d, drawn in eighth blocks so it reads without colour:

    cell = "▁▂▃▄▅▆▇█"[clip(ceil(8 t / d) - 1, 0, 7)]     ("·" not measured yet, " " no such level)

so ▁ is at most 1/8 of the dense time and █ the dense time or slower; then d, and the best
speedup d / min_level t with its level.  When the strip is narrower than the grid, each cell
stands for consecutive levels (``cell_groups``) and shows the fastest of them.

The rows come from the run's ``timing`` events while the stage runs (``TimingView.from_state``)
and from ``timings.json`` once it exists (``TimingView.from_table``): the same view either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.reactive import reactive
from textual.widgets import DataTable, Static

from engine.core.grid import DENSE, level_sparsity, sort_levels
from engine.core.profile import ProfileError, from_dict
from engine.run.runlog import RunState
from engine.timing.table import TableError, load_table
from spdy_tui.names import short_names

SHADES = "▁▂▃▄▅▆▇█"
UNMEASURED, ABSENT = "·", " "
NAME_WIDTH, NARROW_NAME_WIDTH = 14, 10  # the narrow one below NARROW_PANE columns (80 x 24)
NARROW_PANE = 50
OTHER_COLUMNS = 7 + 5 + 2 * 4 + 2  # dense, best, cell padding, scroll bar
LEGEND = "levels: sparsity →, ▁ ≤⅛ of dense … █ ≥ dense, · not yet"


@dataclass(frozen=True)
class TimingRow:
    name: str
    seconds: dict[str, float]  # level -> seconds, measured so far

    def dense(self, levels: list[str]) -> float | None:
        """The dense time: the 0.0000 level, else (a grid without it) the first level of the layer's."""
        if DENSE in self.seconds:
            return self.seconds[DENSE]
        first = next((level for level in levels if level in self.seconds), None)
        return None if DENSE in levels or first is None else self.seconds[first]

    def best(self, levels: list[str]) -> tuple[str, float] | None:
        """(level, speedup over dense) of the fastest level measured so far."""
        dense = self.dense(levels)
        if dense is None or not self.seconds:
            return None
        level = min(self.seconds, key=lambda name: (self.seconds[name], levels.index(name) if name in levels else 0))
        return level, dense / self.seconds[level]


@dataclass(frozen=True)
class TimingView:
    levels: list[str]  # the grid, ascending in sparsity
    rows: list[TimingRow]
    source: str  # "events" while measured, "timings.json" once written
    caption: str = ""

    @classmethod
    def from_state(cls, state: RunState) -> TimingView:
        """The table so far, from the run's timing events: while the stage runs, a cell per level of the
        run's grid (from its profile); otherwise a cell per level measured."""
        seen = sorted({level for levels in state.measured.values() for level in levels}, key=_sparsity_or_inf)
        levels = seen
        measuring = state.stages.get("timings") == "started"
        if measuring and state.run_started is not None and isinstance(state.run_started.get("profile"), dict):
            try:
                levels = from_dict(state.run_started["profile"]).levels()
            except (ProfileError, ValueError, TypeError):
                levels = seen
        levels = levels + [level for level in seen if level not in levels]
        rows = [TimingRow(name, dict(seconds)) for name, seconds in state.measured.items()]
        done, total = state.timing.done, state.timing.total
        caption = f"measured so far: {done}/{total} cells" if total else "no timing events yet"
        return cls(levels, rows, "events", caption)

    @classmethod
    def from_table(cls, path: Path) -> TimingView:
        """The finished table (TableError if it cannot be read)."""
        table = load_table(path)
        levels = sort_levels(list({level: None for layer in table.layers for level in layer.levels}))
        rows = [TimingRow(layer.name, dict(zip(layer.levels, layer.seconds))) for layer in table.layers]
        caption = f"{path.name}: dense {short_time(table.base)} end to end, up to {table.max_speedup():.2f}x"
        return cls(levels, rows, "timings.json", caption)


def cell_groups(count: int, cells: int) -> list[range]:
    """``count`` levels split into ``min(count, cells)`` runs of consecutive levels, as even as
    possible (the first ``count % cells`` runs one longer)."""
    cells = max(1, min(count, cells))
    size, extra = divmod(count, cells)
    groups, start = [], 0
    for index in range(cells):
        stop = start + size + (1 if index < extra else 0)
        groups.append(range(start, stop))
        start = stop
    return groups


def shade(seconds: float, dense: float) -> str:
    """The eighth block of ``seconds`` relative to ``dense`` (module docstring)."""
    if dense <= 0:
        return SHADES[-1]
    return SHADES[min(7, max(0, math.ceil(8 * seconds / dense) - 1))]


def heat_strip(row: TimingRow, levels: list[str], width: int) -> str:
    """The row's strip, ``min(len(levels), width)`` cells wide."""
    dense = row.dense(levels)
    cells = []
    for group in cell_groups(len(levels), width):
        names = [levels[index] for index in group]
        measured = [row.seconds[name] for name in names if name in row.seconds]
        if measured and dense is not None:
            cells.append(shade(min(measured), dense))
        else:
            cells.append(UNMEASURED if measured or any(name not in row.seconds for name in names) else ABSENT)
    return "".join(cells)


def short_time(seconds: float | None) -> str:
    """A time in three significant figures and a unit that keeps it short: 700 µs, 12.3 ms, 1.5 s."""
    if seconds is None:
        return "—"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def table_rows(view: TimingView, strip_width: int, name_width: int = NAME_WIDTH) -> list[tuple[str, str, str, str]]:
    """(short name, strip, dense, best) per layer: what the pane's table shows."""
    names = short_names([row.name for row in view.rows], name_width)
    rows = []
    for short, row in zip(names, view.rows):
        best = row.best(view.levels)
        rows.append((
            short,
            heat_strip(row, view.levels, strip_width),
            short_time(row.dense(view.levels)),
            "—" if best is None else f"{best[1]:.2f}x",
        ))
    return rows


class TimingPane(Vertical):
    """The timing table of one run, live from its events or from its timings.json."""

    state: reactive[RunState | None] = reactive(None, always_update=True)

    def __init__(self, run_dir: Path | None = None, **kwargs):
        super().__init__(**kwargs)
        self.run_dir = run_dir
        self.view: TimingView | None = None
        self._table_file: tuple[float, TimingView | str] | None = None  # (mtime, view or why unreadable)
        self._shown: list[tuple[str, str, str, str]] = []

    def compose(self) -> ComposeResult:
        yield Static(id="timing-caption")
        yield DataTable(id="timing-table", cursor_type="row", zebra_stripes=False)
        yield Static(id="timing-name")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for key, label in (("layer", "layer"), ("strip", "levels"), ("dense", "dense"), ("best", "best")):
            table.add_column(label, key=key)
        self.redraw()

    def watch_state(self) -> None:
        if self.is_mounted:
            self.redraw()

    def on_resize(self) -> None:
        self.redraw()

    def current_view(self) -> TimingView | str:
        """From timings.json once the timing stage has written it, else from the events so far."""
        state = self.state or RunState()
        path = None if self.run_dir is None else self.run_dir / "timings.json"
        if path is not None and path.exists() and state.stages.get("timings") != "started":
            mtime = path.stat().st_mtime
            if self._table_file is None or self._table_file[0] != mtime:
                try:
                    self._table_file = (mtime, TimingView.from_table(path))
                except (TableError, OSError) as exc:
                    self._table_file = (mtime, f"{path}: {exc}")
            return self._table_file[1]
        return TimingView.from_state(state)

    def redraw(self) -> None:
        view = self.current_view()
        caption = self.query_one("#timing-caption", Static)
        table = self.query_one(DataTable)
        if isinstance(view, str):
            caption.update(Text(view, style="bold red"))
            return
        self.view = view
        caption.update(Text.assemble(view.caption, "\n", (LEGEND, "dim")))
        pane_width = self.content_size.width or 80
        name_width = NARROW_NAME_WIDTH if pane_width < NARROW_PANE else NAME_WIDTH
        rows = table_rows(view, max(4, pane_width - name_width - OTHER_COLUMNS), name_width)
        if rows == self._shown:
            return
        keep = self._shown and [row[0] for row in rows[: len(self._shown)]] == [row[0] for row in self._shown]
        if not keep or any(len(new[1]) != len(old[1]) for new, old in zip(rows, self._shown)):
            cursor = table.cursor_row
            table.clear()
            self._shown = []
            for index, row in enumerate(rows):
                table.add_row(*row, key=str(index))
            if rows:
                table.move_cursor(row=min(cursor, len(rows) - 1))
        else:
            for index, (new, old) in enumerate(zip(rows, self._shown)):
                for key, value, before in zip(("layer", "strip", "dense", "best"), new, old):
                    if value != before:
                        table.update_cell(str(index), key, value, update_width=True)
            for index in range(len(self._shown), len(rows)):
                table.add_row(*rows[index], key=str(index))
        self._shown = rows
        self._describe_row(table.cursor_row)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._describe_row(event.cursor_row)

    def _describe_row(self, index: int) -> None:
        """The full name of the highlighted layer, under the table."""
        line = self.query_one("#timing-name", Static)
        if self.view is None or not 0 <= index < len(self.view.rows):
            line.update("")
            return
        row = self.view.rows[index]
        best = row.best(self.view.levels)
        fastest = "" if best is None else f" · fastest {best[0]} ({best[1]:.2f}x)"
        line.update(Text.assemble(("▸ ", "bold"), (row.name, "bold"), f"{fastest} · {len(row.seconds)}/{len(self.view.levels)} levels"))


def _sparsity_or_inf(level: str) -> float:
    try:
        return level_sparsity(level)
    except ValueError:
        return math.inf
