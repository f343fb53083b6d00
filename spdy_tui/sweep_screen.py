"""A sweep, started and watched: one row per target, and the trade-off filling in as runs finish.

``w`` on a profile of the start screen (``StartSweeps``) asks for targets (``TargetsScreen``) and
starts `spdy sweep PROFILE --targets ... --out runs/<profile>-sweep-<time>` as a detached child,
like a run (``spdy_tui.launch``); ``SweepScreen`` then reads the sweep's ``sweep.json`` and each
target run's ``events.jsonl`` every ``POLL_SECONDS``, so quitting or a dropped SSH session loses
nothing and ``spdy-tui runs/<sweep>`` watches it again.  Enter on a row opens that target's run
screen.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Header, Input, Label, ListView, Static
from textual.worker import get_current_worker

from engine.core.errors import RunError
from engine.core.events import Follower
from engine.export.tradeoff import Point, read_run_points, series
from engine.run.runlog import RunState
from engine.run.sweep import SWEEP, parse_targets, read_sweep
from spdy_tui.launch import RunProcess, new_run_dir, start_run
from spdy_tui.panes import number
from spdy_tui.tradeoff_plot import legend, tradeoff_plot

POLL_SECONDS = 0.5
COLUMNS = ("target", "state", "stage", "evals", "loss", "pred.", "meas.", "held-out")
STATE_MARKS = {"pending": "·", "running": "▶", "done": "✓", "infeasible": "✗", "failed": "✗", "interrupted": "‖"}


def sweep_dirs(root: Path) -> list[Path]:
    """Sweep directories under root/runs, newest first."""
    files = sorted((root / "runs").glob(f"*/{SWEEP}"), key=lambda path: path.stat().st_mtime, reverse=True)
    return [path.parent for path in files]


def sweep_label(path: Path, root: Path) -> str:
    record = read_sweep(path) or {"targets": []}
    targets = ", ".join(f"{target:g}x" for target in record.get("targets", []))
    return f"sweep   {path.relative_to(root)}  (targets {targets})"


def current_stage(state: RunState) -> str:
    """The stage running, else the last one logged, else what the run is doing."""
    running = [name for name, stage_state in state.stages.items() if stage_state == "started"]
    if state.finished is not None:
        return "finished" if state.finished.get("status") == "ok" else str(state.finished.get("status"))
    return running[-1] if running else (list(state.stages)[-1] if state.stages else "—")


def target_row(run: dict, state: RunState, points: list[Point]) -> tuple[str, ...]:
    """One target's row: its state and latest numbers (the result's once it has one)."""
    spdy = next((point for point in points if point.method == "spdy"), None)
    measured = spdy.measured if spdy else (state.verify or {}).get("measured")
    return (
        f"{run['target']:g}x",
        f"{STATE_MARKS.get(run['state'], '?')} {run['state']}",
        current_stage(state) if run["state"] != "pending" else "—",
        str(len(state.evaluations)) if state.evaluations else "—",
        number(spdy.loss if spdy else state.best_loss),
        number(spdy.predicted if spdy else state.predicted_speedup, ".3f", "x"),
        number(measured, ".3f", "x"),
        number(spdy.quality if spdy else None),
    )


def shared_progress(state: RunState) -> str:
    """Where the shared timing table and database are: cells done of layers x levels."""
    progress, name = (state.database, "database") if state.database.total else (state.timing, "timings")
    return f"{name} {progress.done}/{progress.total}" if progress.total else ""


def tradeoff_table(points: list[Point]) -> Table | Text:
    """The trade-off so far: per finished target, SPDY and every baseline."""
    if not points:
        return Text("no finished run yet: the trade-off fills in as runs finish", style="dim")
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("target", "allocation", "pred.", "meas.", "held-out"):
        table.add_column(column, justify="left" if column == "allocation" else "right", no_wrap=True)
    for point in points:
        table.add_row(number(point.target, "g", "x"), Text(point.method, style="bold" if point.method == "spdy" else ""),
                      number(point.predicted, ".3f", "x"), number(point.measured, ".3f", "x"), number(point.quality))
    return table


class TargetsScreen(ModalScreen[str | None]):
    """Ask for the sweep's targets; refused (the value named) until they read as speedups."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    TargetsScreen { align: center middle; }
    #targets-box { width: 64; height: auto; border: thick $primary; padding: 1 2; background: $surface; }
    #targets-error { color: $error; }
    """

    def __init__(self, profile: Path):
        super().__init__()
        self.profile = profile

    def compose(self) -> ComposeResult:
        with Vertical(id="targets-box"):
            yield Label(f"Sweep {self.profile.name}: target speedups, comma-separated")
            yield Input(value="1.25,1.5,2,3", id="targets")
            yield Label("", id="targets-error")
            yield Label("enter: start the sweep   escape: cancel")
        yield Footer()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        try:
            parse_targets(event.value)
        except RunError as exc:
            self.query_one("#targets-error", Label).update(f"✗ {exc}")
            return
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class SweepScreen(Screen):
    """One sweep directory, live or finished."""

    BINDINGS = [Binding("enter", "open_run", "Open run", priority=True), Binding("escape", "app.pop_screen", "Back")]
    DEFAULT_CSS = """
    #sweep-status { height: auto; padding: 0 1; background: $boost; }
    #sweep-runs { height: auto; max-height: 12; border: round $primary; }
    #sweep-runs:focus { border: round $accent; }
    #sweep-bottom { height: 1fr; }
    #sweep-tradeoff { width: 3fr; height: 100%; border: round $primary; padding: 0 1; }
    #sweep-plot { width: 2fr; height: 100%; border: round $primary; padding: 0 1; }
    """

    class Polled(Message):
        """What one poll found: the sweep record, a row per target, the trade-off points, the child's exit code."""

        def __init__(self, record: dict | None, rows: list[tuple[str, ...]], points: list[Point], exit_code: int | None,
                     shared: str = ""):
            super().__init__()
            self.record, self.rows, self.points, self.exit_code, self.shared = record, rows, points, exit_code, shared

    def __init__(self, sweep_dir: Path, process: RunProcess | None = None):
        super().__init__()
        self.sweep_dir, self.process = sweep_dir, process
        self.record: dict | None = None
        self.rows: list[tuple[str, ...]] = []
        self.points: list[Point] = []

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("reading the sweep…", id="sweep-status")
        yield DataTable(id="sweep-runs", cursor_type="row", zebra_stripes=False)
        with Horizontal(id="sweep-bottom"):
            yield Static(id="sweep-tradeoff")
            yield Static(id="sweep-plot")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.sweep_dir.name
        table = self.query_one(DataTable)
        table.border_title = "targets: enter opens a run"
        self.query_one("#sweep-tradeoff").border_title = "trade-off so far"
        self.query_one("#sweep-plot").border_title = "speedup → quality ↑"
        table.focus()
        self.watch_sweep()

    @work(thread=True, exclusive=True)
    def watch_sweep(self) -> None:
        """Poll sweep.json and every target's log; post what changed as one message."""
        worker, followers, states, last, shared = get_current_worker(), {}, {}, None, ""
        while not worker.is_cancelled:
            exit_code = self.process.exit_code if self.process else None
            record = read_sweep(self.sweep_dir)
            rows, points = [], []
            for run in [(record or {}).get("shared") or {"dir": "shared"}, *(record or {}).get("runs", [])]:
                folder = self.sweep_dir / run["dir"]
                follower = followers.setdefault(run["dir"], Follower(folder / "events.jsonl"))
                state = states.setdefault(run["dir"], RunState())
                for event in follower.poll():
                    state.apply(event)
                if "target" not in run:  # the shared run: its cells done so far
                    shared = shared_progress(state)
                    continue
                done = read_run_points(folder) if run["state"] == "done" else []
                points += done
                rows.append(target_row(run, state, done))
            snapshot = (record, rows, points, exit_code, shared)
            if snapshot != last:
                self.post_message(self.Polled(*snapshot))
                last = snapshot
            time.sleep(POLL_SECONDS)

    def on_sweep_screen_polled(self, message: Polled) -> None:
        self.record, self.rows, self.points = message.record, message.rows, message.points
        table = self.query_one(DataTable)
        cursor = table.cursor_row
        table.clear(columns=True)  # columns too: the header is drawn again at the rows' widths
        table.add_columns(*COLUMNS)
        for row in message.rows:
            table.add_row(*row)
        if message.rows:
            table.move_cursor(row=min(cursor, len(message.rows) - 1))
        self.query_one("#sweep-status", Static).update(self._status(message))
        self.query_one("#sweep-tradeoff", Static).update(tradeoff_table(message.points))
        self.call_after_refresh(self._plot, message.points)  # at the pane's size once the layout has settled

    def _plot(self, points: list[Point]) -> None:
        pane = self.query_one("#sweep-plot", Static)
        if not pane.content_size.width or not pane.content_size.height:
            self.call_after_refresh(self._plot, points)  # not laid out yet
            return
        metric = (self.record or {}).get("metric") or "held-out"
        data = series(points, "cosine" in metric)
        width, height = max(pane.content_size.width, 30), max(pane.content_size.height - 2, 4)
        plot = tradeoff_plot(data, width, height, metric)
        pane.update(Group(plot, legend(data)) if data else plot)

    def on_resize(self) -> None:
        self.call_after_refresh(self._plot, self.points)

    def _status(self, message: Polled) -> Text:
        record = message.record
        if record is None:
            return Text(f"{self.sweep_dir}: waiting for the sweep to write {SWEEP}…", style="dim")
        done = sum(run["state"] == "done" for run in record["runs"])
        shared = record.get("shared", {})
        lines = Text.assemble(
            f"profile {Path(record.get('profile', '?')).name}   ",
            f"timing table + database: {STATE_MARKS.get(shared.get('state'), '?')} {shared.get('state', '?')}",
            f" ({message.shared})   " if message.shared and shared.get("state") == "running" else "   ",
            (f"{done} of {len(record['runs'])} targets done", "bold"),
        )
        if message.exit_code is not None and self.process is not None:
            words = "finished" if message.exit_code == 0 else f"exited with code {message.exit_code}"
            lines.append(f"\nspdy sweep {words}")
            if message.exit_code not in (0, 3):
                tail = self.process.stderr_tail(2)
                lines.append(("; " + " / ".join(tail)) if tail else "", style="dim")
                lines.append(f"\ncontinue with: spdy sweep {self.process.profile} --targets "
                             f"{','.join(f'{t:g}' for t in record['targets'])} --out {self.sweep_dir} --resume")
        return lines

    def action_open_run(self) -> None:
        table = self.query_one(DataTable)
        if self.record is None or not self.record["runs"] or table.cursor_row >= len(self.record["runs"]):
            self.app.bell()
            return
        run = self.record["runs"][table.cursor_row]
        run_dir = self.sweep_dir / run["dir"]
        if not (run_dir / "events.jsonl").exists():
            self.notify(f"target {run['target']:g}x has not started yet", severity="warning")
            return
        self.app.open(run_dir)


class StartSweeps(Screen):
    """A part of the start screen (mixed into it): ``w`` on a profile asks for targets and starts a sweep of it."""

    BINDINGS = [Binding("w", "sweep", "Sweep targets")]

    def action_sweep(self) -> None:
        item = self.query_one("#start", ListView).highlighted_child
        profile = getattr(item, "path", None)
        if profile is None or profile.suffix != ".toml":
            self.notify("highlight a profile to sweep its targets", severity="warning")
            return

        def start(targets: str | None) -> None:
            if targets is None:
                return
            sweep_dir = new_run_dir(Path(f"{profile.stem}-sweep"), self.root / "runs")
            command = [sys.executable, "-m", "spdy_tui.cli", "sweep", str(profile), "--targets", targets, "--out", str(sweep_dir)]
            try:
                process = start_run(profile, sweep_dir, command)
            except OSError as exc:
                self.notify(f"could not start spdy sweep: {exc}", severity="error", timeout=30)
                return
            self.app.push_screen(SweepScreen(sweep_dir, process))

        self.app.push_screen(TargetsScreen(profile), start)
