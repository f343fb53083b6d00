import json

from typer.testing import CliRunner

from spdy_tui.cli import Exit, app

from .test_runlog import write_synthetic_run

runner = CliRunner()


def test_inspect_finished_and_killed_logs(tmp_path, monkeypatch):
    write_synthetic_run(tmp_path / "events.jsonl", monkeypatch)
    result = runner.invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "evaluations" in result.stdout and "best allocation" in result.stdout and "finished: ok" in result.stdout
    data = json.loads(runner.invoke(app, ["inspect", str(tmp_path / "events.jsonl"), "--json"]).stdout)
    assert data["evaluations"] > 0 and data["allocation"] and data["finished"]["status"] == "ok"

    killed = tmp_path / "killed"
    killed.mkdir()
    write_synthetic_run(killed / "events.jsonl", monkeypatch, finished=False)
    with open(killed / "events.jsonl", "a") as handle:
        handle.write('{"v":1,"type":"eval","n":99')  # killed mid-line
    result = runner.invoke(app, ["inspect", str(killed)])
    assert result.exit_code == 0 and "not yet" in result.stdout


def test_inspect_missing_log(tmp_path):
    result = runner.invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == Exit.BAD_INPUT and "no such run log" in result.output


def test_inspect_refuses_what_is_not_a_run_log_and_warns_about_unreadable_lines(tmp_path, monkeypatch):
    for content, message in ((bytes(range(256)), "not a run log"), (b"", "the run log is empty"), (b"[run]\nname = 'x'\n", "not a run log")):
        (tmp_path / "events.jsonl").write_bytes(content)
        result = runner.invoke(app, ["inspect", str(tmp_path)])
        assert result.exit_code == Exit.BAD_INPUT and message in result.output and "Traceback" not in result.output
    run_dir = tmp_path / "run"
    write_synthetic_run(run_dir / "events.jsonl", monkeypatch)
    lines = (run_dir / "events.jsonl").read_text().splitlines(keepends=True)
    (run_dir / "events.jsonl").write_text("".join([*lines[:3], "not an event\n", *lines[3:]]))
    result = runner.invoke(app, ["inspect", str(run_dir)])
    assert result.exit_code == 0 and "warning: 1 line of the run log could not be read" in result.stdout
    data = json.loads(runner.invoke(app, ["inspect", str(run_dir), "--json"]).stdout)
    assert data["unreadable_lines"] == 1 and data["warnings"]
