"""`spdy-tui`: the terminal UI.

This first version opens a start screen that lists the shipped profiles and the run directories
found under ./runs; the live panes arrive with the run log (see docs/tui.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, Header, Label, ListItem, ListView

USAGE = """usage: spdy-tui [PROFILE.toml | RUN_DIR]

Terminal UI for spdy-tui. With no argument it opens a start screen listing profiles/*.toml
and the runs under ./runs. Keys are shown in the footer; q quits.
"""


def discover(root: Path) -> tuple[list[Path], list[Path]]:
    """Profiles under root/profiles and run directories (holding events.jsonl) under root/runs."""
    profiles = sorted((root / "profiles").glob("*.toml"))
    runs = sorted(path.parent for path in (root / "runs").glob("*/events.jsonl"))
    return profiles, runs


class SpdyApp(App):
    TITLE = "spdy-tui"
    BINDINGS = [Binding("q", "quit", "Quit")]

    def __init__(self, root: Path | None = None):
        super().__init__()
        self.root = root or Path.cwd()

    def compose(self) -> ComposeResult:
        yield Header()
        profiles, runs = discover(self.root)
        items = [ListItem(Label(f"profile  {path.relative_to(self.root)}")) for path in profiles]
        items += [ListItem(Label(f"run      {path.relative_to(self.root)}")) for path in runs]
        if not items:
            items = [ListItem(Label("no profiles or runs found here"))]
        yield ListView(*items, id="start")
        yield Footer()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return
    SpdyApp().run()


if __name__ == "__main__":  # pragma: no cover
    main()
