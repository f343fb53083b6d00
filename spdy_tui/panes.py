"""The panes of the run screen; each shows one aspect of a ``RunState`` it is handed.

Attributes down: the screen sets ``pane.state`` (and a few extras) and the pane redraws itself.
Everything is written in glyphs and words first, colour second, so it reads under NO_COLOR.
"""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Static

from engine.run.runlog import Progress, RunState, relax_line
from spdy_tui.names import legend, short_names
from spdy_tui.plot import loss_plot

EIGHTHS = " ▏▎▍▌▋▊▉"
ALERT_ERRORS_SHOWN = 3
STAGE_MARKS = {"started": ("▶", "running"), "done": ("✓", "done"), "skipped": ("↷", "skipped")}


def bar(fraction: float, width: int) -> str:
    """A horizontal bar in eighth blocks on a shaded track, so the fill shows without colour."""
    eighths = round(max(0.0, min(1.0, fraction)) * width * 8)
    full, part = divmod(eighths, 8)
    return ("█" * full + (EIGHTHS[part] if part else ""))[:width].ljust(width, "░")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def number(value: float | None, spec: str = ".4f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


class StatePane(Static):
    """A pane that redraws from ``state`` whenever the screen hands it one."""

    state: reactive[RunState | None] = reactive(None, always_update=True)

    def watch_state(self) -> None:
        self.redraw()

    def redraw(self) -> None:
        self.update(self.describe(self.state) if self.state is not None else Text("waiting for events…", style="dim"))

    def describe(self, state: RunState) -> RenderableType:
        raise NotImplementedError


class StatusPane(StatePane):
    """Stages, search rate, best loss and predicted speedup, and which moment is shown."""

    position: reactive[str] = reactive("live")

    def watch_position(self) -> None:
        self.redraw()

    def describe(self, state: RunState) -> RenderableType:
        stages = Text("stages  ")
        for name, stage_state in state.stages.items():
            mark, word = STAGE_MARKS.get(stage_state, ("?", stage_state))
            stages.append(f"{mark} {name} ", style="bold" if stage_state == "started" else "")
            stages.append(f"({word})  ", style="dim")
        if not state.stages:
            stages.append("none yet", style="dim")
        rate = state.evals_per_second()
        search = Text.assemble(
            f"evals {len(state.evaluations)}",
            f" ({rate:.1f}/s)" if rate else "",
            "  best loss ",
            (number(state.best_loss), "bold"),
            "  predicted ",
            (number(state.predicted_speedup, ".3f", "x"), "bold"),
            f"  elapsed {duration(state.elapsed_seconds)}",
            "  view ",
            (self.position, "reverse"),
        )
        lines = [stages, search]
        if state.finished is not None:
            status = str(state.finished.get("status"))
            style = "bold green" if status == "ok" else "bold red"
            lines.append(Text.assemble("run finished: ", (status, style), f" in {duration(state.finished.get('wall_seconds'))}"))
        return Group(*lines)


class ProgressPane(StatePane):
    """Timing-table and database progress: cells done of layers x levels, and the time left; then
    global AdaPrune's steps on the final model, once it runs."""

    def describe(self, state: RunState) -> RenderableType:
        rows = [*self._rows("timings", state.timing), *self._rows("database", state.database)]
        if state.gap.total:
            rows += self._rows("gAP", state.gap, f"steps · loss {number(state.gap_loss, '.4g')}")
        return Group(*rows)

    def _rows(self, title: str, progress: Progress, detail: str | None = None) -> list[Text]:
        """A bar with done/total, then ``detail`` (default: the table's layers x levels) and the ETA."""
        if not progress.total:
            return [Text(f"{title:<9} no events yet", style="dim")]
        count = f"{progress.done}/{progress.total} {100 * progress.fraction:.0f}%"
        if detail is None:
            detail = f"{len(progress.per_layer)} layers x ≤{max(progress.per_layer.values(), default=0)} levels"
        eta = "done" if progress.done >= progress.total else f"ETA {duration(progress.eta_seconds())}"
        width = self.content_size.width or 80  # narrow (80 x 24): a shorter bar, so a row stays one line
        bar_width = max(4, min(20, width - 10 - len(count) - 1))
        indent = 10 if width >= 10 + 32 else 2
        return [
            Text(f"{title:<9} {bar(progress.fraction, bar_width)} {count}"),
            Text(f"{'':<{indent}}{detail} · {eta}", style="dim"),
        ]


class AllocationPane(StatePane):
    """The best allocation: per layer its level, a sparsity bar and its share of the time budget."""

    def describe(self, state: RunState) -> RenderableType:
        choices = state.allocation()
        if not choices:
            return Text("no allocation yet: the search has not reported a best", style="dim")
        previous = state.best_history[-2]["levels"] if len(state.best_history) > 1 else None
        narrow = (self.content_size.width or 80) < 60  # 80 x 24: shorter bars leave the names room
        share_bar = 5 if narrow else 10
        table = Table(box=None, pad_edge=False, expand=True, header_style="bold")
        table.add_column("layer", no_wrap=True, overflow="ellipsis", ratio=1, min_width=12)
        table.add_column("level", no_wrap=True)
        if not narrow:  # the level is the sparsity; the bar only draws it
            table.add_column("sparsity", no_wrap=True)
        table.add_column("budget" if narrow else "time / budget", no_wrap=True)
        table.add_column("Δ", no_wrap=True)
        full_names = [choice.name for choice in choices]
        shown_names = short_names(full_names)
        self.tooltip = legend(full_names) or None  # the full name of every shortened one, on hover
        for row, (choice, shown) in enumerate(zip(choices, shown_names)):
            changed = previous is not None and row < len(previous) and previous[row] != choice.level
            share = "" if choice.share is None else f"{bar(choice.share, share_bar)} {100 * choice.share:4.1f}%"
            table.add_row(
                shown,
                choice.level,
                *(() if narrow else (bar(choice.sparsity or 0.0, 12),)),
                share,
                Text("•", style="bold yellow") if changed else "",
            )
        best = state.best
        caption = Text(f"eval #{best.get('n')} · loss {number(best.get('loss'))} · {len(state.best_history)} bests so far", style="dim")
        if shown_names != full_names:
            caption.append("  · short names: full ones on hover, or t: timing table")
        return Group(caption, table)


class OutcomePane(StatePane):
    """The search's best against the baselines, and measured against predicted speedup."""

    def describe(self, state: RunState) -> RenderableType:
        table = Table(box=None, pad_edge=False, header_style="bold", padding=(0, 1, 0, 0))
        narrow = (self.content_size.width or 80) < 40  # 80 x 24
        for column in ("allocation", "loss", "held" if narrow else "held-out", "speedup"):
            table.add_column(column, justify="left" if column == "allocation" else "right", no_wrap=True)
        final = state.final or {}
        table.add_row(Text("spdy (best)", style="bold"), number(state.best_loss), number(final.get("heldout")),
                      number(state.predicted_speedup, ".3f", "x"))
        for name, baseline in state.baselines.items():
            table.add_row(name, number(baseline.get("loss")), number(baseline.get("heldout")), number(baseline.get("predicted_speedup"), ".3f", "x"))
        recall = (final.get("quality") or {}).get("recall_at_10")
        if recall is not None:
            table.add_row(Text("spdy neighbour recall@10", style="dim"), "", number(recall), "")
        verify = state.verify
        if verify is None:
            return Group(table, Text("verify: not yet measured", style="dim"))
        summary = Text.assemble(
            "verify: measured ",
            (number(verify.get("measured"), ".3f", "x"), "bold"),
            f" vs predicted {number(verify.get('predicted'), '.3f', 'x')}",
            f"  (dense {number(_ms(verify.get('dense_seconds')), '.2f', ' ms')},"
            f" sparse {number(_ms(verify.get('sparse_seconds')), '.2f', ' ms')})",
        )
        rounds = [
            Text(f"closed loop round {event['round']}: measured {number(event.get('measured'), '.3f', 'x')} "
                 f"< target {number(event.get('target'), '.3f', 'x')}, searching on at {number(event.get('search_target'), '.3f', 'x')}",
                 style="yellow")
            for event in state.tighten
        ] + [Text(relax_line(event), style="green" if event.get("outcome") == "kept" else "yellow") for event in state.relax]
        return Group(table, summary, *rounds)


class AlertPane(StatePane):
    """Errors logged by the run, problems with the log itself (not a run log, unreadable lines) and the
    failure of the run process; hidden while there are none."""

    process_failure: reactive[tuple[str, ...]] = reactive(())
    log_problems: reactive[tuple[str, ...]] = reactive(())

    def watch_process_failure(self) -> None:
        self.redraw()

    def watch_log_problems(self) -> None:
        self.redraw()

    def redraw(self) -> None:
        errors = self.state.errors if self.state is not None else []
        self.display = bool(errors or self.process_failure or self.log_problems)
        if self.state is None and self.log_problems:  # no event at all: say what is wrong, not "waiting"
            self.update(self.describe(RunState()))
            return
        super().redraw()

    def describe(self, state: RunState) -> RenderableType:
        shown = state.errors[-ALERT_ERRORS_SHOWN:]
        lines = [Text.assemble(("log: ", "bold yellow"), problem) for problem in self.log_problems]
        lines += [Text.assemble(("error: ", "bold red"), message) for message in shown]
        if len(state.errors) > len(shown):
            lines.insert(0, Text(f"({len(state.errors) - len(shown)} earlier errors not shown)", style="dim"))
        if self.process_failure:
            headline, *tail = self.process_failure
            lines.append(Text(headline, style="bold red"))
            lines.extend(Text(f"  {line}", style="dim") for line in tail)
        return Group(*lines)


class LossPlot(Widget):
    """Calibration loss of every evaluation, and the best so far, against evaluations."""

    state: reactive[RunState | None] = reactive(None, always_update=True)

    def render(self) -> RenderableType:
        if self.state is None:
            return Text("waiting for events…", style="dim")
        points = self.state.evaluations
        return loss_plot(
            [point.loss for point in points],
            [point.best for point in points],
            self.content_size.width,
            self.content_size.height,
            loss_style="cyan",
            best_style="bold yellow",
        )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1000 * seconds
