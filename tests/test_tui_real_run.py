"""The TUI attached to a real run of the digits CNN (model, database, search, verify all real)."""

import json

import pytest

from engine.run.runlog import summarise
from spdy_tui.app import RunScreen, SpdyApp

from .test_pipeline import MAGNITUDE_DATABASE, run_cli, write_profile
from .test_tui import SIZE, pane_text, wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("digits")
    out = tmp_path / "runs" / "digits-test"
    result = run_cli("run", write_profile(tmp_path, extra=MAGNITUDE_DATABASE), "--out", out, "--json")
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


async def test_panes_show_the_real_run(real_run):
    out, result = real_run
    state = summarise(out)
    app = SpdyApp(out, root=out.parent.parent)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        assert isinstance(screen, RunScreen)
        await wait_until(pilot, lambda: screen.live.finished is not None, timeout=20)
        await pilot.pause()
        status = pane_text(screen.query_one("#status"))
        assert f"evals {result['evaluations']}" in status and "run finished: ok" in status
        allocation = pane_text(screen.query_one("#allocation"))
        for row in result["layers"]:
            assert row["name"] in allocation and row["level"] in allocation
        outcome = pane_text(screen.query_one("#outcome"))
        assert f"measured {result['measured_speedup']:.3f}x vs predicted {result['predicted_speedup']:.3f}x" in outcome
        for name in result["baselines"]:
            assert name in outcome
        assert "database" in pane_text(screen.query_one("#progress"))
        assert state.best_loss == pytest.approx(result["loss"]["calibration"])
