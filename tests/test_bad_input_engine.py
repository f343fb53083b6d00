"""Every bad input the engine is handed is refused with a message that names it (issue #14).

One parametrized test per class of input: timing tables, DP problems (target, buckets, costs,
skip), profiles and run directories, and run logs; each case matches the exact message."""

import json
import math

import numpy as np
import pytest

from engine.core.errors import RunError
from engine.core.events import EventLog, Follower, RunLogError, check_log_start, scan_log
from engine.core.profile import ProfileError, from_dict
from engine.run.directory import open_run
from engine.run.runlog import summarise
from engine.search.budget import costs_from_mapping, make_problem
from engine.timing.table import NOISE_WARNING, TableError, load_table
from spdy_tui.inspect import render_summary, summary_json

from .conftest import TABLES

GOOD_TXT = "base\n1.0\nprunable\n0.6\nconv1\n0.4 0.0000\n0.2 0.5000\nfc\n0.2 0.0000\n0.1 0.5000\n"


def table_json(base=1.0, prunable=0.6, warnings=(), fast=0.1, backend="") -> str:
    return json.dumps({
        "format": "spdy-tui/timings", "version": 1, "base": base, "prunable": prunable, "warnings": list(warnings), "backend": backend,
        "layers": [{"name": "conv1", "levels": {"0.0000": 0.4, "0.5000": fast}}, {"name": "fc", "levels": {"0.0000": 0.2, "0.5000": fast}}],
    })


# ---------------------------------------------------------------------------- 1. timing tables
@pytest.mark.parametrize(
    "name, text, message",
    [
        ("truncated.txt", GOOD_TXT.replace("prunable\n0.6", "prunable\n1.6"),
         r"truncated.txt: the dense times of its 2 layers add up to 0.6 s, but its 'prunable' header says 1.6 s \(-62.50%; at most 1% is allowed\)"),
        ("short.txt", "base\n1.0\nprunable\n0.6\nconv1\n0.4 0.0000\n",
         r"short.txt: .*layers are missing from the table or the header is wrong. List every prunable layer"),
        ("over.txt", "base\n0.5\nprunable\n0.6\nconv1\n0.4 0.0000\nfc\n0.2 0.0000\n",
         r"over.txt: 'prunable' \(0.6 s\) exceeds 'base' \(0.5 s\): the listed layers cannot take longer than the whole model"),
        ("over.json", table_json(base=0.5), r"over.json: 'prunable' \(0.6 s\) exceeds 'base' \(0.5 s\)"),
        ("negative.json", table_json(base=0.3, warnings=[f"... {NOISE_WARNING} ..."], fast=0.01),
         r"negative.json: with every layer at its fastest level the model would take -0.28 s .*not a positive time"),
        ("bare.txt", "base\n1.0\nprunable\n0.6\nconv1\n0.4 0.0000\n0.5\nfc\n0.2 0.0000\n",
         r"bare.txt:7: expected a layer name or a '<seconds> <level>' entry, got the bare number '0.5'"),
        ("bare-header.txt", "base\n1.0\n0.6\nconv1\n0.6 0.0000\n",
         r"bare-header.txt:3: expected a layer name or a '<seconds> <level>' entry, got the bare number '0.6'"),
    ],
)
def test_bad_timing_tables(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(TableError, match=message):
        load_table(path)


def test_tables_that_add_up_still_load(tmp_path):
    """Shipped tables (YOLO's headers 0.8% off), a measured table whose noise the profiler recorded,
    and a layer named like a number (an nn.Sequential's "0") with its entries."""
    for path in sorted(TABLES.glob("*.txt")):
        load_table(path)
    (tmp_path / "noisy.json").write_text(table_json(base=0.55, warnings=[f"the dense layers' times ... {NOISE_WARNING} (...)"]))
    assert load_table(tmp_path / "noisy.json").overhead == pytest.approx(-0.05)
    (tmp_path / "gpu.json").write_text(table_json(base=0.55, backend="cuda-2:4"))  # measured by our GPU profiler
    assert "600.000 ms, more than the dense model end to end (550.000 ms)" in load_table(tmp_path / "gpu.json").warnings[0]
    (tmp_path / "seq.txt").write_text("base\n1.0\nprunable\n0.6\n0\n0.4 0.0000\n2\n0.2 0.0000\n")
    assert load_table(tmp_path / "seq.txt").names == ["0", "2"]


# ---------------------------------------------------------------------------- 2. problems
@pytest.fixture(scope="module")
def problem():
    return make_problem(load_table(TABLES / "rn18_unstr.txt"), 1.5)


def _costs(problem, **changes):
    mapping = {name: [0.0] * len(levels) for name, levels in zip(problem.table.names, problem.levels)}
    mapping.update(changes)
    return mapping


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p: make_problem(p.table, 0.5), r"target speedup \(--target, search.target\) must be >= 1 \(a speedup below 1 is a slowdown\), got 0.5"),
        (lambda p: make_problem(p.table, math.nan), r"target speedup \(--target, search.target\) must be a number >= 1, got nan"),
        (lambda p: make_problem(p.table, True), r"target speedup \(--target, search.target\) must be a number >= 1, got True"),
        (lambda p: make_problem(p.table, 2.0, ["nolayer"]), r"skip \(--skip, search.skip\) pattern 'nolayer' matches no layer"),
        (lambda p: p.solve(None, 1), r"buckets \(--buckets, search.buckets\) must be an integer from 10 to 1,000,000, got 1$"),
        (lambda p: p.solve(None, 2_000_000), r"must be an integer from 10 to 1,000,000, got 2000000"),
        (lambda p: p.solve(None, 100.5), r"buckets \(--buckets, search.buckets\) must be an integer .* got 100.5"),
        (lambda p: p.solve(-np.ones(p.times.shape)), r"costs \(--costs\) must be non-negative numbers; layer\(s\) conv1, "),
        (lambda p: p.solve(np.zeros((2, 2))), r"costs \(--costs\) must be a \(21, 42\) array \(layers, levels\), got shape \(2, 2\)"),
        (lambda p: costs_from_mapping(p, [1, 2], "c.json"), r"c.json: expected an object \{layer name: \[cost per level\]\}, got list"),
        (lambda p: costs_from_mapping(p, _costs(p, nolayer=[0.0]), "c.json"), r"c.json: costs for layer\(s\) not in the timing table: 'nolayer'"),
        (lambda p: costs_from_mapping(p, {"conv1": [0.0] * 42}, "c.json"), r"c.json: no costs for layer 'layer1.0.conv1'"),
        (lambda p: costs_from_mapping(p, _costs(p, fc=[0.0]), "c.json"), r"c.json: layer 'fc' needs a list of 42 costs \(one per level: 0.0000, 0.4000"),
        (lambda p: costs_from_mapping(p, _costs(p, fc=[-1.0] + [0.0] * 41), "c.json"), r"c.json: layer 'fc' level 0.0000: a cost must be a finite number >= 0, got -1.0"),
        (lambda p: costs_from_mapping(p, _costs(p, fc=[0.0, math.nan] + [0.0] * 40), "c.json"), r"layer 'fc' level 0.4000: a cost must be a finite number >= 0, got nan"),
        (lambda p: costs_from_mapping(p, _costs(p, fc=[math.inf] * 42), "c.json"), r"layer 'fc' level 0.0000: a cost must be a finite number >= 0, got inf"),
        (lambda p: costs_from_mapping(p, _costs(p, fc=["1"] * 42), "c.json"), r"layer 'fc' level 0.0000: a cost must be a finite number >= 0, got '1'"),
    ],
)
def test_bad_problems(problem, call, message):
    with pytest.raises(ValueError, match=message):
        call(problem)


def test_good_costs_solve_like_the_prior(problem):
    prior_like = {name: [(i / (len(levels) - 1)) ** 2 for i in range(len(levels))] for name, levels in zip(problem.table.names, problem.levels)}
    assert problem.solve(costs_from_mapping(problem, prior_like, "c.json"), 10).levels == problem.solve(None, 10).levels


# ---------------------------------------------------------------------------- 3. profiles and run directories
@pytest.mark.parametrize(
    "data, message",
    [
        ({"run": {"name": ""}}, r"key 'run.name' must be a single plain folder name .*got ''"),
        ({"run": {"name": "../../x"}}, r"key 'run.name' must be a single plain folder name .*got '../../x'"),
        ({"run": {"name": ".."}}, r"key 'run.name' must be a single plain folder name"),
        ({"run": {"name": "a/b"}}, r"key 'run.name' must be a single plain folder name"),
        ({"model": {"include": []}}, r"key 'model.include' is empty, so no layer would be pruned; use \[\"\*\"\] for every layer"),
    ],
)
def test_bad_profile_keys(data, message):
    with pytest.raises(ProfileError, match=message):
        from_dict(data, "p.toml")


def write_profile(tmp_path, name="digits-test"):
    path = tmp_path / "p.toml"
    path.write_text(f'[run]\nname = "{name}"\nout_dir = "runs"\n[model]\nsource = "digits"\n[data]\nsource = "digits"\n')
    return path


def failed_attempt(run_dir, finished=True, done_stage=False):
    """What a run that failed loading its model leaves: profile.toml and a short log."""
    run_dir.mkdir(parents=True)
    (run_dir / "profile.toml").write_text('[run]\nname = "other"\n')
    with EventLog(run_dir / "events.jsonl") as log:
        log.emit("run_started", profile={}, seed=0)
        if done_stage:
            log.emit("stage", name="timings", state="done")
        log.emit("error", message="model.path '/x': no such directory")
        if finished:
            log.emit("run_finished", status="failed", wall_seconds=0.1)


@pytest.mark.parametrize(
    "setup, resume, message",
    [
        (lambda d: d.write_text("not a folder"), False, r"run directory .*/out is an existing file, not a directory; choose another --out"),
        (lambda d: (d.mkdir(), (d / "events.jsonl").write_text('{"type":"run_started"}\n')), True,
         r"cannot resume .*/out: it has no profile.toml, so it is not a run directory `spdy run` made \(it holds events.jsonl\)"),
        (lambda d: failed_attempt(d, done_stage=True), False, r"run directory .*/out already exists; add --resume"),
        (lambda d: failed_attempt(d, done_stage=True), True, r"cannot resume .*/out: its profile.toml differs from"),
        (lambda d: failed_attempt(d, finished=False), False, r"already exists; add --resume"),  # still running, or killed
        (lambda d: (d.mkdir(), (d / "timings.json").write_text("{}"), (d / "profile.toml").write_text("")), False, r"already exists"),
        (lambda d: (d.parent.mkdir(exist_ok=True), (d.parent / "file").write_text("")), False, r"cannot create run directory"),
    ],
)
def test_bad_run_directories(tmp_path, setup, resume, message):
    out = tmp_path / "out"
    setup(out)
    target = tmp_path / "file" / "run" if "create" in message else out
    with pytest.raises(RunError, match=message):
        open_run(write_profile(tmp_path), target, resume=resume)


@pytest.mark.parametrize("resume", [False, True])
def test_a_directory_without_finished_work_is_reused_with_a_note(tmp_path, resume):
    out = tmp_path / "out"
    failed_attempt(out)
    ctx = open_run(write_profile(tmp_path), out, resume=resume)
    ctx.log.close()
    assert any("stopped before finishing any stage (failed: model.path '/x': no such directory)" in n for n in ctx.profile.notes)
    assert [event["type"] for event in scan_log(out / "events.jsonl").events] == ["run_started"]  # the old log is replaced
    assert 'name = "digits-test"' in (out / "profile.toml").read_text()


# ---------------------------------------------------------------------------- 4. run logs
GARBAGE = bytes(range(256)) * 4


@pytest.mark.parametrize(
    "content, message",
    [
        (GARBAGE, r"events.jsonl: not a run log: a run log's first line is a run_started event, this one starts with binary data"),
        (b"", r"events.jsonl: the run log is empty"),
        (b"\n\n", r"events.jsonl: the run log is empty"),
        (b'[run]\nname = "x"\n', r"events.jsonl: not a run log: .*starts with '\[run\]'"),
        (b'{"v":1,"t":0,"type":"stage","name":"a","state":"done"}\n', r"not a run log: .*starts with '\{\"v\":1,\"t\":0,\"type\":\"stage\""),
        (b'{"v":1,"t":0,"type":"run_sta', r"events.jsonl: the run log holds no complete event yet"),
        (b"PK\x03\x04 a zip file", r"not a run log: .*starts with binary data"),
    ],
)
def test_bad_run_logs(tmp_path, content, message):
    log = tmp_path / "events.jsonl"
    log.write_bytes(content)
    with pytest.raises(RunLogError, match=message):
        summarise(tmp_path)
    with pytest.raises(RunLogError, match=message):
        summary_json(log)


def test_not_a_run_directory_and_no_log(tmp_path):
    with pytest.raises(RunLogError, match=r"not a run directory \(it has no events.jsonl\)"):
        summarise(tmp_path)
    with pytest.raises(RunLogError, match="no such run log"):
        summarise(tmp_path / "absent.jsonl")


def test_unreadable_lines_are_counted_and_reported_but_a_cut_last_line_is_not(tmp_path):
    from rich.console import Console

    log = tmp_path / "events.jsonl"
    with EventLog(log) as writer:
        writer.emit("run_started", profile={}, seed=0)
        writer.emit("stage", name="timings", state="started")
    with open(log, "ab") as handle:
        handle.write(b'{"v":1,"type":"eval","n":1\n\x00\x01garbage\n')
        handle.write(b'{"v":1,"t":1,"type":"stage","name":"timings","state":"done"}\n{"v":1,"type":"ev')
    state = summarise(log)
    assert state.unreadable_lines == 2 and state.stages == {"timings": "done"}
    data = summary_json(log)
    assert data["unreadable_lines"] == 2 and "2 lines of the run log could not be read" in data["warnings"][0]
    console = Console(record=True, width=200)
    render_summary(log, console)
    assert "warning: 2 lines of the run log could not be read and were skipped" in console.export_text()
    log.write_bytes(log.read_bytes().replace(b"garbage", b"{}").replace(b'"n":1\n', b'"n":1}\n'))
    assert summarise(log).unreadable_lines == 1  # "{}" has no type; the cut last line never counts


def test_the_live_reader_refuses_a_foreign_file_and_counts_unreadable_lines(tmp_path):
    log = tmp_path / "events.jsonl"
    follower = Follower(log)
    assert follower.poll() == [] and follower.error is None  # not created yet: a run just starting
    log.write_bytes(b"")
    assert follower.poll() == [] and follower.error is None
    log.write_bytes(b'{"v":1,"t":0,"type":"run_started","profile":{},"seed":0}\nnot json\n{"v":1,"t":0,"type":"stage",')
    assert [e["type"] for e in follower.poll()] == ["run_started"] and follower.unreadable == 1
    foreign = Follower(tmp_path / "other.jsonl")
    (tmp_path / "other.jsonl").write_bytes(GARBAGE[:100])
    assert foreign.poll() == [] and "not a run log" in foreign.error
    check_log_start(log)
    with pytest.raises(RunLogError, match="not a run log"):
        check_log_start(tmp_path / "other.jsonl")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: None, "not a run directory (it has no events.jsonl and no profile.toml)"),
        (lambda d: (d / "events.jsonl").write_bytes(GARBAGE), "not a run log"),
        (lambda d: (d / "events.jsonl").write_text("[run]\n"), "not a run log"),
    ],
)
def test_the_tui_refuses_a_directory_that_is_not_a_run(tmp_path, capsys, make, message):
    from spdy_tui.app import main

    make(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
