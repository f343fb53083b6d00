"""The profile editor: a form generated from the profile schema, saved to profiles/NAME.toml.

Every key of ``engine.core.profile`` gets a row: a Select for keys with choices, a Switch for
booleans, an Input for numbers, strings and lists (comma-separated), with its default, range and
help text under it.  Every change is checked by the loader itself (``profile_of_values``: the
TOML that would be written, read back by ``from_dict`` and resolved like ``load_profile``), so a
message names the key exactly as `spdy check` would.  A valid profile is then planned in a
worker thread (``engine.run.plan.plan_run``, which loads the model: the prunable layers, the
database size and the estimated time), as `spdy check` and `spdy layers` show them.

What is saved: the keys that differ from their defaults (``changed_toml``), under the comment
lines that opened the file being edited; load -> form -> save -> load gives the same Profile.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass
from pathlib import Path

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Header, Input, Label, Select, Static, Switch

from engine.core import atomic
from engine.core.profile import Profile, ProfileError, from_dict, read_toml
from engine.core.profile_toml import changed_toml, describe, profile_of_values
from spdy_tui.cli.check import duration, shape
from spdy_tui.cli.overrides import PATH_KEYS
from spdy_tui.names import legend, short_names
from spdy_tui.path_picker import PathPickerScreen

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
KEY_IN_MESSAGE = re.compile(r"\b([a-z]+\.[a-z_]+)\b")
PLAN_DELAY = 1.0  # seconds of quiet after a change before the model is loaded again


@dataclass(frozen=True)
class KeySpec:
    """One profile key as the form shows it."""

    section: str
    key: str
    kind: str  # choice, bool, int, float, str, list
    choices: tuple[str, ...]
    help: str  # "default X · allowed — doc"

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def widget_id(self) -> str:
        return f"field-{self.section}-{self.key}"


def schema() -> list[KeySpec]:
    """Every profile key in declaration order, with what its widget needs."""
    described = {key: (default, allowed, doc) for key, default, allowed, doc in describe()}
    specs = []
    for section in dataclasses.fields(Profile):
        if section.metadata.get("internal"):
            continue
        cls = section.default_factory  # type: ignore[misc]
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default, allowed, doc = described[f"{section.name}.{f.name}"]
            hint = hints[f.name]
            if typing.get_origin(hint) is list:
                kind = "numbers" if typing.get_args(hint) == (float,) else "list"
            else:
                kind = {bool: "bool", int: "int", float: "float"}.get(hint, "str")
            choices = tuple(f.metadata.get("choices") or ())
            kind = "choice" if choices else kind
            help_text = f"default {default}" + (f" · {allowed}" if allowed else "") + f" — {doc}"
            specs.append(KeySpec(section.name, f.name, kind, choices, help_text))
    return specs


def value_text(spec: KeySpec, value) -> str:
    """What an Input shows for a value."""
    return ", ".join(str(item) for item in value) if spec.kind in ("list", "numbers") else str(value)


def parse_text(spec: KeySpec, text: str):
    """An Input's text as the key's value; a ProfileError naming the key if it is not one."""
    if spec.kind in ("list", "numbers"):
        parts = [part.strip() for part in text.split(",") if part.strip()]
        return [_number(spec, part) for part in parts] if spec.kind == "numbers" else parts
    if spec.kind == "str":
        return text
    return _number(spec, text)


def _number(spec: KeySpec, text: str):
    """``text`` as the key's int or float (a number of a "numbers" list); a ProfileError naming the key."""
    try:
        value = int(text) if spec.kind == "int" else float(text)
    except ValueError:
        expected = "an integer" if spec.kind == "int" else "a number"
        raise ProfileError(f"key '{spec.dotted}' must be {expected}, got {text!r}") from None
    if not math.isfinite(value):
        raise ProfileError(f"key '{spec.dotted}' must be a finite number, got {text!r}")
    return value


def comment_header(text: str) -> str:
    """The comment lines (and blank lines) a profile file opens with."""
    lines = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines).strip("\n")


def starting_values(path: Path | None) -> tuple[dict, str, str]:
    """(section -> key -> value, header, problem) of the file being opened (defaults for a new one).

    An invalid file opens too: its keys that fit the schema fill the form, and ``problem`` says
    what the loader refused."""
    values = Profile().to_dict()
    if path is None:
        return values, "", ""
    header = comment_header(path.read_text(encoding="utf-8", errors="replace")) if path.is_file() else ""
    raw: dict = {}
    try:
        raw = read_toml(path)
        return from_dict(raw, str(path)).to_dict(), header, ""
    except ProfileError as exc:
        for section, body in raw.items():
            if section not in values or not isinstance(body, dict):
                continue
            for key, value in body.items():
                if key in values[section] and type(value) is type(values[section][key]):
                    values[section][key] = value
        return values, header, str(exc)


class ProfileFormScreen(Screen[Path | None]):
    """Make or change a profile; dismissed with the saved path to start a run of it, else None."""

    BINDINGS = [
        Binding("ctrl+s", "save", "Save"),
        Binding("ctrl+r", "save_and_run", "Save+run"),
        Binding("ctrl+o", "pick_path", "Pick path"),
        Binding("ctrl+l", "plan", "Plan"),
        Binding("escape", "leave", "Back"),
    ]

    def __init__(self, root: Path, path: Path | None = None):
        super().__init__()
        self.root, self.opened = root, path
        self.folder = root / "profiles"
        self.specs = schema()
        self.initial, self.header, self.load_problem = starting_values(path)
        self.name_text = path.stem if path is not None else self.free_name()
        self.saved_values: dict | None = self.initial if path is not None and not self.load_problem else None
        self.profile: Profile | None = None  # the valid profile the form holds now, paths resolved
        self.planned: Profile | None = None
        self.leave_armed = False
        self._plan_timer = None

    def free_name(self) -> str:
        name, number = "new-profile", 1
        while (self.folder / f"{name}.toml").exists():
            number += 1
            name = f"new-profile-{number}"
        return name

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="form-body"):
            with Vertical(id="form-left"):
                with Horizontal(id="form-file"):
                    yield Label("file  profiles/", classes="form-key")
                    yield Input(self.name_text, id="form-name", compact=True)
                    yield Label(".toml")
                with VerticalScroll(id="form-fields"):
                    section = None
                    for spec in self.specs:
                        if spec.section != section:
                            section = spec.section
                            yield Label(f"[{section}]", classes="form-section", markup=False)
                        with Horizontal(classes="form-row"):
                            yield Label(spec.key, classes="form-key")
                            yield self.field(spec, self.initial[spec.section][spec.key])
                        yield Static(Text(spec.help, style="dim"), id=f"help-{spec.section}-{spec.key}", classes="form-help")
            with Vertical(id="form-side"):
                yield Static(id="form-check")
                with VerticalScroll(id="form-plan-scroll"):
                    yield Static(Text("the layers and the estimate follow once the profile is valid", style="dim"), id="form-plan")
        yield Footer()

    def field(self, spec: KeySpec, value) -> Widget:
        if spec.kind == "choice":
            value = value if value in spec.choices else spec.choices[0]
            return Select([(choice, choice) for choice in spec.choices], value=value, allow_blank=False, id=spec.widget_id, compact=True)
        if spec.kind == "bool":
            return Switch(bool(value), id=spec.widget_id)
        placeholder = "comma-separated" if spec.kind in ("list", "numbers") else ""
        kind = {"int": "integer", "float": "number"}.get(spec.kind, "text")
        return Input(value_text(spec, value), placeholder=placeholder, type=kind, id=spec.widget_id, compact=True)

    def on_mount(self) -> None:
        self.sub_title = "new profile" if self.opened is None else f"editing {self.opened.name}"
        self.query_one("#form-check").border_title = "check"
        self.query_one("#form-plan-scroll").border_title = "layers and estimate"
        self.query_one(f"#{self.specs[0].widget_id}").focus()
        self.validate()
        if self.load_problem:
            self.notify(f"the file does not load as it is: {self.load_problem}", severity="warning", timeout=15)

    # ------------------------------------------------------------------ reading and checking the form
    @property
    def save_path(self) -> Path:
        return self.folder / f"{self.query_one('#form-name', Input).value.strip()}.toml"

    def values(self) -> tuple[dict, dict[str, str]]:
        """(section -> key -> value, key -> problem) of what the widgets hold now."""
        values: dict[str, dict] = {}
        problems: dict[str, str] = {}
        for spec in self.specs:
            widget = self.query_one(f"#{spec.widget_id}")
            try:
                value = parse_text(spec, widget.value) if isinstance(widget, Input) else widget.value
            except ProfileError as exc:
                problems[spec.dotted], value = str(exc), self.initial[spec.section][spec.key]
            values.setdefault(spec.section, {})[spec.key] = value
        return values, problems

    def validate(self) -> None:
        """Check the form as the loader would; show what is wrong, next to the keys it names."""
        values, problems = self.values()
        self.profile = None
        name = self.query_one("#form-name", Input).value.strip()
        if not NAME.match(name):
            problems["file"] = f"file name {name!r}: letters, digits, '.', '_' and '-' only, not starting with '.', '_' or '-'"
        if not problems:
            try:
                self.profile = profile_of_values(values, self.save_path)
            except ProfileError as exc:
                message = str(exc).removeprefix(f"{self.save_path}: ")
                keys = [key for key in KEY_IN_MESSAGE.findall(message) if key in self.help_ids()] or ["profile"]
                problems[keys[0]] = message
        for spec in self.specs:
            problem = problems.get(spec.dotted)
            help_line = self.query_one(f"#help-{spec.section}-{spec.key}", Static)
            help_line.update(Text(f"✗ {problem}", style="bold red") if problem else Text(spec.help, style="dim"))
            help_line.set_class(bool(problem), "-invalid")
        check = self.query_one("#form-check", Static)
        if problems:
            check.update(Text("\n".join(f"✗ {message}" for message in problems.values()), style="bold red"))
        else:
            changed = "unsaved changes" if values != self.saved_values else "saved"
            check.update(Text.assemble(("✓ valid", "bold green"), f" · {changed} · {self.save_path.relative_to(self.root)}"))
            self.schedule_plan()

    def help_ids(self) -> set[str]:
        return {spec.dotted for spec in self.specs}

    def on_input_changed(self, event: Input.Changed) -> None:
        self.changed()

    def on_select_changed(self, event: Select.Changed) -> None:
        self.changed()

    def on_switch_changed(self, event: Switch.Changed) -> None:
        self.changed()

    def changed(self) -> None:
        self.leave_armed = False
        if self.is_mounted:
            self.validate()

    # ------------------------------------------------------------------ the plan (loads the model)
    def schedule_plan(self) -> None:
        if self.profile is None or self.profile == self.planned:
            return
        if self._plan_timer is not None:
            self._plan_timer.stop()
        self._plan_timer = self.set_timer(PLAN_DELAY, self.action_plan)

    def action_plan(self) -> None:
        if self.profile is None:
            self.notify("fix the profile first: the check pane says what is wrong", severity="warning")
            return
        self.planned = self.profile
        self.query_one("#form-plan", Static).update(Text("loading the model to list its layers…", style="dim"))
        self.plan_in_thread(self.profile)

    @work(thread=True, exclusive=True, group="plan")
    def plan_in_thread(self, profile: Profile) -> None:
        from engine.run.plan import plan_run  # loads torch: only when a plan is wanted

        try:
            shown = plan_text(plan_run(profile))
        except (ValueError, OSError) as exc:  # the engine's user errors (ProfileError, ModelError, DataError, ...)
            shown = Text(f"✗ {exc}", style="bold red")
        self.app.call_from_thread(self.show_plan, profile, shown)

    def show_plan(self, profile: Profile, shown) -> None:
        if profile == self.planned and self.is_mounted:
            self.query_one("#form-plan", Static).update(shown)

    # ------------------------------------------------------------------ actions
    def action_save(self) -> Path | None:
        """Write profiles/NAME.toml; refuse an invalid form or another profile's file."""
        self.validate()
        if self.profile is None:
            self.notify("not saved: the check pane says what is wrong", severity="error")
            return None
        path = self.save_path
        if path.exists() and (self.opened is None or path.resolve() != self.opened.resolve()):
            self.notify(f"not saved: {path.relative_to(self.root)} exists; give this profile another name", severity="error")
            return None
        values = self.values()[0]
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic.write_text(path, changed_toml(values, self.header))
        self.opened, self.saved_values = path, values
        self.notify(f"saved {path.relative_to(self.root)}")
        self.validate()
        return path

    def action_save_and_run(self) -> None:
        path = self.action_save()
        if path is not None:
            self.dismiss(path)

    def action_pick_path(self) -> None:
        focused = self.focused
        key = next((spec for spec in self.specs if focused is not None and focused.id == spec.widget_id and spec.dotted in PATH_KEYS), None)
        spec = key or next(spec for spec in self.specs if spec.dotted == "model.path")

        def chosen(path: Path | None) -> None:
            if path is not None:
                widget = self.query_one(f"#{spec.widget_id}", Input)
                widget.value = os.path.relpath(path, self.folder)  # profile paths are relative to its folder
                widget.focus()

        self.app.push_screen(PathPickerScreen(self.root, spec.dotted), chosen)

    def action_leave(self) -> None:
        if self.values()[0] != self.saved_values and not self.leave_armed:
            self.leave_armed = True
            self.notify("unsaved changes: ctrl+s saves them, escape again leaves without saving", severity="warning")
            return
        self.dismiss(None)


def plan_text(plan) -> Group:
    """The layers (short names, the full ones listed under them), the database and the estimate."""
    names = [layer.name for layer in plan.layers]
    skipped = set(plan.skipped)
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("layer", "weight", "kind"):
        table.add_column(column, no_wrap=True, overflow="ellipsis")
    for short, layer in zip(short_names(names, 14), plan.layers):
        table.add_row(short, shape(layer).replace(" ", ""), layer.kind + (" (dense)" if layer.name in skipped else ""))
    total = sum(plan.estimated_seconds.values())
    lines = [
        table,
        Text(f"{len(plan.layers)} prunable layers ({len(skipped)} kept dense), {len(plan.levels)} levels each", style="bold"),
        Text(f"database: {plan.cells} cells, about {plan.database_bytes / 2**20:.1f} MiB on disk"),
        Text.assemble(("estimated time: about ", "bold"), (duration(total), "bold"), " (rough, errs long)"),
        Text("  " + ", ".join(f"{stage} {duration(seconds)}" for stage, seconds in plan.estimated_seconds.items()), style="dim"),
    ]
    full = legend(names, 14)
    return Group(*lines, *([Text("full names:", style="bold"), Text(full, style="dim")] if full else []))
