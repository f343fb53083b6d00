"""The conventions every `spdy` command keeps: -h/--help/--version, completion, --json (errors too),
--set, --threads, help that shows what it says, pipeline order, progress in a log, Ctrl-C."""

import io
import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from spdy_tui.cli import Exit, app
from spdy_tui.progress import StderrProgress

from .conftest import TABLES

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["check", "layers", "timings", "db", "run", "sweep", "solve", "verify", "bench", "finetune", "inspect", "env"]
WITH_RESULT = ["check", "layers", "timings", "db", "run", "sweep", "solve", "verify", "bench", "finetune", "inspect", "env"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and re.fullmatch(r"spdy \d+\.\d+\.\d+\S*\n", result.stdout)


@pytest.mark.parametrize("command", [None, *COMMANDS])
@pytest.mark.parametrize("option", ["-h", "--help"])
def test_help_short_and_long(command, option):
    result = invoke(*([command] if command else []), option)
    assert result.exit_code == 0 and "Usage" in result.stdout


def test_commands_are_listed_in_pipeline_order_and_completion_is_offered():
    text = invoke("--help").stdout
    listed = [match.group(1) for match in re.finditer(r"^\W*([a-z]+)\s{2,}\S", text.split("Commands")[1], re.MULTILINE)]
    assert listed == COMMANDS
    assert "--install-completion" in text and "--show-completion" in text and "--version" in text


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_flags_show_no_value_placeholder(command):
    text = invoke(*([command] if command else []), "--help").stdout
    assert "<bool>" not in text and "BOOLEAN" not in text
    for line in text.splitlines():  # a flag's row: the option, then straight to its help
        if match := re.search(r"--(json|resume|help|version|install-completion)\b\s+(-h\s+)?(\S+)", line):
            assert match.group(3)[0].isupper() and not match.group(3).isupper(), line


def test_help_text_keeps_its_brackets():
    text = invoke("solve", "--help").stdout
    assert "{layer name: [cost per level]}" in text
    assert "SECTION.KEY=VALUE" in invoke("run", "--help").stdout


@pytest.mark.parametrize("command", WITH_RESULT)
def test_every_command_with_a_result_has_json(command):
    assert "--json" in invoke(command, "--help").stdout


@pytest.mark.parametrize("command", ["run", "check", "layers", "timings", "db"])
def test_set_is_offered(command):
    assert "--set" in invoke(command, "--help").stdout


@pytest.mark.parametrize("command", ["verify", "finetune"])
def test_threads_is_offered(command):
    assert "--threads" in invoke(command, "--help").stdout


def test_json_error_object_on_stdout_same_exit_code(tmp_path):
    result = invoke("check", tmp_path / "nowhere.toml", "--json")
    assert result.exit_code == Exit.BAD_INPUT
    data = json.loads(result.stdout)
    assert data == {"error": f"{tmp_path / 'nowhere.toml'}: no such profile file", "exit_code": 2}
    infeasible = invoke("solve", "--timings", TABLES / "yolov5s_unstr.txt", "--target", 3, "--json")
    assert infeasible.exit_code == Exit.INFEASIBLE and json.loads(infeasible.stdout)["exit_code"] == 3
    usage = invoke("solve", "--target", "abc", "--json")  # a usage error, before the command runs
    assert usage.exit_code == Exit.BAD_INPUT and "--target" in json.loads(usage.stdout)["error"]


def test_internal_error_with_json_is_still_json_and_exit_1(monkeypatch):
    import engine.timing.table

    def broken(path):
        raise RuntimeError("a bug")

    monkeypatch.setattr(engine.timing.table, "load_table", broken)
    result = invoke("solve", "--timings", TABLES / "rn18_unstr.txt", "--target", 2, "--json")
    assert result.exit_code == Exit.INTERNAL
    assert json.loads(result.stdout) == {"error": "internal error: RuntimeError: a bug", "exit_code": 1}


# ---------------------------------------------------------------------------- progress
def test_progress_heartbeat_in_a_log_prints_stage_and_counts_without_events():
    buffer = io.StringIO()
    progress = StderrProgress(Console(file=buffer, highlight=False), heartbeat=0.05)
    assert not progress.bars  # not a terminal
    progress({"type": "stage", "name": "database", "state": "started"})
    progress({"type": "db", "done": 3, "total": 88, "layer": "fc[/x]1"})
    time.sleep(0.4)  # no event: the heartbeat still speaks
    progress.close()
    beats = [line for line in buffer.getvalue().splitlines() if line.startswith("still working")]
    assert len(beats) >= 2, buffer.getvalue()
    assert "stage database" in beats[-1] and "3/88" in beats[-1] and "fc[/x]1" in beats[-1]
    settled = buffer.getvalue()
    time.sleep(0.2)
    assert buffer.getvalue() == settled  # close() stops it


def test_progress_prints_user_text_as_written():
    buffer = io.StringIO()
    progress = StderrProgress(Console(file=buffer, highlight=False), heartbeat=60)
    progress({"type": "baseline", "name": "[bold]uniform[/x]", "loss": 0.5, "predicted_speedup": 1.5})
    progress({"type": "error", "message": "layer [/x] failed"})
    progress({"type": "finetune", "phase": "started", "epochs": 2, "samples": 10, "loss": "[/kl]"})
    progress.close()
    text = buffer.getvalue()
    assert "[bold]uniform[/x]" in text and "layer [/x] failed" in text and "[/kl]" in text


def test_progress_says_what_a_finetuning_prepares_before_its_first_step():
    buffer = io.StringIO()
    progress = StderrProgress(Console(file=buffer, highlight=False), heartbeat=60)
    progress({"type": "finetune", "phase": "preparing", "epoch": 0, "epochs": 5, "what": "the dense model's outputs on 36 samples"})
    progress.close()
    assert buffer.getvalue().splitlines() == ["finetune: the dense model's outputs on 36 samples"]


# ---------------------------------------------------------------------------- Ctrl-C
INTERRUPT = textwrap.dedent("""
    import atexit, os, signal, sys
    mode, after = sys.argv[1], []
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal: a job started in the background inherits SIGINT ignored

    class Interrupter:  # Ctrl-C the moment `import torch` starts
        fired = False
        def find_spec(self, name, path=None, target=None):
            if Interrupter.fired:
                after.append(name)
            elif name == "torch":
                Interrupter.fired = True
                if mode == "raise":
                    raise KeyboardInterrupt
                os.kill(os.getpid(), signal.SIGINT)
            return None

    sys.meta_path.insert(0, Interrupter())
    atexit.register(lambda: print("imported after:", sorted(n for n in after if n.split(".")[0] in ("torch", "engine")),
                                  file=sys.stderr))
    sys.argv = ["spdy", *sys.argv[2:]]
    from spdy_tui.cli import main
    main()
""")


@pytest.mark.parametrize("mode", ["raise", "signal"])
def test_ctrl_c_during_import_torch_exits_130_without_importing_again(tmp_path, mode):
    profile = ROOT / "profiles" / "digits-cpu.toml"
    done = subprocess.run([sys.executable, "-c", INTERRUPT, mode, "run", str(profile), "--out", str(tmp_path / "run")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == Exit.INTERRUPTED, done.stderr
    assert "interrupted" in done.stderr and "Traceback" not in done.stderr
    assert "imported after: []" in done.stderr  # the handler imported neither torch nor the engine


@pytest.mark.parametrize("command", ["check", "layers", "run", "timings", "db"])
def test_ctrl_c_anywhere_in_a_command_exits_130(tmp_path, monkeypatch, command):
    import engine.core.profile

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine.core.profile, "load_profile", interrupted)
    (tmp_path / "p.toml").write_text("")
    result = invoke(command, tmp_path / "p.toml", "--json")
    assert result.exit_code == Exit.INTERRUPTED and "Traceback" not in result.output
    assert json.loads(result.stdout) == {"error": "interrupted", "exit_code": 130}
