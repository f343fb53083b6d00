import json

import numpy as np
import pytest

from engine.core.events import EventLog, Follower, read_events


def test_write_read_and_schema(tmp_path):
    path = tmp_path / "run" / "events.jsonl"
    with EventLog(path) as log:
        log.emit("run_started", profile={"a": 1}, seed=0)
        log.emit("timing", layer="l0", level="0.4000", seconds=np.float64(0.5), done=1, total=2)
        log.emit("stage", name="timings", state="done")
    events = list(read_events(path))
    assert [e["type"] for e in events] == ["run_started", "timing", "stage"]
    assert all(e["v"] == 1 and isinstance(e["t"], float) for e in events)
    assert events[1]["seconds"] == 0.5
    with EventLog(path) as log:
        with pytest.raises(ValueError, match="lacks"):
            log.emit("timing", layer="x")
        with pytest.raises(ValueError, match="unknown event"):
            log.emit("nonsense")
        with pytest.raises(ValueError, match="stage state"):
            log.emit("stage", name="x", state="maybe")


def test_truncated_last_line_is_ignored_and_appending_resumes_cleanly(tmp_path):
    path = tmp_path / "events.jsonl"
    with EventLog(path) as log:
        log.emit("stage", name="search", state="started")
    with open(path, "a") as handle:
        handle.write('{"v":1,"t":1.0,"type":"eval","n":3,"pha')  # a writer killed mid-line
    assert [e["name"] for e in read_events(path)] == ["search"]
    with EventLog(path) as log:  # a resumed run appends after the broken line
        log.emit("stage", name="search", state="done")
    assert [e["state"] for e in read_events(path)] == ["started", "done"]


def test_follower_returns_only_new_complete_events(tmp_path):
    path = tmp_path / "events.jsonl"
    follower = Follower(path)
    assert follower.poll() == []
    log = EventLog(path)
    log.emit("run_started", profile={}, seed=0)  # a run log starts so (a Follower refuses anything else)
    log.emit("stage", name="a", state="started")
    assert [e.get("name") for e in follower.poll()] == [None, "a"]
    assert follower.poll() == []
    with open(path, "a") as handle:
        handle.write(json.dumps({"v": 1, "t": 0, "type": "stage", "name": "b", "state": "done"})[:20])
    assert follower.poll() == []
    with open(path, "a") as handle:
        handle.write(json.dumps({"v": 1, "t": 0, "type": "stage", "name": "b", "state": "done"})[20:] + "\n")
    assert [e["name"] for e in follower.poll()] == ["b"]
    log.close()
