"""The timing table pane: its strip, rows and sources (events, timings.json), live and finished."""

import json

import pytest

from engine.run.runlog import RunState, summarise
from spdy_tui.app import RunScreen, SpdyApp
from spdy_tui.timing_pane import TimingPane, TimingRow, TimingView, cell_groups, heat_strip, shade, short_time, table_rows
from spdy_tui import launch
from tests.test_runlog import LAYERS, LEVELS, write_synthetic_run
from tests.test_tui import SIZE, fake_run, pane_text, wait_until

pytestmark = pytest.mark.anyio
NARROW = (80, 24)


@pytest.fixture
def finished_run(tmp_path, monkeypatch):
    run_dir = tmp_path / "runs" / "digits-demo"
    write_synthetic_run(run_dir / "events.jsonl", monkeypatch)
    return run_dir


# ---------------------------------------------------------------------------- drawing, exact answers
def test_shade_is_the_time_in_eighths_of_the_dense_time():
    assert [shade(t, 8.0) for t in (0.5, 1.0, 1.01, 4.0, 7.99, 8.0, 12.0)] == ["▁", "▁", "▂", "▄", "█", "█", "█"]
    assert shade(1.0, 0.0) == "█"


def test_cell_groups_split_levels_as_evenly_as_possible():
    assert cell_groups(5, 8) == [range(0, 1), range(1, 2), range(2, 3), range(3, 4), range(4, 5)]
    assert cell_groups(7, 3) == [range(0, 3), range(3, 5), range(5, 7)]


def test_heat_strip_marks_unmeasured_and_groups_to_their_fastest_level():
    levels = ["0.0000", "0.5000", "0.7500", "0.9000"]
    row = TimingRow("fc", {"0.0000": 8.0, "0.5000": 5.0, "0.7500": 2.0})
    assert heat_strip(row, levels, 10) == "█▅▂·"
    assert heat_strip(row, levels, 2) == "▅▂"  # (dense, 0.5) -> 5.0; (0.75, 0.9) -> 2.0, the measured one
    assert heat_strip(TimingRow("fc", {"0.5000": 1.0}), levels, 10) == "····"  # no dense time yet: nothing to shade against
    assert row.best(levels) == ("0.7500", 4.0)


def test_short_time_keeps_three_figures():
    assert [short_time(s) for s in (0.0007, 0.0123, 0.5, 1.5, None)] == ["700 µs", "12.3 ms", "500 ms", "1.5 s", "—"]


def test_rows_from_the_events_of_a_run_and_from_its_timings_json(finished_run, tmp_path):
    state = summarise(finished_run)
    view = TimingView.from_state(state)
    assert view.levels == LEVELS and [row.name for row in view.rows] == LAYERS
    rows = table_rows(view, 40)
    # the synthetic log: seconds = 1 ms x (row + 1) x (1 - 0.8 x sparsity)
    assert rows[0] == ("conv1", "█▆▄▃▃", "1 ms", f"{1 / (1 - 0.8 * 0.9):.2f}x")
    assert rows[5][2] == "6 ms"
    table = {
        "format": "spdy-tui/timings", "version": 1, "unit": "s", "base": 0.02, "prunable": 0.012, "backend": "cpu",
        "layers": [{"name": "encoder.layer.0.attention.self.query", "levels": {"0.0000": 0.004, "0.5000": 0.002}},
                   {"name": "encoder.layer.0.output.dense", "levels": {"0.0000": 0.008, "0.5000": 0.007}}],
    }
    (tmp_path / "timings.json").write_text(json.dumps(table))
    view = TimingView.from_table(tmp_path / "timings.json")
    assert table_rows(view, 10) == [("L0.attn.q", "█▄", "4 ms", "2.00x"), ("L0.ffn.out", "█▇", "8 ms", "1.14x")]
    assert view.caption == f"timings.json: dense 20 ms end to end, up to {0.02 / (0.008 + 0.002 + 0.007):.2f}x"


def test_while_measuring_every_level_of_the_runs_grid_gets_a_cell():
    state = RunState.from_events([
        {"type": "run_started", "profile": {"grid": {"steps": 2, "min_sparsity": 0.5, "max_sparsity": 0.9}}},
        {"type": "stage", "name": "timings", "state": "started"},
        {"type": "timing", "layer": "fc", "level": "0.0000", "seconds": 0.004, "done": 1, "total": 8},
        {"type": "timing", "layer": "fc", "level": "0.5000", "seconds": 0.003, "done": 2, "total": 8},
    ])
    view = TimingView.from_state(state)
    assert view.levels == ["0.0000", "0.5000", "0.7764", "0.9000"]
    assert table_rows(view, 40) == [("fc", "█▆··", "4 ms", "1.33x")]
    assert view.caption == "measured so far: 2/8 cells"


# ---------------------------------------------------------------------------- on the run screen
async def test_t_shows_the_timing_table_of_a_finished_run_with_the_full_name_below(finished_run):
    app = SpdyApp(finished_run, root=finished_run.parent.parent)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await wait_until(pilot, lambda: screen.live.finished is not None)
        pane = screen.query_one(TimingPane)
        assert not pane.display
        await pilot.press("t")
        await pilot.pause()
        assert pane.display and not screen.query_one("#allocation-scroll").display
        assert [row[0] for row in pane._shown] == LAYERS
        await pilot.press("down")
        assert pane_text(pane.query_one("#timing-name")).strip() == "▸ layer1.0.conv1 · fastest 0.9000 (3.57x) · 5/5 levels"
        await pilot.press("t")
        assert not pane.display and screen.query_one("#allocation-scroll").display


async def test_the_timing_table_fills_in_live_while_the_stage_runs(tmp_path):
    command = fake_run(tmp_path, """
        log.emit("stage", name="timings", state="started")
        for done, (layer, level) in enumerate([(l, v) for l in ("fc1", "fc2") for v in ("0.0000", "0.5000")], start=1):
            log.emit("timing", layer=layer, level=level, seconds=0.002 if level == "0.0000" else 0.001, done=done, total=4)
            time.sleep(0.3)
        time.sleep(60)
    """)
    run_dir = tmp_path / "runs" / "timing"
    process = launch.start_run(tmp_path / "p.toml", run_dir, command + [str(run_dir)])
    try:
        async with SpdyApp(root=tmp_path).run_test(size=SIZE) as pilot:
            await pilot.app.push_screen(RunScreen(run_dir, process))
            screen = pilot.app.screen
            pane = screen.query_one(TimingPane)
            # a loaded machine may first draw the pane after fc2's cells too, so wait for "some rows"
            await wait_until(pilot, lambda: pane.display and len(pane._shown) >= 1)
            assert pane._shown[0][0] == "fc1"
            assert "·" in pane._shown[0][1]  # the run's grid (the defaults: 42 levels) is mostly not measured yet
            await wait_until(pilot, lambda: "measured so far: 4/4 cells" in pane_text(pane.query_one("#timing-caption")))
            assert [row.seconds for row in pane.view.rows] == [{"0.0000": 0.002, "0.5000": 0.001}] * 2
            assert [row[2:] for row in pane._shown] == [("2 ms", "2.00x")] * 2
    finally:
        if process.exit_code is None:
            process.process.kill()


# ---------------------------------------------------------------------------- snapshots
async def _show_timing(pilot):
    await wait_until(pilot, lambda: pilot.app.screen.live.finished is not None)
    await pilot.press("t")
    await pilot.pause()


@pytest.mark.parametrize("size", [SIZE, NARROW], ids=["120x40", "80x24"])
def test_snapshot_timing_table(finished_run, snap_compare, monkeypatch, size):
    monkeypatch.setenv("NO_COLOR", "1")
    assert snap_compare(SpdyApp(finished_run, root=finished_run.parent.parent), terminal_size=size, run_before=_show_timing)


def test_snapshot_run_screen_at_80x24(finished_run, snap_compare, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    app = SpdyApp(finished_run, root=finished_run.parent.parent)
    assert snap_compare(app, terminal_size=NARROW, run_before=lambda pilot: wait_until(pilot, lambda: pilot.app.screen.live.finished is not None))
