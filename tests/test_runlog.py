import itertools
import math
import random

import pytest

import engine.core.events
from engine.core.events import EventLog
from engine.core.grid import geometric_levels
from engine.run.runlog import RunState, summarise

LAYERS = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1", "layer2.0.conv2", "fc"]
LEVELS = geometric_levels(0.4, 0.9, 3)  # dense + 4 levels
EVALUATIONS = 60


def write_synthetic_run(path, monkeypatch, finished=True):
    """A realistic run log of a 6-layer model, written by EventLog on a clock ticking 0.5 s per event.

    Returns the events as written.  The search scores EVALUATIONS candidates; every 7th is
    abandoned (loss null); improvements emit ``eval`` then ``best`` (names, times, budget).
    """
    rng, clock, written = random.Random(0), itertools.count(), []
    with monkeypatch.context() as patch:
        patch.setattr(engine.core.events.time, "time", lambda: 1_700_000_000 + 0.5 * next(clock))
        with EventLog(path) as log:
            emit = lambda kind, **fields: written.append(log.emit(kind, **fields))  # noqa: E731
            emit("run_started", profile={"run": {"name": "digits-demo"}}, seed=0, versions={"spdy-tui": "0.1.0"})
            total = len(LAYERS) * len(LEVELS)
            for stage, kind in (("timings", "timing"), ("database", "db")):
                emit("stage", name=stage, state="started")
                for done, (layer, level) in enumerate(itertools.product(LAYERS, LEVELS), start=1):
                    seconds = 0.001 * (1 + LAYERS.index(layer)) * (1 - 0.8 * float(level))
                    extra = {"seconds": seconds} if kind == "timing" else {"error": 0.01 * float(level)}
                    emit(kind, layer=layer, level=level, done=done, total=total, **extra)
                emit("stage", name=stage, state="done")
            budget = 0.5 * sum(0.001 * (1 + row) for row in range(len(LAYERS)))
            emit("baseline", name="uniform", loss=0.91, heldout=0.95, predicted_speedup=2.0)
            emit("baseline", name="global-magnitude", loss=0.74, heldout=0.80, predicted_speedup=2.01)
            emit("stage", name="search", state="started")
            best = math.inf
            for n in range(1, EVALUATIONS + 1):
                levels = [rng.choice(LEVELS[1:]) for _ in LAYERS]
                loss = None if n % 7 == 0 else round(0.3 + rng.random() * (1.5 - n / EVALUATIONS), 4)
                accepted = loss is not None and loss < best
                best = loss if accepted else best
                phase, k = ("init", 0) if n <= 30 else ("k=1", 1)
                emit("eval", n=n, phase=phase, k=k, loss=loss, best=best, accepted=accepted, predicted_speedup=2.0 + n / 1000)
                if accepted:
                    times = [0.001 * (1 + row) * (1 - 0.8 * float(level)) for row, level in enumerate(levels)]
                    emit("best", n=n, loss=loss, levels=levels, names=LAYERS, times=times, budget=budget, predicted_speedup=2.0 + n / 1000)
            emit("stage", name="search", state="done")
            if finished:
                emit("verify", predicted=2.06, measured=1.93, dense_seconds=0.0123, sparse_seconds=0.00637)
                emit("run_finished", status="ok", wall_seconds=812.0)
    return written


@pytest.fixture
def synthetic(tmp_path, monkeypatch):
    events = write_synthetic_run(tmp_path / "run" / "events.jsonl", monkeypatch)
    return tmp_path / "run", events


def test_summarise_folds_every_pane_of_a_whole_log(synthetic):
    run_dir, events = synthetic
    state = summarise(run_dir)
    cells = len(LAYERS) * len(LEVELS)
    assert state.stages == {"timings": "done", "database": "done", "search": "done"}
    assert (state.timing.done, state.timing.total, state.database.done) == (cells, cells, cells)
    assert state.timing.per_layer == dict.fromkeys(LAYERS, len(LEVELS))
    assert state.timing.eta_seconds() == 0.0
    assert len(state.evaluations) == EVALUATIONS
    assert [p.loss for p in state.evaluations if p.n % 7 == 0] == [None] * (EVALUATIONS // 7)
    bests = [e for e in events if e["type"] == "best"]
    assert state.best_history == bests and state.best_loss == bests[-1]["loss"]
    assert state.best_loss == min(p.loss for p in state.evaluations if p.loss is not None)
    assert state.predicted_speedup == bests[-1]["predicted_speedup"]
    assert set(state.baselines) == {"uniform", "global-magnitude"} and state.baselines["uniform"]["heldout"] == 0.95
    assert state.verify["measured"] == 1.93 and state.finished["status"] == "ok"
    assert state.elapsed_seconds == 812.0
    assert state.evals_per_second() == pytest.approx(2.0, rel=0.2)  # 0.5 s per event, a few best events between


def test_allocation_shares_the_budget_and_falls_back_to_measured_times(synthetic):
    state = summarise(synthetic[0])
    choices = state.allocation()
    best = state.best
    assert [c.name for c in choices] == LAYERS and [c.level for c in choices] == best["levels"]
    assert [c.share for c in choices] == pytest.approx([t / best["budget"] for t in best["times"]])
    assert choices[0].sparsity == pytest.approx(float(best["levels"][0]))
    bare = RunState.from_events(e for e in state.events if e["type"] != "best")
    bare.apply({"type": "best", "n": 1, "loss": 0.5, "levels": best["levels"]})  # no names/times/budget
    measured = [state.measured[name][level] for name, level in zip(LAYERS, best["levels"])]
    assert [c.name for c in bare.allocation()] == LAYERS
    assert [c.share for c in bare.allocation()] == pytest.approx([t / sum(measured) for t in measured])


def test_at_best_is_the_state_when_that_best_was_found(synthetic):
    state = summarise(synthetic[0])
    for index, best in enumerate(state.best_history):
        view = state.at_best(index)
        assert view.best == best and len(view.best_history) == index + 1
        assert view.evaluations[-1].n == best["n"] and view.best_loss == best["loss"]
        assert view.verify is None and view.finished is None
    assert state.at_best(-1).best == state.best
    with pytest.raises(IndexError):
        state.at_best(len(state.best_history))


def test_at_best_keeps_an_evaluation_logged_after_its_best():
    events = [
        {"type": "best", "n": 1, "loss": 0.5, "levels": ["0.4000"]},
        {"type": "eval", "n": 1, "phase": "init", "k": 0, "loss": 0.5, "best": 0.5, "accepted": True},
        {"type": "eval", "n": 2, "phase": "init", "k": 0, "loss": 0.7, "best": 0.5, "accepted": False},
    ]
    view = RunState.from_events(events).at_best(0)
    assert [p.n for p in view.evaluations] == [1]


def test_eta_from_event_times_and_a_resumed_start():
    progress = RunState().timing
    for done, t in ((11, 100.0), (12, 102.0), (13, 104.0)):
        progress.add({"type": "timing", "t": t, "layer": "a", "level": "0.4000", "done": done, "total": 20})
    assert progress.first_done == 10 and progress.eta_seconds() == pytest.approx(7 * 4.0 / 3)
    resumed = RunState.from_events([
        {"type": "timing", "t": 0.0, "layer": "a", "level": "0.4000", "done": 1, "total": 10},
        {"type": "run_started", "t": 5000.0, "profile": {}, "seed": 0},  # resumed much later
        *({"type": "timing", "t": 5000.0 + done, "layer": "a", "level": "x", "done": done, "total": 10} for done in (2, 3, 4)),
    ])
    assert resumed.timing.eta_seconds() == pytest.approx(6 * 2.0 / 3)


def test_tolerates_unknown_types_infinite_losses_and_odd_levels():
    state = RunState.from_events([
        {"type": "something_new", "x": 1},
        {"type": "eval", "n": 1, "phase": "init", "k": 0, "loss": math.inf, "best": math.inf, "accepted": False},
        {"type": "best", "n": 2, "loss": 1.0, "levels": ["2:4", "weird"]},
        {"type": "error", "message": "CUDA out of memory"},
    ])
    assert state.evaluations[0].loss is None and state.evaluations[0].best is None
    assert [c.sparsity for c in state.allocation()] == [0.5, None]
    assert [c.name for c in state.allocation()] == ["layer 0", "layer 1"]
    assert state.errors == ["CUDA out of memory"] and state.predicted_speedup is None


def test_summarise_ignores_a_truncated_last_line(synthetic):
    run_dir, events = synthetic
    with open(run_dir / "events.jsonl", "a") as handle:
        handle.write('{"v":1,"t":1.0,"type":"eval","n":61,"pha')
    state = summarise(run_dir / "events.jsonl")
    assert len(state.events) == len(events) and len(state.evaluations) == EVALUATIONS


def test_global_adaprune_steps_fill_their_own_progress_and_pane():
    from rich.console import Console

    from spdy_tui.panes import ProgressPane

    state = RunState.from_events([
        {"type": "gap", "t": 10.0 + step, "done": step, "total": 8, "loss": 1.0 / step} for step in (1, 2, 3, 4)
    ])
    assert (state.gap.done, state.gap.total, state.gap_loss) == (4, 8, 0.25)
    assert state.gap.eta_seconds() == pytest.approx(4 * 3.0 / 4)  # 4 steps left at 3 s per 4 steps
    assert state.database.total == 0  # steps are not database cells
    console = Console(width=80, record=True, color_system=None)
    console.print(ProgressPane().describe(state))
    text = console.export_text()
    assert "gAP" in text and "4/8 50%" in text and "loss 0.25" in text and "ETA" in text
