"""Runs side by side: speedup and quality with the trade-off curve, the allocation per layer, the loss curves.

On the start screen ``m`` marks runs (``MarkRuns``) and ``c`` opens ``CompareScreen`` on the marked
ones (two or more).  Each run is read once, from its result.json where it has one and from its
log (``engine.run.runlog``) otherwise, so a run still searching compares by its best so far.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Header, Label, ListView, Static, TabbedContent, TabPane

from engine.core.events import RunLogError
from engine.core.grid import level_sparsity
from engine.export.result import ResultError, read_result
from engine.export.tradeoff import read_run_points, series
from engine.run.runlog import RunState, summarise
from spdy_tui.names import short_names
from spdy_tui.panes import LossPlot, bar, number
from spdy_tui.tradeoff_plot import legend, tradeoff_plot

MARKED, UNMARKED = "marked", "attach"  # the start screen's word before a run: same width, readable without colour


@dataclass
class ComparedRun:
    """What the comparison shows of one run."""

    run_dir: Path
    state: RunState
    result: dict | None

    @property
    def name(self) -> str:
        return self.run_dir.name

    def sparsities(self) -> dict[str, float | None]:
        """Layer -> sparsity: the final allocation, else the best so far."""
        if self.result is not None:
            return {row["name"]: level_sparsity(row["level"]) for row in self.result["layers"]}
        return {choice.name: choice.sparsity for choice in self.state.allocation()}


def load_run(run_dir: Path) -> ComparedRun:
    try:
        state = summarise(run_dir)
    except RunLogError:
        state = RunState()
    try:
        result = read_result(run_dir)
    except ResultError:
        result = None
    return ComparedRun(run_dir, state, result)


def summary_table(runs: list[ComparedRun]) -> Table:
    """One row per run: target, predicted and measured speedup, calibration loss, held-out metric, evaluations."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("run", "target", "predicted", "measured", "loss", "held-out", "evals"):
        table.add_column(column, justify="left" if column == "run" else "right", no_wrap=column != "run")
    for run in runs:
        result = run.result or {}
        loss = result.get("loss") or {}
        table.add_row(
            run.name,
            number(result.get("target_speedup"), "g", "x"),
            number(result.get("predicted_speedup", run.state.predicted_speedup), ".3f", "x"),
            number(result.get("measured_speedup", (run.state.verify or {}).get("measured")), ".3f", "x"),
            number(loss.get("calibration", run.state.best_loss)),
            number(loss.get("heldout")),
            str(result.get("evaluations", len(run.state.evaluations))),
        )
    metrics = {str(run.result.get("heldout_metric")) for run in runs if run.result and run.result.get("heldout_metric")}
    if len(metrics) == 1:
        table.caption = f"held-out: {metrics.pop()}"
    return table


def allocation_table(runs: list[ComparedRun]) -> RenderableType:
    """Layers down, runs across: each run's sparsity per layer, as a number and a bar."""
    columns = [run.sparsities() for run in runs]
    layers = list(dict.fromkeys(name for column in columns for name in column))
    if not layers:
        return Text("no allocation yet in any of these runs", style="dim")
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("layer", no_wrap=True, overflow="ellipsis")
    for number_, run in enumerate(runs, start=1):
        table.add_column(f"{number_}: {run.name}", no_wrap=True, overflow="ellipsis", max_width=14)
    for short, layer in zip(short_names(layers), layers):
        cells = []
        for column in columns:
            sparsity = column.get(layer)
            cells.append("—" if sparsity is None else f"{100 * sparsity:3.0f}% {bar(sparsity, 5)}")
        table.add_row(short, *cells)
    return table


class TradeoffPlot(Widget):
    """The text trade-off of every point of the runs given."""

    def __init__(self, points: list, metric: str, **kwargs):
        super().__init__(**kwargs)
        self.points, self.metric = points, metric

    def render(self) -> RenderableType:
        data = series(self.points, "cosine" in self.metric)
        plot = tradeoff_plot(data, self.content_size.width, max(self.content_size.height - 2, 4), self.metric)
        return Group(plot, legend(data)) if data else plot


class CompareScreen(Screen):
    """Two or more runs side by side, one tab per aspect."""

    BINDINGS = [
        Binding("1", "tab('summary')", "Summary"),
        Binding("2", "tab('allocation')", "Allocation"),
        Binding("3", "tab('loss')", "Loss"),
        Binding("escape", "app.pop_screen", "Back"),
    ]
    DEFAULT_CSS = """
    CompareScreen TabPane { padding: 0 1; }
    CompareScreen .compare-loss { height: 12; border: round $primary; }
    CompareScreen #compare-summary { height: auto; margin-bottom: 1; }
    CompareScreen #compare-tradeoff { height: 1fr; min-height: 8; border: round $primary; }
    """

    def __init__(self, run_dirs: list[Path]):
        super().__init__()
        self.runs = [load_run(path) for path in run_dirs]

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(initial="summary"):
            with TabPane("1 speedup & quality", id="summary"):
                yield Static(summary_table(self.runs), id="compare-summary")
                yield self._tradeoff()
            with TabPane("2 allocation", id="allocation"):
                with VerticalScroll():
                    yield Static(allocation_table(self.runs), id="compare-allocation")
            with TabPane("3 loss", id="loss"):
                with VerticalScroll():
                    for number_, run in enumerate(self.runs, start=1):
                        plot = LossPlot(classes="compare-loss")
                        plot.border_title = f"{number_}: {run.name}  (⠂ evals ─ best)"
                        yield plot
        yield Footer()

    def _tradeoff(self) -> Widget:
        points = [point for run in self.runs for point in read_run_points(run.run_dir)]
        metrics = [run.result.get("heldout_metric") for run in self.runs if run.result]
        return TradeoffPlot(points, str(metrics[0]) if metrics and metrics[0] else "held-out", id="compare-tradeoff")

    def on_mount(self) -> None:
        self.sub_title = "compare " + ", ".join(run.name for run in self.runs)
        self.query_one(TradeoffPlot).border_title = "trade-off: speedup → held-out ↑"
        for plot, run in zip(self.query(LossPlot), self.runs):
            plot.state = run.state

    def action_tab(self, name: str) -> None:
        self.query_one(TabbedContent).active = name


class MarkRuns(Screen):
    """A part of the start screen (mixed into it): ``m`` marks the highlighted run, ``c`` compares the marked runs."""

    BINDINGS = [Binding("m", "mark", "Mark run"), Binding("c", "compare", "Compare marked")]
    marked: set[Path]

    def action_mark(self) -> None:
        item = self.query_one("#start", ListView).highlighted_child
        path = getattr(item, "path", None)
        if path is None or not path.is_dir() or not (path / "events.jsonl").exists():
            self.notify("highlight a run to mark it for comparison", severity="warning")
            return
        self.marked = getattr(self, "marked", set()) ^ {path}
        self.show_marks()

    def show_marks(self) -> None:
        """Say ``marked`` instead of ``attach`` on every marked run of the list (once its items are mounted)."""
        self.call_after_refresh(self._show_marks)

    def _show_marks(self) -> None:
        marked = getattr(self, "marked", set())
        for item in self.query_one("#start", ListView).children:
            path, labels = getattr(item, "path", None), item.query(Label)
            if path is None or not labels:
                continue
            label = labels.first()
            text = str(label.content)
            word = MARKED if path in marked else UNMARKED
            if text.startswith((MARKED, UNMARKED)) and not text.startswith(word):
                label.update(word + text[len(word):])

    def action_compare(self) -> None:
        marked = sorted(getattr(self, "marked", set()), key=lambda path: path.name)
        if len(marked) < 2:
            self.notify(f"mark two or more runs with m to compare them ({len(marked)} marked)", severity="warning")
            return
        self.app.push_screen(CompareScreen(marked))
