"""Every bad input is refused clearly: the documented exit code, one message naming the file or
key (markup characters and all), no traceback; with --json the error is a JSON object on stdout.

Each case is (arguments, exit code, texts the output must contain); ``{name}`` in an argument or
a text is a path from the ``files`` fixture.  Nothing here runs a stage: every case is refused
before any work starts (the slowest load the digits model, a second).
"""

import json

import pytest

from engine.timing.table import load_table
from typer.testing import CliRunner

from spdy_tui.cli import Exit, app

from .conftest import TABLES
from .test_pipeline import write_profile

BAD, INFEASIBLE, INTERRUPTED = Exit.BAD_INPUT, Exit.INFEASIBLE, Exit.INTERRUPTED
RN18 = str(TABLES / "rn18_unstr.txt")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad-input")
    good = write_profile(root)
    paths = {
        "good": good, "missing": root / "missing.toml", "dir": root / "a-folder", "file": root / "a-file",
        "markup": root / "[/x].toml", "markup_dir": root / "[bold]" / "[" / "x]runs", "garbage": root / "garbage.toml",
        "binary": root / "binary.toml", "serach": root / "serach.toml", "badvalue": root / "badvalue.toml",
        "markupvalue": root / "markupvalue.toml", "table_garbage": root / "timings.txt", "costs_garbage": root / "costs.json",
        "costs_list": root / "costs-list.json", "costs_text": root / "costs-text.json", "empty_run": root / "empty-run",
        "used": root / "used-run", "other_run": root / "other-run", "costs_missing": root / "no-costs.json",
    }
    paths["dir"].mkdir()
    paths["markup_dir"].mkdir(parents=True)
    paths["empty_run"].mkdir()
    paths["file"].write_text("not a folder\n")
    paths["garbage"].write_text("[run\nname = \n")
    paths["binary"].write_bytes(b"\xff\xfe\x00\x81 not utf-8")
    paths["serach"].write_text("[serach]\ntarget = 2\n")
    paths["badvalue"].write_text("[search]\ntarget = \"fast\"\n")
    paths["markupvalue"].write_text("[model]\nsource = \"[/x]\"\n")
    paths["table_garbage"].write_text("base\n1\nprunable\n1\nl1\n0.1 zero\n")
    paths["costs_garbage"].write_text("{not json")
    paths["costs_list"].write_text("[]")
    table = load_table(RN18)
    paths["costs_text"].write_text(json.dumps({layer.name: ["cheap"] * len(layer.levels) for layer in table.layers}))
    paths["used"].mkdir()
    (paths["used"] / "notes.txt").write_text("someone else's\n")
    paths["other_run"].mkdir()
    (paths["other_run"] / "profile.toml").write_text(good.read_text())  # relative timings: not the resolved profile
    return {key: str(value) for key, value in paths.items()}


CASES = [
    # check: the profile file
    (["check", "{missing}"], BAD, ["{missing}", "no such profile file"]),
    (["check", "{dir}"], BAD, ["{dir}", "directory"]),
    (["check", "{garbage}"], BAD, ["{garbage}", "invalid TOML"]),
    (["check", "{binary}"], BAD, ["{binary}", "cannot read profile"]),
    (["check", "{serach}"], BAD, ["unknown section [serach]"]),
    (["check", "{badvalue}"], BAD, ["{badvalue}", "search.target", "must be a number"]),
    (["check", "{markup}"], BAD, ["[/x].toml", "no such profile file"]),
    (["check", "{markupvalue}"], BAD, ["model.source", "'[/x]'"]),
    (["check"], BAD, ["PROFILE"]),
    # check --set
    (["check", "{good}", "--set", "a=b"], BAD, ["--set 'a=b'", "section.key=value"]),
    (["check", "{good}", "--set", "search.target"], BAD, ["--set 'search.target'", "section.key=value"]),
    (["check", "{good}", "--set", "search.target.x=2"], BAD, ["search.target.x=2"]),
    (["check", "{good}", "--set", "nosuch.key=1"], BAD, ["unknown section [nosuch]"]),
    (["check", "{good}", "--set", "search.nosuch=1"], BAD, ["unknown key 'search.nosuch'"]),
    (["check", "{good}", "--set", "search.target=fast"], BAD, ["search.target", "must be a number", "--set search.target=fast"]),
    (["check", "{good}", "--set", "search.target=0.5"], BAD, ["search.target", ">= 1.0"]),
    (["check", "{good}", "--set", "search.skip=fc1"], BAD, ["search.skip", "list of strings"]),
    (["check", "{good}", "--set", "hardware.backend=cuda-2:4"], BAD, ["cuda-2:4", "grid.pattern"]),
    (["check", "{good}", "--set", "model.source=[/x]"], BAD, ["model.source", "[/x]"]),
    (["check", "{good}", "--set", "run.name=a/b"], BAD, ["run.name"]),
    (["check", "{good}", "--set", "search.skip=[\"nope*\"]"], BAD, ["search.skip", "nope*"]),
    (["check", "{missing}", "--set", "search.target=2"], BAD, ["{missing}", "no such profile file"]),
    # layers
    (["layers", "{missing}"], BAD, ["{missing}", "no such profile file"]),
    (["layers", "{dir}"], BAD, ["{dir}", "directory"]),
    (["layers", "{good}", "--set", "model.include=[\"nothing*\"]"], BAD, ["model.include", "nothing*"]),
    # run, timings, db: refused before any stage runs
    (["run", "{missing}"], BAD, ["{missing}", "no such profile file"]),
    (["run", "{dir}"], BAD, ["{dir}", "directory"]),
    (["run", "{garbage}"], BAD, ["{garbage}", "invalid TOML"]),
    (["run", "{good}", "--out", "{file}"], BAD, ["{file}", "not a directory"]),
    (["run", "{good}", "--out", "{file}/sub"], BAD, ["{file}/sub"]),
    (["run", "{good}", "--out", "{used}"], BAD, ["{used}", "--resume"]),
    (["run", "{good}", "--out", "{used}", "--resume"], BAD, ["{used}", "profile.toml"]),
    (["run", "{good}", "--out", "{other_run}", "--resume", "--set", "search.target=2"], BAD,
     ["{other_run}", "differs from {good} with --set search.target=2"]),
    (["run", "{good}", "--set", "search.target=-1"], BAD, ["search.target"]),
    (["run", "{markup}"], BAD, ["[/x].toml"]),
    (["timings", "{missing}"], BAD, ["{missing}"]),
    (["timings", "{good}", "--format", "xml"], BAD, ["--format", "'xml'"]),
    (["timings", "{good}", "--out", "{file}"], BAD, ["{file}", "not a directory"]),
    (["db", "{serach}"], BAD, ["[serach]"]),
    (["db", "{good}", "--out", "{file}"], BAD, ["{file}", "not a directory"]),
    # verify
    (["verify", "{dir}/nowhere"], BAD, ["{dir}/nowhere", "no such run directory"]),
    (["verify", "{file}"], BAD, ["{file}", "is a file"]),
    (["verify", "{empty_run}"], BAD, ["{empty_run}", "no result.json"]),
    (["verify", "{markup_dir}"], BAD, ["[bold]/[/x]runs", "no result.json"]),
    (["verify", "{empty_run}", "--threads", "0"], BAD, ["--threads"]),
    # finetune
    (["finetune", "{dir}/nowhere"], BAD, ["{dir}/nowhere", "no such run directory"]),
    (["finetune", "{file}"], BAD, ["{file}", "is a file"]),
    (["finetune", "{empty_run}"], BAD, ["result.json", "spdy run"]),
    (["finetune", "{empty_run}", "--out", "{file}"], BAD, ["{file}", "not a directory"]),
    (["finetune", "{empty_run}", "--data", "{missing}"], BAD, ["--data", "{missing}"]),
    (["finetune", "{empty_run}", "--data", "{dir}"], BAD, ["--data", "{dir}", "directory"]),
    (["finetune", "{empty_run}", "--threads", "0"], BAD, ["--threads"]),
    (["finetune", "{empty_run}", "--epochs", "many"], BAD, ["--epochs"]),
    # inspect
    (["inspect", "{dir}/nowhere"], BAD, ["{dir}/nowhere", "no such run log"]),
    (["inspect", "{empty_run}"], BAD, ["events.jsonl", "no such run log"]),
    (["inspect", "{markup_dir}"], BAD, ["[bold]/[/x]runs", "no such run log"]),
    (["inspect", "{garbage}"], BAD, ["{garbage}"]),
    # solve
    (["solve", "--timings", "{missing}", "--target", "2"], BAD, ["{missing}", "no such timing table"]),
    (["solve", "--timings", "{dir}", "--target", "2"], BAD, ["{dir}", "directory"]),
    (["solve", "--timings", "{table_garbage}", "--target", "2"], BAD, ["timings.txt:6"]),
    (["solve", "--timings", "{markup}", "--target", "2"], BAD, ["[/x].toml"]),
    (["solve", "--timings", RN18, "--target", "fast"], BAD, ["--target"]),
    (["solve", "--timings", RN18, "--target", "0"], BAD, ["target"]),
    (["solve", "--timings", RN18, "--target", "9"], INFEASIBLE, ["maximum achievable speedup"]),
    (["solve", "--timings", RN18, "--target", "2", "--skip", "nope"], BAD, ["nope"]),
    (["solve", "--timings", RN18, "--target", "2", "--skip", "[/x]"], BAD, ["[/x]"]),
    (["solve", "--timings", RN18, "--target", "2", "--costs", "{costs_missing}"], BAD, ["{costs_missing}", "no such costs file"]),
    (["solve", "--timings", RN18, "--target", "2", "--costs", "{dir}"], BAD, ["{dir}", "cannot read costs file"]),
    (["solve", "--timings", RN18, "--target", "2", "--costs", "{costs_garbage}"], BAD, ["costs.json:1", "invalid JSON"]),
    (["solve", "--timings", RN18, "--target", "2", "--costs", "{costs_list}"], BAD, ["costs-list.json", "expected an object"]),
    (["solve", "--timings", RN18, "--target", "2", "--costs", "{costs_text}"], BAD, ["costs-text.json", "layer 'conv1' level 0.0000: a cost must be a finite number >= 0"]),
    (["solve", "--timings", RN18, "--target", "2", "--buckets", "1"], BAD, ["--buckets"]),
    (["solve", "--target", "2"], BAD, ["--timings"]),
    # the command line itself
    (["nosuchcommand"], BAD, ["nosuchcommand"]),
    (["[/x]"], BAD, ["[/x]"]),
    (["run", "{good}", "--nosuchoption"], BAD, ["--nosuchoption"]),
]


def case_id(case) -> str:
    args, code, _ = case
    return "-".join(arg.strip("{}-").replace("/", "_") for arg in args[:4]) + f"-{int(code)}"


def fill(text: str, files: dict[str, str]) -> str:
    for key, value in files.items():
        text = text.replace("{" + key + "}", value)
    return text


def invoke(args):
    return CliRunner().invoke(app, args, env={"COLUMNS": "400"})


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("case", CASES, ids=[case_id(case) for case in CASES])
def test_bad_input_is_refused_clearly(files, case, as_json):
    args, code, texts = case
    args = [fill(arg, files) for arg in args]
    result = invoke(args + (["--json"] if as_json else []))
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    if as_json:
        error = json.loads(result.stdout)
        assert error["exit_code"] == code and set(error) == {"error", "exit_code"}
        shown = error["error"]
    else:
        shown = result.output
    for text in texts:
        assert fill(text, files) in " ".join(shown.split()), shown  # rich may wrap a long line


@pytest.mark.parametrize("command, target", [
    ("solve", "engine.timing.table.load_table"), ("inspect", "spdy_tui.inspect.summary_json"),
    ("verify", "engine.run.context.RunContext.from_dir"), ("finetune", "engine.recovery.finetune.open_finetune"),
])
def test_interrupted_exits_130(files, monkeypatch, tmp_path, command, target):
    module, _, name = target.rpartition(".")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    if module.endswith("RunContext"):
        from engine.run.context import RunContext

        monkeypatch.setattr(RunContext, "from_dir", interrupted)
    else:
        monkeypatch.setattr(__import__(module, fromlist=[name]), name, interrupted)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name_ in ("result.json", "events.jsonl", "profile.toml"):
        (run_dir / name_).write_text("{}\n")
    args = {"solve": ["solve", "--timings", RN18, "--target", "2"], "inspect": ["inspect", str(run_dir)],
            "verify": ["verify", str(run_dir)], "finetune": ["finetune", str(run_dir)]}[command]
    result = invoke(args + ["--json"])
    assert result.exit_code == INTERRUPTED and "Traceback" not in result.output
    assert json.loads(result.stdout) == {"error": "interrupted", "exit_code": 130}
