import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from rich.console import Console
from textual.widgets import ListView, Static

import spdy_tui.app
from engine.run.runlog import summarise
from spdy_tui import launch
from spdy_tui.app import RunScreen, SpdyApp, main
from spdy_tui.panes import AlertPane, bar
from spdy_tui.plot import Y_LABEL_WIDTH, loss_plot
from tests.test_runlog import EVALUATIONS, write_synthetic_run

pytestmark = pytest.mark.anyio  # async tests run on anyio's pytest plugin (asyncio backend)
ROOT = Path(__file__).resolve().parent.parent
SIZE = (120, 40)


def pane_text(widget) -> str:
    """What a pane shows, as plain text at its current width."""
    renderable = widget.content if isinstance(widget, Static) else widget.render()
    console = Console(width=max(widget.content_size.width, 20), record=True, file=open(os.devnull, "w"), color_system=None)
    console.print(renderable)
    return console.export_text()


async def wait_until(pilot, condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the UI"
        await pilot.pause(0.05)


@pytest.fixture
def finished_run(tmp_path, monkeypatch):
    run_dir = tmp_path / "runs" / "digits-demo"
    write_synthetic_run(run_dir / "events.jsonl", monkeypatch)
    return run_dir


def fake_run(tmp_path, body: str) -> list[str]:
    """A stand-in for `spdy run`: a script that exits 130 on SIGINT, like the real CLI."""
    script = tmp_path / "fake_run.py"
    script.write_text(
        "import signal, sys, time\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from engine.core.events import EventLog\n"
        "signal.signal(signal.SIGINT, lambda *_: sys.exit(130))\n"
        "log = EventLog(sys.argv[1] + '/events.jsonl')\n"
        "log.emit('run_started', profile={}, seed=0)\n" + textwrap.dedent(body)  # a run log starts so
    )
    return [sys.executable, str(script)]


# ---------------------------------------------------------------------------- drawing
def test_loss_plot_draws_dots_and_the_best_staircase_in_braille():
    lines = loss_plot([2.0, None, 1.0], [2.0, 2.0, 1.0], width=Y_LABEL_WIDTH + 1 + 3, height=3).plain.splitlines()
    # 3 x 2 cells = 6 x 8 dots; evaluations at x = 0, 2, 5; loss 2.0 at y = 0, 1.0 at y = 7
    assert lines[0] == "2".rjust(Y_LABEL_WIDTH) + "┤⠉⠉⢹"  # best: along the top, then down at x = 5
    assert lines[1] == "1".rjust(Y_LABEL_WIDTH) + "┤  ⢸"
    assert loss_plot([None], [None], 40, 5).plain == "no evaluations yet"


def test_bar_fills_in_eighths_on_a_shaded_track():
    assert bar(0.0, 4) == "░░░░" and bar(1.0, 4) == "████" and bar(0.5625, 4) == "██▎░"


# ---------------------------------------------------------------------------- attach to a log
async def test_attach_to_a_finished_log_fills_every_pane(finished_run):
    state = summarise(finished_run)
    app = SpdyApp(finished_run, root=finished_run.parent.parent)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        assert isinstance(screen, RunScreen)
        await wait_until(pilot, lambda: screen.live.finished is not None)
        await pilot.pause()
        status = pane_text(screen.query_one("#status"))
        assert f"evals {EVALUATIONS}" in status and f"best loss {state.best_loss:.4f}" in status
        assert "run finished: ok in 13m32s" in status and "view final" in status
        assert "✓ timings (done)" in status and "✓ search (done)" in status
        allocation = pane_text(screen.query_one("#allocation"))
        for choice in state.allocation():
            assert f"{choice.name} " in allocation and choice.level in allocation and f"{100 * choice.share:4.1f}%" in allocation
        progress = pane_text(screen.query_one("#progress"))
        assert "timings" in progress and "30/30 100%" in progress and "6 layers x ≤5 levels" in progress
        outcome = pane_text(screen.query_one("#outcome"))
        assert "uniform" in outcome and "0.9500" in outcome and "measured 1.930x vs predicted 2.060x" in outcome
        plot = pane_text(screen.query_one("#loss-plot"))
        assert f"1 .. {EVALUATIONS} evaluations" in plot and f"{state.best_loss:.4g}" in plot
        assert not screen.query_one(AlertPane).display


async def test_stepping_through_best_history_updates_every_pane(finished_run):
    state = summarise(finished_run)
    count = len(state.best_history)
    app = SpdyApp(finished_run, root=finished_run.parent.parent)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await wait_until(pilot, lambda: screen.live.finished is not None)
        await pilot.press("left_square_bracket", "left")  # two steps back from the latest view
        first_shown = state.best_history[count - 2]
        status = pane_text(screen.query_one("#status"))
        assert f"best {count - 1} of {count} (eval #{first_shown['n']})" in status
        assert f"evals {first_shown['n']}" in status and "run finished" not in status
        assert f"eval #{first_shown['n']} · loss {first_shown['loss']:.4f}" in pane_text(screen.query_one("#allocation"))
        assert f"1 .. {first_shown['n']} evaluations" in pane_text(screen.query_one("#loss-plot"))
        assert "verify: not yet measured" in pane_text(screen.query_one("#outcome"))
        await pilot.press(*["left"] * count)  # past the first best: stays there
        assert screen.cursor == 0
        await pilot.press("right_square_bracket")
        assert screen.cursor == 1
        await pilot.press("f")
        assert screen.cursor is None and "view final" in pane_text(screen.query_one("#status"))


async def test_truncated_last_line_is_skipped_until_it_is_completed(finished_run):
    log = finished_run / "events.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:-3]) + lines[-3][:25])  # cut inside the last search event
    app = SpdyApp(finished_run, root=finished_run.parent.parent)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await wait_until(pilot, lambda: len(screen.live.events) == len(lines) - 3)
        assert "run finished" not in pane_text(screen.query_one("#status"))
        with open(log, "a") as handle:
            handle.write("".join([lines[-3][25:], *lines[-2:]]))
        await wait_until(pilot, lambda: screen.live.finished is not None)
        assert len(screen.live.events) == len(lines)


# ---------------------------------------------------------------------------- child runs
async def test_live_run_of_a_child_process_streams_into_the_panes(tmp_path):
    command = fake_run(tmp_path, """
        log.emit("stage", name="search", state="started")
        for n in range(1, 9):
            log.emit("eval", n=n, phase="init", k=0, loss=1.0 / n, best=1.0 / n, accepted=True, predicted_speedup=2.0)
            log.emit("best", n=n, loss=1.0 / n, levels=["0.4000", "0.5000"], names=["a", "b"])
            time.sleep(0.05)
        log.emit("run_finished", status="ok", wall_seconds=0.4)
    """)
    process = launch.start_run(tmp_path / "p.toml", tmp_path / "runs" / "live", command + [str(tmp_path / "runs" / "live")])
    app = SpdyApp(root=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await app.push_screen(RunScreen(process.run_dir, process))
        screen = app.screen
        await wait_until(pilot, lambda: screen.exit_code is not None)
        await pilot.pause()
        assert "evals 8" in pane_text(screen.query_one("#status")) and "view final" in pane_text(screen.query_one("#status"))
        assert not screen.query_one(AlertPane).display
        assert not screen.check_action("stop_run", ())


async def test_a_failing_child_shows_its_exit_code_and_stderr_not_a_crash(tmp_path):
    command = fake_run(tmp_path, """
        log.emit("error", message="profile names no model")
        sys.stderr.write("Traceback (most recent call last):\\nValueError: the model file is missing\\n")
        sys.exit(2)
    """)
    process = launch.start_run(tmp_path / "p.toml", tmp_path / "runs" / "bad", command + [str(tmp_path / "runs" / "bad")])
    app = SpdyApp(root=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await app.push_screen(RunScreen(process.run_dir, process))
        screen = app.screen
        await wait_until(pilot, lambda: screen.exit_code is not None)
        await pilot.pause()
        alerts = screen.query_one(AlertPane)
        text = pane_text(alerts)
        assert alerts.display and "error: profile names no model" in text
        assert "failed with exit code 2" in text and "ValueError: the model file is missing" in text


async def test_quitting_leaves_the_run_going_and_stop_sends_sigint_after_confirmation(tmp_path):
    command = fake_run(tmp_path, """
        log.emit("stage", name="timings", state="started")
        time.sleep(60)
    """)
    run_dir = tmp_path / "runs" / "slow"
    process = launch.start_run(tmp_path / "p.toml", run_dir, command + [str(run_dir)])
    try:
        assert os.getsid(process.process.pid) != os.getsid(0) and os.getpgid(process.process.pid) == process.process.pid
        async with SpdyApp(root=tmp_path).run_test(size=SIZE) as pilot:
            await pilot.app.push_screen(RunScreen(run_dir, process))
            await wait_until(pilot, lambda: pilot.app.screen.live.stages)
        assert process.exit_code is None  # the UI is gone, the run is not
        async with SpdyApp(root=tmp_path).run_test(size=SIZE) as pilot:
            await pilot.app.push_screen(RunScreen(run_dir, process))
            screen = pilot.app.screen
            await pilot.press("s", "n")
            time.sleep(0.3)
            assert process.exit_code is None
            await pilot.press("s", "y")
            await wait_until(pilot, lambda: screen.exit_code is not None)
            await pilot.pause()
            assert screen.exit_code == 130 and "continue it with:" in pane_text(screen.query_one(AlertPane))
            assert screen.query_one(AlertPane).process_failure[-1] == f"spdy run {tmp_path / 'p.toml'} --out {run_dir} --resume"
            assert "▶ timings (running)" in pane_text(screen.query_one("#status")) and "view stopped" in pane_text(screen.query_one("#status"))
    finally:
        if process.exit_code is None:
            process.process.kill()


async def test_start_screen_lists_profiles_and_newest_runs_and_starts_a_profile(tmp_path, monkeypatch):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "digits-cpu.toml").write_text("[run]\n")
    for age, name in ((100, "old"), (0, "new")):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "events.jsonl").write_text("")
        os.utime(tmp_path / "runs" / name / "events.jsonl", (time.time() - age, time.time() - age))
    command = fake_run(tmp_path, "log.emit('run_finished', status='ok', wall_seconds=0.0)\n")
    monkeypatch.setattr(spdy_tui.app, "start_run", lambda profile, run_dir: launch.start_run(profile, run_dir, command + [str(run_dir)]))
    app = SpdyApp(root=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        labels = [pane_text(item.query_one(Static)).strip() for item in app.screen.query_one(ListView).children]
        assert labels[0] == "start   profiles/digits-cpu.toml"
        assert labels[1].startswith("attach  runs/new") and labels[2].startswith("attach  runs/old")
        await pilot.press("enter")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, RunScreen) and screen.run_dir.name.startswith("digits-cpu-")
        await wait_until(pilot, lambda: screen.live.finished is not None)
        await pilot.press("escape")
        assert not isinstance(app.screen, RunScreen)


# ---------------------------------------------------------------------------- snapshots
def _wait_for_log(pilot):
    return wait_until(pilot, lambda: pilot.app.screen.live.finished is not None)


def test_snapshot_finished_run(finished_run, snap_compare, monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert snap_compare(SpdyApp(finished_run, root=finished_run.parent.parent), terminal_size=SIZE, run_before=_wait_for_log)


def test_snapshot_history_under_no_color(finished_run, snap_compare, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    app = SpdyApp(finished_run, root=finished_run.parent.parent)
    assert snap_compare(app, press=["left_square_bracket"] * 3, terminal_size=SIZE, run_before=_wait_for_log)


# ---------------------------------------------------------------------------- entry point and layering
def test_help_and_bad_arguments(capsys, tmp_path):
    main(["--help"])
    assert capsys.readouterr().out.startswith("usage: spdy-tui [PROFILE.toml | RUN_DIR]")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2 and "neither a run directory nor a .toml profile" in capsys.readouterr().err


def test_engine_never_imports_textual():
    modules = sorted(".".join(path.relative_to(ROOT).with_suffix("").parts) for path in (ROOT / "engine").rglob("*.py"))
    modules = [name.removesuffix(".__init__") for name in modules]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'spdy_tui'))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "engine.run.runlog" in modules


# ---------------------------------------------------------------------------- logs that are not (all) readable
async def test_unreadable_lines_in_the_middle_of_a_log_are_reported(finished_run):
    log = finished_run / "events.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join([*lines[:5], '{"v":1,"type":"eval","n":1\n', *lines[5:]]))  # a line cut short, then resumed
    app = SpdyApp(finished_run, root=finished_run.parent.parent)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await wait_until(pilot, lambda: screen.live.finished is not None)
        await pilot.pause()
        alerts = screen.query_one(AlertPane)
        assert alerts.display and "log: 1 line of the run log could not be read and was skipped" in pane_text(alerts)


async def test_a_folder_that_is_not_a_run_is_refused_not_watched(tmp_path):
    (tmp_path / "events.jsonl").write_text('[run]\nname = "x"\n')
    app = SpdyApp(tmp_path, root=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert not isinstance(app.screen, RunScreen)
        assert any("not a run log" in str(notice.message) for notice in app._notifications)


def test_spdy_tui_prints_its_version(capsys):
    from importlib.metadata import version

    from spdy_tui.app import main

    main(["--version"])
    assert capsys.readouterr().out == f"spdy-tui {version('spdy-tui')}\n"


def test_a_resumed_run_is_no_longer_finished_until_it_finishes_again():
    from engine.run.runlog import RunState

    events = [{"type": "run_started", "profile": {}}, {"type": "run_finished", "status": "interrupted"}]
    assert RunState.from_events(events).finished == {"type": "run_finished", "status": "interrupted"}
    assert RunState.from_events([*events, {"type": "run_started", "profile": {}, "resume": True}]).finished is None
