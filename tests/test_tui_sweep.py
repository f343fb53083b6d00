"""The sweep screen: a row per target, the trade-off filling in, enter opens a target's run."""

import pytest
from textual.widgets import DataTable, Input, ListView

import spdy_tui.sweep_screen
from engine.run.sweep import new_record, write_sweep
from spdy_tui import launch
from spdy_tui.app import RunScreen, SpdyApp
from spdy_tui.sweep_screen import SweepScreen, TargetsScreen
from tests.test_tui import fake_run, pane_text, wait_until
from tests.test_tui_compare import write_finished_run

pytestmark = pytest.mark.anyio


@pytest.fixture
def finished_sweep(tmp_path, monkeypatch):
    """runs/digits-sweep: targets 2x and 3x finished, 4x infeasible."""
    sweep_dir = tmp_path / "runs" / "digits-sweep"
    record = new_record(str(tmp_path / "profiles" / "digits-cpu.toml"), (2.0, 3.0, 4.0))
    write_finished_run(sweep_dir / "target-2", monkeypatch, 2.0, [0, 1, 2, 3, 4, 1], 0.97, measured=1.9)
    write_finished_run(sweep_dir / "target-3", monkeypatch, 3.0, [1, 2, 3, 4, 4, 2], 0.91, measured=2.8)
    record["shared"]["state"] = "done"
    record["metric"] = "accuracy"
    for run, state in zip(record["runs"], ("done", "done", "infeasible")):
        run["state"] = state
    write_sweep(sweep_dir, record)
    return tmp_path, sweep_dir


async def _rows_filled(pilot):
    screen = pilot.app.screen
    await wait_until(pilot, lambda: screen.query_one(DataTable).row_count == 3 and screen.points)
    await wait_until(pilot, lambda: "●" in pane_text(screen.query_one("#sweep-plot")))  # drawn at its laid-out size
    await pilot.pause()


async def test_a_finished_sweep_shows_each_target_and_the_tradeoff_and_opens_a_run(finished_sweep):
    root, sweep_dir = finished_sweep
    app = SpdyApp(sweep_dir, root=root)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        assert isinstance(screen, SweepScreen)
        await _rows_filled(pilot)
        table = screen.query_one(DataTable)
        rows = [[str(cell) for cell in table.get_row_at(index)] for index in range(3)]
        assert rows[0] == ["2x", "✓ done", "finished", "60", "0.2000", "2.050x", "1.900x", "0.9700"]
        assert rows[1][:2] == ["3x", "✓ done"] and rows[1][5:] == ["3.050x", "2.800x", "0.9100"]
        assert rows[2] == ["4x", "✗ infeasible", "—", "—", "—", "—", "—", "—"]
        assert "2 of 3 targets done" in pane_text(screen.query_one("#sweep-status"))
        tradeoff = [line.split() for line in pane_text(screen.query_one("#sweep-tradeoff")).splitlines()]
        assert ["2x", "spdy", "2.050x", "1.900x", "0.9700"] in tradeoff and ["3x", "uniform", "3.000x", "—", "0.8100"] in tradeoff
        assert "● spdy measured" in pane_text(screen.query_one("#sweep-plot"))
        await pilot.press("down", "enter")
        assert isinstance(app.screen, RunScreen) and app.screen.run_dir == sweep_dir / "target-3"
        await pilot.press("escape")
        assert app.screen is screen


async def test_the_start_screen_lists_sweeps_and_starts_one_after_asking_for_targets(finished_sweep, monkeypatch):
    root, sweep_dir = finished_sweep
    (root / "profiles").mkdir()
    (root / "profiles" / "digits-cpu.toml").write_text("[run]\n")
    started = []

    def fake_start(profile, run_dir, command):
        started.append(command)
        script = fake_run(root, "import json, pathlib\n"
                                "pathlib.Path(sys.argv[1], 'sweep.json').write_text(json.dumps({'targets': [1.5], 'runs': []}))\n")
        return launch.start_run(profile, run_dir, script + [str(run_dir)])

    monkeypatch.setattr(spdy_tui.sweep_screen, "start_run", fake_start)
    app = SpdyApp(root=root)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        listing = app.screen.query_one(ListView)
        labels = [pane_text(item.query_one("Label")).strip() for item in listing.children]
        assert "sweep   runs/digits-sweep  (targets 2x, 3x, 4x)" in labels
        await pilot.press("w")
        assert isinstance(app.screen, TargetsScreen)
        app.screen.query_one(Input).value = "1.5,x2"
        await pilot.press("enter")
        assert isinstance(app.screen, TargetsScreen) and "'x2' is not a number" in pane_text(app.screen.query_one("#targets-error"))
        app.screen.query_one(Input).value = "1.5"
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, SweepScreen) and app.screen.sweep_dir.name.startswith("digits-cpu-sweep-")
        assert started[0][-6:] == ["sweep", str(root / "profiles" / "digits-cpu.toml"), "--targets", "1.5", "--out",
                                   str(app.screen.sweep_dir)]
        await wait_until(pilot, lambda: app.screen.record is not None)


@pytest.mark.parametrize("size, no_color", [((120, 40), False), ((80, 24), True)])
def test_snapshot_sweep(finished_sweep, snap_compare, monkeypatch, size, no_color):
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")
    else:
        monkeypatch.delenv("NO_COLOR", raising=False)
    root, sweep_dir = finished_sweep
    assert snap_compare(SpdyApp(sweep_dir, root=root), terminal_size=size, run_before=_rows_filled)


def test_tradeoff_plot_puts_each_series_marker_at_its_cell():
    from spdy_tui.tradeoff_plot import Y_LABEL_WIDTH, legend, tradeoff_plot

    data = {"uniform": [(2.0, 0.5)], "spdy measured": [(1.0, 1.0), (1.5, 0.75)]}
    lines = tradeoff_plot(data, width=Y_LABEL_WIDTH + 1 + 5, height=4, metric="accuracy").plain.splitlines()
    assert lines == ["      1┤●    ", "       ┤  ●  ", "    0.5┤    u", "       └1.00x"]
    assert legend(data).plain == "u uniform  ● spdy measured"
    assert tradeoff_plot({}, 40, 10).plain.startswith("no finished run yet")
