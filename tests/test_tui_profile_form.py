"""The profile editor: schema-generated form, checks, saving, round trips, and a run started from it."""

import shutil
import tomllib
from pathlib import Path

import pytest
from textual.widgets import Input, Select, Switch

import spdy_tui.profile_form
from engine.core.profile import ProfileError, from_dict, load_profile, read_toml
from engine.core.profile_toml import describe
from engine.core.profile_toml import changed_toml, profile_of_values, toml_string, toml_value
from engine.run.runlog import summarise
from spdy_tui.app import RunScreen, SpdyApp
from spdy_tui.path_picker import PathPickerScreen
from spdy_tui.profile_form import ProfileFormScreen, comment_header, parse_text, schema
from tests.test_pipeline import fixture_table, run_cli
from tests.test_tui import SIZE, pane_text, wait_until

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "profiles").glob("*.toml"))
NARROW = (80, 24)


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A working directory holding a copy of the shipped profiles; the model is not loaded unless asked."""
    shutil.copytree(ROOT / "profiles", tmp_path / "profiles")
    monkeypatch.setattr(spdy_tui.profile_form, "PLAN_DELAY", 1e6)
    return tmp_path


def flat(widget) -> str:
    """What a pane shows, its wrapped lines joined with single spaces."""
    return " ".join(pane_text(widget).split())


def spec(dotted):
    return next(item for item in schema() if item.dotted == dotted)


# ---------------------------------------------------------------------------- the schema and the writer
def test_the_form_has_every_key_of_the_schema_in_order():
    assert [item.dotted for item in schema()] == [row[0] for row in describe()]
    kinds = {item.dotted: item.kind for item in schema()}
    assert (kinds["run.seed"], kinds["search.target"], kinds["model.source"], kinds["data.trim_padding"], kinds["model.include"]) == (
        "int", "float", "choice", "bool", "list",
    )
    assert spec("data.calibration_samples").help == (
        "default 256 · >= 1 — Samples used for calibration (search loss, reconstruction)."
    )


def test_text_becomes_the_keys_value_or_an_error_naming_the_key():
    assert parse_text(spec("run.seed"), "7") == 7
    assert parse_text(spec("search.target"), "2") == 2.0
    assert parse_text(spec("model.exclude"), " pooler.*, fc ,") == ["pooler.*", "fc"]
    assert parse_text(spec("run.name"), " a ") == " a "
    assert parse_text(spec("grid.int8_sparsities"), "0, 0.75,") == [0.0, 0.75]
    with pytest.raises(ProfileError, match="key 'grid.int8_sparsities' must be a number, got 'half'"):
        parse_text(spec("grid.int8_sparsities"), "0, half")
    with pytest.raises(ProfileError, match="key 'run.seed' must be an integer, got '1.5'"):
        parse_text(spec("run.seed"), "1.5")
    with pytest.raises(ProfileError, match="key 'search.target' must be a finite number"):
        parse_text(spec("search.target"), "inf")


def test_only_changed_keys_are_written_and_any_string_reads_back():
    values = from_dict({}).to_dict()
    values["search"]["target"] = 2.0
    values["model"]["exclude"] = ['a"b', "c\\d"]
    assert changed_toml(values, "# mine\n") == '# mine\n\n[model]\nexclude = ["a\\"b", "c\\\\d"]\n\n[search]\ntarget = 2.0\n'
    assert changed_toml(from_dict({})) == ""
    text = 'tab\tnew\nline \x01 "q" é \\'
    assert tomllib.loads(f"x = {toml_string(text)}")["x"] == text
    with pytest.raises(ValueError):
        toml_value(float("nan"))
    with pytest.raises(ValueError):
        changed_toml(values, "not a comment")


@pytest.mark.parametrize("path", SHIPPED, ids=[path.stem for path in SHIPPED])
def test_every_shipped_profile_round_trips_through_the_writer(path):
    raw = from_dict(read_toml(path), str(path))
    assert profile_of_values(raw.to_dict(), path) == load_profile(path)
    assert comment_header(path.read_text()).startswith("#") or not path.read_text().startswith("#")


# ---------------------------------------------------------------------------- the form
async def test_every_shipped_profile_round_trips_through_the_form(root):
    app = SpdyApp(root=root)
    async with app.run_test(size=SIZE) as pilot:
        for path in sorted((root / "profiles").glob("*.toml")):
            await app.push_screen(ProfileFormScreen(root, path))
            form = app.screen
            await pilot.pause()
            assert "✓ valid · saved" in flat(form.query_one("#form-check"))
            form.query_one("#form-name", Input).value = f"{path.stem}-copy"
            await pilot.press("ctrl+s")
            copy = root / "profiles" / f"{path.stem}-copy.toml"
            assert load_profile(copy) == load_profile(path)
            assert comment_header(copy.read_text()) == comment_header(path.read_text())
            await pilot.press("escape")
            assert not isinstance(app.screen, ProfileFormScreen)


async def test_a_new_profile_is_checked_like_spdy_check_and_saved_as_it_accepts(root):
    app = SpdyApp(root=root)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        form = app.screen
        assert isinstance(form, ProfileFormScreen)
        assert form.query_one("#form-name", Input).value == "new-profile"
        form.query_one("#form-name", Input).value = "mine"
        form.query_one("#field-model-source", Select).value = "digits"
        form.query_one("#field-data-source", Select).value = "digits"
        form.query_one("#field-export-gap", Switch).value = True
        form.query_one("#field-data-batch_size", Input).value = "0"
        await pilot.pause()
        check = flat(form.query_one("#form-check"))
        assert "✗ key 'data.batch_size' must be >= 1, got 0" in check
        assert form.query_one("#help-data-batch_size").has_class("-invalid")
        await pilot.press("ctrl+s")
        assert not (root / "profiles" / "mine.toml").exists()
        form.query_one("#field-data-batch_size", Input).value = "64"
        form.query_one("#field-search-target", Input).focus()
        await pilot.press("backspace", "backspace", "backspace", "2")
        await pilot.pause()
        assert "✓ valid · unsaved changes · profiles/mine.toml" in flat(form.query_one("#form-check"))
        await pilot.press("ctrl+s")
        saved = root / "profiles" / "mine.toml"
        assert saved.read_text() == (
            '[model]\nsource = "digits"\n\n[data]\nsource = "digits"\nbatch_size = 64\n\n'
            "[search]\ntarget = 2.0\n\n[export]\ngap = true\n"
        )
    result = run_cli("check", saved)
    assert result.exit_code == 0, result.output
    assert "valid" in result.output


async def test_consistency_errors_name_their_key_and_names_must_be_plain(root):
    app = SpdyApp(root=root)
    async with app.run_test(size=SIZE) as pilot:
        await app.push_screen(ProfileFormScreen(root))
        form = app.screen
        form.query_one("#field-grid-min_sparsity", Input).value = "0.95"
        form.query_one("#field-grid-max_sparsity", Input).value = "0.9"
        await pilot.pause()
        assert "✗ key 'grid.min_sparsity' (0.95) exceeds 'grid.max_sparsity' (0.9)" in flat(form.query_one("#form-check"))
        assert form.query_one("#help-grid-min_sparsity").has_class("-invalid")
        form.query_one("#form-name", Input).value = "../escape"
        await pilot.pause()
        assert "file name '../escape'" in flat(form.query_one("#form-check"))
        await pilot.press("escape")
        assert isinstance(app.screen, ProfileFormScreen)  # unsaved: a second escape leaves
        await pilot.press("escape")
        assert not isinstance(app.screen, ProfileFormScreen)


async def test_saving_over_another_profile_is_refused(root):
    app = SpdyApp(root=root)
    async with app.run_test(size=SIZE) as pilot:
        await app.push_screen(ProfileFormScreen(root))
        before = (root / "profiles" / "digits-cpu.toml").read_text()
        app.screen.query_one("#form-name", Input).value = "digits-cpu"
        await pilot.press("ctrl+s")
        assert (root / "profiles" / "digits-cpu.toml").read_text() == before
        assert any("exists" in str(notice.message) for notice in app._notifications)


async def test_the_path_picker_writes_a_path_relative_to_the_profiles_folder(root):
    app = SpdyApp(root=root)
    async with app.run_test(size=SIZE) as pilot:
        await app.push_screen(ProfileFormScreen(root))
        form = app.screen
        form.query_one("#field-hardware-timings", Input).focus()
        await pilot.press("ctrl+o")
        await wait_until(pilot, lambda: isinstance(app.screen, PathPickerScreen))
        await pilot.press("u")  # the highlighted node: the working directory itself
        await pilot.pause()
        assert app.screen is form and form.query_one("#field-hardware-timings", Input).value == ".."


async def test_a_valid_profile_lists_its_layers_and_estimate(root, monkeypatch):
    monkeypatch.setattr(spdy_tui.profile_form, "PLAN_DELAY", 0.01)
    app = SpdyApp(root=root)
    async with app.run_test(size=SIZE) as pilot:
        await app.push_screen(ProfileFormScreen(root, root / "profiles" / "digits-cpu.toml"))
        plan = app.screen.query_one("#form-plan")
        await wait_until(pilot, lambda: "prunable layers" in flat(plan), timeout=120)
        text = flat(plan)
        assert "4 prunable layers (0 kept dense), 22 levels each" in text and "fc1" in text and "2048x1024" in text
        assert "estimated time: about" in text


# ---------------------------------------------------------------------------- snapshots
@pytest.mark.parametrize("size", [SIZE, NARROW], ids=["120x40", "80x24"])
def test_snapshot_profile_form(root, snap_compare, monkeypatch, size):
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setattr(spdy_tui.profile_form, "PLAN_DELAY", 0.01)

    async def open_form(pilot):
        await pilot.app.push_screen(ProfileFormScreen(root, root / "profiles" / "digits-cpu.toml"))
        await wait_until(pilot, lambda: "prunable layers" in pane_text(pilot.app.screen.query_one("#form-plan")), timeout=120)
        for field in pilot.app.screen.query(Input):  # a blinking cursor would be caught on or off by chance
            field.cursor_blink = False
        await pilot.pause()

    assert snap_compare(SpdyApp(root=root), terminal_size=size, run_before=open_form)


# ---------------------------------------------------------------------------- a real run started from the form
@pytest.mark.slow
async def test_make_a_profile_run_it_stop_it_and_resume_it(root):
    fixture_table(root / "timings-fixture.json")
    settings = {
        "model-source": "digits", "data-source": "digits", "data-calibration_samples": "128", "data-heldout_samples": "256",
        "data-batch_size": "64", "hardware-timings": "../timings-fixture.json", "hardware-runtime": "eager",
        "hardware-batch_size": "64", "hardware-warmup": "1", "hardware-repeats": "3", "grid-steps": "5",
        "database-method": "magnitude", "search-random_inits": "8", "search-window": "6", "export-tighten_rounds": "0",
    }
    app = SpdyApp(root=root)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        form = app.screen
        form.query_one("#form-name", Input).value = "tiny"
        for key, value in settings.items():
            form.query_one(f"#field-{key}").value = value
        await pilot.pause()
        await pilot.press("ctrl+r")  # save and run
        await wait_until(pilot, lambda: isinstance(app.screen, RunScreen), timeout=20)
        screen = app.screen
        assert run_cli("check", root / "profiles" / "tiny.toml").exit_code == 0
        await wait_until(pilot, lambda: screen.live.stages, timeout=60)
        await pilot.press("s", "y")
        await wait_until(pilot, lambda: screen.exit_code is not None, timeout=60)
        await pilot.pause()
        assert screen.exit_code == 130 and screen.check_action("resume_run", ()) and "continue it with:" in pane_text(screen.query_one("#alerts"))
        await pilot.press("r")
        await wait_until(pilot, lambda: screen.live.finished is None, timeout=30)  # the resumed run's run_started
        await wait_until(pilot, lambda: screen.live.finished is not None, timeout=240)
        await wait_until(pilot, lambda: screen.exit_code is not None, timeout=30)
        assert screen.exit_code == 0 and screen.live.finished["status"] == "ok"
    assert summarise(screen.run_dir).finished["status"] == "ok"
