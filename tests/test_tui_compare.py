"""The compare screen: two or more runs side by side, opened from marks on the start screen."""

import pytest
from textual.widgets import ListView, Static, TabbedContent

from engine.export.result import write_result
from spdy_tui.app import SpdyApp
from spdy_tui.compare_screen import CompareScreen, TradeoffPlot
from spdy_tui.names import short_names
from tests.test_runlog import LAYERS, LEVELS, write_synthetic_run
from tests.test_tui import pane_text

pytestmark = pytest.mark.anyio


def write_finished_run(run_dir, monkeypatch, target: float, level_rows: list[int], heldout: float, measured: float = None):
    """A synthetic run log plus a result.json whose layer i sits at LEVELS[level_rows[i]]."""
    write_synthetic_run(run_dir / "events.jsonl", monkeypatch)
    write_result(run_dir, {
        "target_speedup": target, "predicted_speedup": target + 0.05, "measured_speedup": measured or target - 0.1,
        "dense_baseline": "torch", "loss": {"calibration": 0.1 * target, "heldout": heldout}, "heldout_metric": "accuracy",
        "layers": [{"name": name, "level": LEVELS[row], "time": 0.001} for name, row in zip(LAYERS, level_rows)],
        "baselines": {"uniform": {"predicted_speedup": target, "loss": {"calibration": 0.5 * target, "heldout": heldout - 0.1}}},
        "seed": 0, "evaluations": 60,
    })
    return run_dir


@pytest.fixture
def two_runs(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    first = write_finished_run(runs / "digits-2x", monkeypatch, 2.0, [0, 1, 2, 3, 4, 1], 0.97)
    second = write_finished_run(runs / "digits-3x", monkeypatch, 3.0, [1, 2, 3, 4, 4, 2], 0.91)
    return tmp_path, [first, second]


def compare_app(root, runs):
    app = SpdyApp(root=root)

    async def open_comparison(pilot):
        await pilot.pause()
        await app.push_screen(CompareScreen(runs))
        await pilot.pause()

    return app, open_comparison


async def test_marking_two_runs_on_the_start_screen_opens_their_comparison(two_runs):
    root, runs = two_runs
    app = SpdyApp(root=root)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        listing = app.screen.query_one(ListView)
        await pilot.press("c")  # nothing marked: a warning, no screen
        assert not isinstance(app.screen, CompareScreen)
        for index in range(2):
            listing.index = index
            await pilot.press("m")
        labels = [pane_text(item.query_one(Static)).strip() for item in listing.children]
        assert all(label.startswith("marked  runs/digits-") for label in labels)
        await pilot.press("m")  # the second one unmarked again, then marked back
        assert pane_text(listing.children[1].query_one(Static)).startswith("attach  runs/")
        await pilot.press("m", "c")
        screen = app.screen
        assert isinstance(screen, CompareScreen) and sorted(run.name for run in screen.runs) == ["digits-2x", "digits-3x"]


async def test_comparison_shows_speedup_allocation_loss_and_tradeoff(two_runs):
    root, runs = two_runs
    app, open_comparison = compare_app(root, runs)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_comparison(pilot)
        screen = app.screen
        summary = pane_text(screen.query_one("#compare-summary")).splitlines()
        assert any(line.split() == ["digits-2x", "2x", "2.050x", "1.900x", "0.2000", "0.9700", "60"] for line in summary)
        assert any(line.split() == ["digits-3x", "3x", "3.050x", "2.900x", "0.3000", "0.9100", "60"] for line in summary)
        await pilot.press("2")
        assert screen.query_one(TabbedContent).active == "allocation"
        rows = pane_text(screen.query_one("#compare-allocation")).splitlines()
        short = short_names(LAYERS)
        # layer 0: dense in the first run, LEVELS[1] (40%) in the second
        first = next(line for line in rows if line.startswith(short[0] + " "))
        assert first.split()[1:] == ["0%", "░░░░░", "40%", "██░░░"]
        await pilot.press("3")
        plots = screen.query(".compare-loss")
        assert len(plots) == 2 and "1 .. 60 evaluations" in pane_text(plots[0])
        await pilot.press("1")
        await pilot.pause()
        plot = pane_text(screen.query_one(TradeoffPlot))
        assert "● spdy measured" in plot and "u uniform" in plot and "1.90x" in plot and "3.05x" in plot
        await pilot.press("escape")
        assert not isinstance(app.screen, CompareScreen)


@pytest.mark.parametrize("size, tab, no_color", [((120, 40), "1", False), ((80, 24), "2", True)])
def test_snapshot_compare(two_runs, snap_compare, monkeypatch, size, tab, no_color):
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")
    else:
        monkeypatch.delenv("NO_COLOR", raising=False)
    root, runs = two_runs
    app, open_comparison = compare_app(root, runs)
    assert snap_compare(app, press=[tab], terminal_size=size, run_before=open_comparison)
