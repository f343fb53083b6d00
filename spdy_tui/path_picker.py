"""A modal that picks a file or folder from a tree under the working directory (keys only)."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DirectoryTree, Footer, Label


class PathPickerScreen(ModalScreen[Path | None]):
    """Enter on a file picks it; enter on a folder opens it, u picks the highlighted folder or file."""

    BINDINGS = [Binding("u", "use_highlighted", "Use this"), Binding("escape", "cancel", "Cancel")]

    def __init__(self, root: Path, key: str):
        super().__init__()
        self.root, self.key = root, key

    def compose(self) -> ComposeResult:
        with Vertical(id="picker"):
            yield Label(f"{self.key}: enter opens a folder or picks a file; u picks what is highlighted")
            yield DirectoryTree(self.root, id="picker-tree")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DirectoryTree).focus()

    def on_directory_tree_file_selected(self, event: DirectoryTree.FileSelected) -> None:
        event.stop()
        self.dismiss(Path(event.path))

    def action_use_highlighted(self) -> None:
        node = self.query_one(DirectoryTree).cursor_node
        if node is not None and node.data is not None:
            self.dismiss(Path(node.data.path))

    def action_cancel(self) -> None:
        self.dismiss(None)
