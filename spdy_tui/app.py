"""`spdy-tui`: a thin viewer and launcher for SPDY runs (docs/tui.md).

The search never runs here: a profile is started as a detached `spdy run` child, and the UI only
tails the run directory's events.jsonl.  A run directory given directly, live or finished, goes
through the same path, so a dropped SSH session loses nothing.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.reactive import reactive
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Header, Label, ListItem, ListView
from textual.worker import get_current_worker

from engine.core.events import Follower, RunLogError, check_log_start
from engine.run.runlog import RunState, unreadable_warning
from engine.run.sweep import is_sweep
from spdy_tui.compare_screen import MarkRuns
from spdy_tui.launch import RunProcess, new_run_dir, start_run
from spdy_tui.panes import AlertPane, AllocationPane, LossPlot, OutcomePane, ProgressPane, StatePane, StatusPane
from spdy_tui.profile_form import ProfileFormScreen
from spdy_tui.sweep_screen import StartSweeps, SweepScreen, sweep_dirs, sweep_label
from spdy_tui.timing_pane import TimingPane

USAGE = """usage: spdy-tui [PROFILE.toml | RUN_DIR]

Terminal UI for SPDY runs.
  PROFILE.toml  start `spdy run PROFILE --out runs/<name>-<time>` in the background and watch it
  RUN_DIR       attach to a run directory (live or finished) and watch or inspect it
  SWEEP_DIR     watch a sweep (`spdy sweep ... --out SWEEP_DIR`): a row per target
  (nothing)     a start screen listing profiles/*.toml and recent runs/*

Quitting (q) leaves a started run going; `s` stops it. Keys are shown in the footer.
-h, --help     this text;  -V, --version  the version
"""
POLL_SECONDS = 0.25  # the log is read, and the screen redrawn, at most this often


def discover(root: Path) -> tuple[list[Path], list[Path]]:
    """Profiles under root/profiles, and run directories under root/runs, newest first."""
    profiles = sorted((root / "profiles").glob("*.toml"))
    logs = sorted((root / "runs").glob("*/events.jsonl"), key=lambda path: path.stat().st_mtime, reverse=True)
    return profiles, [log.parent for log in logs]


class PathItem(ListItem):
    def __init__(self, path: Path, text: str):
        super().__init__(Label(text))
        self.path = path


class StartScreen(MarkRuns, StartSweeps, Screen):
    """Pick a profile to start a run, or a recent run to attach to."""

    BINDINGS = [Binding("r", "rescan", "Rescan"), Binding("n", "new_profile", "New profile"), Binding("e", "edit_profile", "Edit profile")]

    class Picked(Message):
        def __init__(self, path: Path):
            super().__init__()
            self.path = path

    def __init__(self, root: Path):
        super().__init__()
        self.root = root

    def compose(self) -> ComposeResult:
        yield Header()
        yield Label("Enter on a profile starts a run; Enter on a run attaches to it; n makes a profile, e edits one.", id="start-help")
        yield ListView(id="start")
        yield Footer()

    def on_screen_resume(self) -> None:
        self.action_rescan()

    def action_rescan(self) -> None:
        profiles, runs = discover(self.root)
        listing = self.query_one("#start", ListView)
        listing.clear()
        for path in profiles:
            listing.append(PathItem(path, f"start   {path.relative_to(self.root)}"))
        for path in runs:
            stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime((path / "events.jsonl").stat().st_mtime))
            listing.append(PathItem(path, f"attach  {path.relative_to(self.root)}  (last event {stamp})"))
        for path in sweep_dirs(self.root):
            listing.append(PathItem(path, sweep_label(path, self.root)))
        self.show_marks()
        if not profiles and not runs:
            listing.append(ListItem(Label(f"no profiles/*.toml or runs/*/events.jsonl under {self.root}"), disabled=True))
        listing.index = 0
        listing.focus()

    def on_list_view_selected(self, event: ListView.Selected) -> None:
        if isinstance(event.item, PathItem):
            self.post_message(self.Picked(event.item.path))

    def action_new_profile(self) -> None:
        self.app.push_screen(ProfileFormScreen(self.root), self.form_closed)

    def action_edit_profile(self) -> None:
        item = self.query_one("#start", ListView).highlighted_child
        if not isinstance(item, PathItem) or item.path.suffix != ".toml":
            self.notify("highlight a profile to edit it (n makes a new one)", severity="warning")
            return
        self.app.push_screen(ProfileFormScreen(self.root, item.path), self.form_closed)

    def form_closed(self, saved: Path | None) -> None:
        """The form was left; with a saved profile (ctrl+r) a run of it starts."""
        if saved is not None:
            self.post_message(self.Picked(saved))


class ConfirmStopScreen(ModalScreen[bool]):
    BINDINGS = [Binding("y", "answer(True)", "Yes, stop it"), Binding("n,escape", "answer(False)", "No")]

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm"):
            yield Label("Stop the run? It gets SIGINT, as from Ctrl-C; it can resume later.")
            yield Label("y: stop   n: keep running")
        yield Footer()

    def action_answer(self, stop: bool) -> None:
        self.dismiss(stop)


class RunScreen(Screen):
    """Every pane of one run directory, live or at a chosen best of its history."""

    BINDINGS = [
        Binding("left_square_bracket,left", "step(-1)", "Prev best", key_display="[ ←", priority=True),
        Binding("right_square_bracket,right", "step(1)", "Next best", key_display="] →", priority=True),
        Binding("f,end", "follow", "Latest"),
        Binding("t", "toggle_timing", "Timing table"),
        Binding("s", "stop_run", "Stop run"),
        Binding("r", "resume_run", "Resume run"),
        Binding("escape", "app.pop_screen", "Runs"),
    ]
    cursor: reactive[int | None] = reactive(None)  # index of the best shown; None follows the latest
    timing_shown: reactive[bool | None] = reactive(None, init=False)  # the timing table in place of the allocation; None: while timing

    class LogGrew(Message):
        """New events (possibly none), the run process's exit code and what is wrong with the log, from one poll."""

        def __init__(self, events: list[dict], exit_code: int | None, problems: tuple[str, ...] = (), process: RunProcess | None = None):
            super().__init__()
            self.events, self.exit_code, self.problems, self.process = events, exit_code, problems, process

    def __init__(self, run_dir: Path, process: RunProcess | None = None):
        super().__init__()
        self.run_dir, self.process = run_dir, process
        self.live = RunState()
        self.exit_code: int | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield StatusPane(id="status")
        with Horizontal(id="body"):
            yield TimingPane(self.run_dir, id="timing")
            with VerticalScroll(id="allocation-scroll"):
                yield AllocationPane(id="allocation")
            with Vertical(id="side"):
                yield ProgressPane(id="progress")
                yield LossPlot(id="loss-plot")
                yield OutcomePane(id="outcome")
        yield AlertPane(id="alerts")
        yield Footer()

    def on_resize(self) -> None:
        self.set_class(self.size.width < 100, "-narrow")  # 80 x 24: the two columns share the width evenly

    def on_mount(self) -> None:
        self.sub_title = self.run_dir.name
        self.query_one("#allocation-scroll").border_title = "best allocation"
        self.query_one("#timing").border_title = "timing table: t toggles"
        self.query_one("#progress").border_title = "progress"
        self.query_one("#loss-plot").border_title = "loss: ⠂ evals ─ best"
        self.query_one("#outcome").border_title = "baselines and speedup"
        self.query_one("#allocation-scroll").focus()
        self.tail_log()

    @work(thread=True, exclusive=True)
    def tail_log(self) -> None:
        """Poll the log every POLL_SECONDS and post what arrived as one message."""
        worker, follower = get_current_worker(), Follower(self.run_dir / "events.jsonl")
        exit_seen, problems_seen = None, ()  # the process whose exit was posted (a resumed run is a new one)
        while not worker.is_cancelled:
            process = self.process
            exit_code = process.exit_code if process else None  # before reading: its last lines are in
            events = follower.poll()
            problems = log_problems(follower)
            if events or (exit_code is not None and exit_seen is not process) or problems != problems_seen:
                self.post_message(self.LogGrew(events, exit_code, problems, process))
                exit_seen, problems_seen = process if exit_code is not None else None, problems
            time.sleep(POLL_SECONDS)

    def on_run_screen_log_grew(self, message: LogGrew) -> None:
        for event in message.events:
            self.live.apply(event)
        self.query_one(AlertPane).log_problems = message.problems
        if message.exit_code is not None and self.exit_code is None and message.process is self.process:
            self.exit_code = message.exit_code
            self.query_one(AlertPane).process_failure = self._process_failure()
            self.refresh_bindings()
        if self.cursor is None:
            self.show(self.live)
        else:
            self.query_one(StatusPane).position = self._position()

    def watch_cursor(self) -> None:
        self.show(self.live if self.cursor is None else self.live.at_best(self.cursor))

    def show(self, state: RunState) -> None:
        for pane in self.query(StatePane):
            pane.state = state
        self.query_one(LossPlot).state = state
        self.query_one(TimingPane).state = state
        self.query_one(StatusPane).position = self._position()
        self.watch_timing_shown()

    def watch_timing_shown(self) -> None:
        """The timing table while the timing stage runs (and no best exists yet), or as toggled with t."""
        shown = self.timing_shown
        if shown is None:
            shown = self.live.stages.get("timings") == "started" and not self.live.best_history
        timing, allocation = self.query_one(TimingPane), self.query_one("#allocation-scroll")
        if timing.display != shown:
            timing.display, allocation.display = shown, not shown
            (timing.query_one("#timing-table") if shown else allocation).focus()

    def action_toggle_timing(self) -> None:
        self.timing_shown = not self.query_one(TimingPane).display

    def _position(self) -> str:
        count = len(self.live.best_history)
        if self.cursor is not None:
            n = self.live.best_history[self.cursor].get("n")
            return f"best {self.cursor + 1} of {count} (eval #{n}) · f: latest"
        if self.live.finished is not None:
            return "final"
        return "stopped" if self.exit_code is not None else "live"

    def _process_failure(self) -> tuple[str, ...]:
        """What the alert pane says about the exited run process; nothing after a clean finish."""
        code = self.exit_code
        if code == 0 and self.live.finished is not None:
            return ()
        if code == 130:
            return ("spdy run was interrupted (exit code 130); continue it with:", self.process.resume_command)
        if code == 0:
            headline = "spdy run exited (code 0) without logging run_finished; the end of its stderr:"
        elif code < 0:
            headline = f"spdy run was killed by {signal.Signals(-code).name}; the end of its stderr:"
        else:
            headline = f"spdy run failed with exit code {code}; the end of its stderr:"
        return (headline, *self.process.stderr_tail())

    def action_step(self, delta: int) -> None:
        count = len(self.live.best_history)
        here = count if self.cursor is None else self.cursor  # the latest view sits after the last best
        target = here + delta
        if not 0 <= target <= count or target == here:
            self.app.bell()
            return
        self.cursor = None if target == count else target

    def action_follow(self) -> None:
        self.cursor = None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop_run":
            return self.process is not None and self.exit_code is None
        if action == "resume_run":
            return self.process is not None and self.exit_code == 130
        return True

    def action_resume_run(self) -> None:
        """Continue a run this UI stopped: `spdy run PROFILE --out RUN_DIR --resume`, watched here again."""
        if self.process is None or self.exit_code != 130:
            return
        self.process = start_run(self.process.profile, self.run_dir, resume=True)
        self.exit_code = None
        self.query_one(AlertPane).process_failure = ()
        self.refresh_bindings()
        self.notify("resuming the run from what it has on disk")

    def action_stop_run(self) -> None:
        def stop_if_confirmed(stop: bool | None) -> None:
            if stop and self.process is not None:
                self.process.stop()
                self.notify("SIGINT sent to the run; it stops at the next safe point")

        self.app.push_screen(ConfirmStopScreen(), stop_if_confirmed)


class SpdyApp(App):
    """The start screen underneath, and a run screen on top when a run is open."""

    TITLE = "spdy-tui"
    CSS_PATH = "app.tcss"
    BINDINGS = [Binding("q", "quit", "Quit (run keeps going)")]

    def __init__(self, target: Path | None = None, root: Path | None = None):
        super().__init__()
        self.target = target
        self.root = root or Path.cwd()

    def on_mount(self) -> None:
        self.push_screen(StartScreen(self.root))
        if self.target is not None:
            self.open(self.target)

    def on_start_screen_picked(self, message: StartScreen.Picked) -> None:
        self.open(message.path)

    def open(self, path: Path) -> None:
        """Attach to a run directory, or start a run of a profile and attach to its directory."""
        if is_sweep(path):
            self.push_screen(SweepScreen(path))
            return
        if path.is_dir():
            problem = run_directory_problem(path)
            if problem:
                self.notify(problem, severity="error", timeout=30)
                return
            self.push_screen(RunScreen(path))
            return
        try:
            process = start_run(path, new_run_dir(path, self.root / "runs"))
        except OSError as exc:
            self.notify(f"could not start spdy run: {exc}", severity="error", timeout=30)
            return
        self.push_screen(RunScreen(process.run_dir, process))


def log_problems(follower: Follower) -> tuple[str, ...]:
    """What the alert pane says about the log itself: not a run log, or lines it could not read."""
    if follower.error is not None:
        return (follower.error,)
    return (unreadable_warning(follower.unreadable),) if follower.unreadable else ()


def run_directory_problem(path: Path) -> str:
    """Why ``path`` cannot be watched as a run directory ("" if it can).

    A run directory holds events.jsonl or profile.toml (a run that is just starting may not have
    written its log yet); its log, once it has a line, starts with a run_started event."""
    log = path / "events.jsonl"
    if not log.exists():
        if (path / "profile.toml").exists():
            return ""
        return f"{path}: not a run directory (it has no events.jsonl and no profile.toml)"
    try:
        check_log_start(log)
    except RunLogError as exc:
        return str(exc)
    return ""


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return
    if argv and argv[0] in ("-V", "--version"):
        from importlib.metadata import version

        print(f"spdy-tui {version('spdy-tui')}")
        return
    target = Path(argv[0]) if argv else None
    if len(argv) > 1 or (target is not None and not (target.is_dir() or (target.is_file() and target.suffix == ".toml"))):
        problem = "expected at most one argument" if len(argv) > 1 else f"{target}: neither a run directory nor a .toml profile"
        print(f"spdy-tui: {problem}\n\n{USAGE}", end="", file=sys.stderr)
        sys.exit(2)
    if target is not None and target.is_dir() and not is_sweep(target) and (problem := run_directory_problem(target)):
        print(f"spdy-tui: {problem}", file=sys.stderr)
        sys.exit(2)
    SpdyApp(target).run()


if __name__ == "__main__":  # pragma: no cover
    main()
