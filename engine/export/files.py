"""Exports of a finished run: the files a user takes away from ``runs/<name>/``.

Every writer is a pure function of its arguments that writes one product into the run directory
atomically (``engine.core.atomic``), so a killed export never leaves a half-written file:

    result.json          allocation, speedups, losses, baselines (``engine.export.result`` owns it)
    profile.txt          the original SPDY format, one "<level> <layer name>" line per layer
    recipe.yaml          SparseML recipe: gradual magnitude pruning to each layer's final sparsity
                         (the schedule of engine.export.schedule, which `spdy finetune` runs)
    torchao_config.json  torch.ao.pruning WeightNormSparsifier config, one entry per pruned weight
    pruned.safetensors   the pruned state dict (exact zeros), loadable in plain PyTorch, and
    int8.safetensors     the int8 layers' codes and scales (both: ``engine.export.weights``)
    report.md            human summary, with loss_curve.png and allocation.png beside it

A layer is a mapping ``{"name", "level", "time"}`` as in ``result["layers"]`` (time in seconds);
a level is a grid label: "0.7844", "0.0000" (dense), an N:M pattern such as "2:4" or an int8 level
such as "q8:0.0000" (profile.txt keeps it as it is; recipe.yaml and torchao_config.json, which
describe pruning, carry its sparsity only).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path


from engine.core.atomic import write_bytes, write_text
from engine.core.grid import is_int8, level_sparsity, parse_nm
from engine.export.result import plain_json, write_json
from engine.export.schedule import DEFAULT as DEFAULT_SCHEDULE
from engine.export.schedule import GMPSchedule
from engine.model.losses import METRIC_NAMES

# Module names that are safe as plain YAML scalars and as one whitespace-free profile.txt field.
_PARAM_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def _write(run_dir: str | os.PathLike, name: str, content: str | bytes) -> Path:
    path = Path(run_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    (write_text if isinstance(content, str) else write_bytes)(path, content)
    return path


def _checked_name(layer: Mapping, file: str) -> str:
    if not _PARAM_NAME.match(layer["name"]):
        raise ValueError(f"layer name {layer['name']!r} cannot be written to {file}")
    return layer["name"]


def _pruned(layers: Iterable[Mapping]) -> list[Mapping]:
    return [layer for layer in layers if level_sparsity(layer["level"]) > 0.0]


# --- profile.txt (original SPDY format) ------------------------------------------------------
def _profile_label(level: str) -> str:
    return level if parse_nm(level) or is_int8(level) else f"{level_sparsity(level):.4f}"


def write_profile_txt(run_dir: str | os.PathLike, layers: Sequence[Mapping]) -> Path:
    """One ``<level> <layer name>`` line per layer, in execution order, dense layers included."""
    lines = [f"{_profile_label(layer['level'])} {_checked_name(layer, 'profile.txt')}\n" for layer in layers]
    return _write(run_dir, "profile.txt", "".join(lines))


def read_profile_txt(path: str | os.PathLike) -> dict[str, str]:
    """Layer name -> level label. Layers a profile does not list are dense (original convention)."""
    levels: dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 2:
                raise ValueError("expected '<level> <layer name>'")
            level, name = fields
            level_sparsity(level)
            if name in levels:
                raise ValueError(f"layer {name} listed twice")
        except ValueError as error:
            raise ValueError(f"{path}:{number}: {error}") from None
        levels[name] = level
    return levels


# --- recipe.yaml (SparseML) ------------------------------------------------------------------
_RECIPE_HEADER = """\
# SparseML recipe written by spdy-tui from an SPDY run's allocation.
# Gradual magnitude pruning (GMP): every listed weight goes from init_sparsity to its
# final_sparsity on the cubic schedule, s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))^3,
# its masks recomputed every pruning_update_frequency epochs from the start of
# pruning_start_epoch (t0) and set to final_sparsity at the start of pruning_end_epoch (t1);
# leave_enabled keeps the masks on while training continues to num_epochs. One
# !GMPruningModifier per distinct (init, final, mask type); layers SPDY left dense are not listed.
# Layers whose final sparsity is at most init_sparsity start at it. N:M layers use mask_type
# "2:4" (quoted: YAML 1.1 reads a bare 2:4 as the number 124) and start at their final
# sparsity, because SparseML's N:M mask creator accepts no other target.
# `spdy finetune` runs exactly this schedule. Format: SparseML recipes, version 1.1.0
# (variables + eval()); params are the model's parameter names; pass it as --recipe.
"""


def write_recipe(run_dir: str | os.PathLike, layers: Sequence[Mapping], schedule: GMPSchedule = DEFAULT_SCHEDULE) -> Path:
    """``recipe.yaml``: a SparseML GMP recipe reaching each pruned layer's level at ``schedule.end_epoch``.

    The schedule (``engine.export.schedule``) is the one `spdy finetune` follows; its defaults live there."""
    groups: dict[tuple[str, str, str], list[str]] = {}  # (init sparsity, final sparsity, mask type) -> params
    for layer in _pruned(layers):
        name, level = _checked_name(layer, "recipe.yaml"), layer["level"]
        nm = parse_nm(level)
        final = f"{nm.sparsity:g}" if nm else _profile_label(level)
        starts_final = nm is not None or schedule.layer_init(level) < schedule.init_sparsity
        init = final if starts_final else "eval(init_sparsity)"
        key = (init, final, f'"{nm.label}"' if nm else "unstructured")
        groups.setdefault(key, []).append(f"{name}.weight")
    lines = [_RECIPE_HEADER + "version: 1.1.0\n", "# General Variables",
             f"num_epochs: {float(schedule.num_epochs)!r}", f"init_sparsity: {float(schedule.init_sparsity)!r}",
             f"pruning_start_epoch: {float(schedule.start_epoch)!r}", f"pruning_end_epoch: {float(schedule.end_epoch)!r}",
             f"pruning_update_frequency: {float(schedule.update_frequency)!r}", "",
             "training_modifiers:", "  - !EpochRangeModifier", "    start_epoch: 0.0",
             "    end_epoch: eval(num_epochs)", "", "pruning_modifiers:" + ("" if groups else " []")]
    for (initial, final_sparsity, mask_type), params in groups.items():
        lines += ["  - !GMPruningModifier", "    params:", *(f"      - {param}" for param in params),
                  f"    init_sparsity: {initial}", f"    final_sparsity: {final_sparsity}",
                  "    start_epoch: eval(pruning_start_epoch)", "    end_epoch: eval(pruning_end_epoch)",
                  "    update_frequency: eval(pruning_update_frequency)", "    inter_func: cubic",
                  f"    mask_type: {mask_type}", "    leave_enabled: True", ""]
    return _write(run_dir, "recipe.yaml", "\n".join(lines).rstrip("\n") + "\n")


def read_recipe_schedule(path: str | os.PathLike) -> GMPSchedule:
    """The ``GMPSchedule`` of a recipe written by ``write_recipe`` (from its General Variables)."""
    text = Path(path).read_text(encoding="utf-8")
    values = {}
    for key in ("num_epochs", "init_sparsity", "pruning_start_epoch", "pruning_end_epoch", "pruning_update_frequency"):
        match = re.search(rf"^{key}: (\S+)$", text, flags=re.M)
        if match is None:
            raise ValueError(f"{path}: no variable {key}")
        try:
            values[key] = float(match.group(1))
        except ValueError:
            raise ValueError(f"{path}: {key} is not a number ({match.group(1)})") from None
    whole = {key: values[key] for key in values if key != "init_sparsity"}
    if any(value != int(value) for value in whole.values()):
        raise ValueError(f"{path}: epochs must be whole numbers for spdy-tui's schedule")
    return GMPSchedule(
        init_sparsity=values["init_sparsity"], start_epoch=int(values["pruning_start_epoch"]),
        end_epoch=int(values["pruning_end_epoch"]), num_epochs=int(values["num_epochs"]),
        update_frequency=int(values["pruning_update_frequency"]),
    )


def read_recipe_targets(path: str | os.PathLike) -> dict[str, float]:
    """Param name -> final_sparsity of the pruning modifiers in a recipe written by ``write_recipe``."""
    targets: dict[str, float] = {}
    for modifier in re.split(r"^ *- !", Path(path).read_text(encoding="utf-8"), flags=re.M)[1:]:
        params = re.findall(r"^ {6}- (\S+)$", modifier, flags=re.M)
        final_sparsity = re.search(r"^ {4}final_sparsity: (\S+)$", modifier, flags=re.M)
        if not params:
            continue
        try:
            targets.update(dict.fromkeys(params, float(final_sparsity.group(1))))
        except (AttributeError, ValueError):
            raise ValueError(f"{path}: the modifier for {params[0]} has no numeric final_sparsity") from None
    return targets


# --- torchao_config.json (torch.ao.pruning) --------------------------------------------------
def write_torchao_config(run_dir: str | os.PathLike, layers: Sequence[Mapping]) -> Path:
    """Config for ``torch.ao.pruning.WeightNormSparsifier().prepare(model, config)``.

    The sparsifier zeroes ``sparsity_level`` of the blocks of ``sparse_block_shape`` and then
    ``zeros_per_block`` inside each block, so unstructured levels use 1x1 blocks and an N:M level
    sparsifies every 1xM block (level 1.0) with M-N zeros each. It masks 2-D (nn.Linear) weights
    only: its mask code fails on 4-D convolution weights (torch 2.14).
    """
    config = []
    for layer in _pruned(layers):
        nm = parse_nm(layer["level"])
        entry = {"tensor_fqn": f"{layer['name']}.weight"}
        if nm:
            entry.update(sparsity_level=1.0, sparse_block_shape=[1, nm.m], zeros_per_block=nm.m - nm.n)
        else:
            entry.update(sparsity_level=level_sparsity(layer["level"]), sparse_block_shape=[1, 1], zeros_per_block=1)
        config.append(entry)
    return _write(run_dir, "torchao_config.json", json.dumps(config, indent=2) + "\n")


# --- report.md with its plots ----------------------------------------------------------------
def _figure(width: float, height: float):
    # The object API with the Agg canvas: no pyplot state, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def _title_and_legend(axes, title: str) -> None:
    # Title, then the legend in one row, both above the plot so neither hides data.
    axes.set_title(title, loc="left", pad=20)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=3, fontsize=8, frameon=False,
                    borderaxespad=0.1, borderpad=0.0)


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def _loss_curve_png(evaluations: Sequence[tuple]) -> bytes:
    figure = _figure(6.4, 3.6)
    axes = figure.add_subplot()
    dots = [(n, loss) for n, loss, _ in evaluations if _finite(loss)]
    line = [(n, best) for n, _, best in evaluations if _finite(best)]
    if dots:
        axes.plot(*zip(*dots), ".", color="tab:blue", alpha=0.5, markersize=4, label="evaluation")
    if line:
        axes.plot(*zip(*line), color="tab:red", drawstyle="steps-post", label="best so far")
    values = [loss for _, loss in dots]
    if values and min(values) > 0 and max(values) / min(values) > 50:
        axes.set_yscale("log")
    axes.set_xlabel("evaluation")
    axes.set_ylabel("calibration loss")
    _title_and_legend(axes, "SPDY search")
    axes.grid(alpha=0.3)
    return _png(figure)


def _allocation_png(layers: Sequence[Mapping], uniform_levels) -> bytes:
    names = [layer["name"] for layer in layers]
    figure = _figure(max(6.4, 0.28 * len(names) + 1.5), 4.2)
    axes = figure.add_subplot()
    positions = range(len(names))
    for want_nm, color, label in ((False, "tab:blue", "SPDY, unstructured"), (True, "tab:orange", "SPDY, N:M")):
        bars = [(x, level_sparsity(layer["level"])) for x, layer in enumerate(layers)
                if bool(parse_nm(layer["level"])) == want_nm]
        if bars:
            axes.bar(*zip(*bars), color=color, label=label)
    if uniform_levels:
        levels = [uniform_levels[name] for name in names] if isinstance(uniform_levels, Mapping) else uniform_levels
        axes.step(positions, [level_sparsity(level) for level in levels], where="mid",
                  color="black", linestyle="--", linewidth=1.2, label="uniform baseline")
    axes.set_xticks(list(positions), names, rotation=90, fontsize=7)
    axes.set_xlim(-0.6, len(names) - 0.4)
    axes.set_ylim(0, 1)
    axes.set_ylabel("sparsity")
    _title_and_legend(axes, "Per-layer sparsity (no bar = dense)")
    axes.grid(axis="y", alpha=0.3)
    return _png(figure)


def _number(value, spec: str = ".4g") -> str:
    return "n/a" if value is None else format(value, spec)


def _baseline_row(name: str, entry: Mapping, metrics: Sequence[str]) -> str:
    """One allocation's row: predicted speedup, calibration loss, then each held-out metric (the
    primary one, ``loss.heldout``, when the entry has no ``quality``: runs before it existed)."""
    loss, quality = entry["loss"], entry.get("quality") or {}
    values = [quality.get(metric) for metric in metrics] if quality else [loss["heldout"]] + [None] * (len(metrics) - 1)
    return (f"| {name} | {_number(entry['predicted_speedup'], '.3f')}x | {_number(loss['calibration'])} | "
            + " | ".join(_number(value) for value in values) + " |")


def _quality_line(result: Mapping) -> str:
    quality = result.get("quality") or {}
    return "- Held-out quality: " + ", ".join(f"{METRIC_NAMES.get(key, key)} {_number(value)}" for key, value in quality.items())


def _closed_loop_lines(loop: Mapping | None) -> list[str]:
    """The closed loop's rounds, one line each (none when it was not needed)."""
    if not loop or (not loop.get("rounds") and not loop.get("stopped") and not loop.get("relaxed")):
        return []
    lines = [f"- Closed loop round {entry['round']}: searched at {entry['search_target']:.3f}x, predicted "
             f"{entry['predicted']:.3f}x, measured {entry['measured']:.3f}x" for entry in loop.get("rounds", [])]
    relaxed = loop.get("relaxed")
    if relaxed and "measured" in relaxed:
        lines.append(f"- Closed loop spent the surplus: searched at {relaxed['search_target']:.3f}x, predicted "
                     f"{relaxed['predicted']:.3f}x, measured {relaxed['measured']:.3f}x: "
                     + ("kept" if relaxed["kept"] else "short of the target, the faster model kept"))
    if loop.get("stopped"):
        lines.append(f"- Closed loop stopped: {loop['stopped']}")
    lines.append(f"- Promise met (measured within the tolerance of the target): {'yes' if loop.get('promise_met') else '**no**'}")
    return lines


def write_report(run_dir: str | os.PathLike, result: Mapping, evaluations: Sequence[tuple],
                 environment: Mapping) -> Path:
    """``report.md`` plus ``loss_curve.png`` (``evaluations`` as ``(n, loss, best)``) and ``allocation.png``,
    where ``baselines["uniform"]["levels"]`` (a list in layer order, or name -> level) is the reference line."""
    layers, baselines, loss = result["layers"], result["baselines"], result["loss"]
    _write(run_dir, "loss_curve.png", _loss_curve_png(evaluations))
    _write(run_dir, "allocation.png", _allocation_png(layers, baselines.get("uniform", {}).get("levels")))
    heldout = result.get("heldout_metric", "held-out metric")
    metrics = list(result.get("quality") or {}) or ["heldout"]
    metric_titles = [METRIC_NAMES.get(metric, heldout) for metric in metrics]
    measured = result["measured_speedup"]
    total_time = result.get("budget") or sum(layer["time"] for layer in layers) or 1.0
    lines = [
        "# SPDY run report", "",
        f"- Target speedup: **{result['target_speedup']:.2f}x**",
        f"- Predicted speedup (timing table): **{result['predicted_speedup']:.2f}x**",
        f"- Measured speedup (end to end, the pruned model on its runtime `{result.get('runtime', 'eager')}`): "
        f"**{measured:.2f}x**" if measured is not None else "- Measured speedup: not measured yet (run `spdy verify`)",
        *_closed_loop_lines(result.get("closed_loop")),
        f"- Dense baseline: `{result['dense_baseline']}` (the fastest dense path measured; every speedup is relative to it)",
        f"- Calibration loss {_number(loss['calibration'])}, {heldout} {_number(loss['heldout'])}",
        *([_quality_line(result)] if result.get("quality") else []),
        f"- Seed {result['seed']}, {result['evaluations']} evaluations", "",
        "## Allocation", "", "| # | layer | level | time (ms) | share of budget |", "|---:|---|---:|---:|---:|",
        *(f"| {index} | `{layer['name']}` | {layer['level']} | {layer['time'] * 1e3:.3f} | "
          f"{layer['time'] / total_time:.1%} |" for index, layer in enumerate(layers, start=1)),
        "", "Share of budget: the layer's predicted time over the time budget of the layers "
        "(base / target - (base - prunable)), or over their summed time when no budget is recorded.", "",
        "## Baselines", "", f"| allocation | predicted speedup | calibration loss | {' | '.join(metric_titles)} |",
        "|---|---:|---:|" + "---:|" * len(metric_titles),
        _baseline_row("**SPDY**", result, metrics),
        *([_baseline_row("SPDY stitched from the database (as baselines)", {**result, "quality": result["stitched_quality"]}, metrics)]
          if result.get("stitched_quality") else []),
        *(_baseline_row(name, entry, metrics) for name, entry in baselines.items()),
        "", "## Search", "", "![calibration loss of every evaluation](loss_curve.png)", "",
        "## Per-layer sparsity", "", "![per-layer sparsity](allocation.png)", "",
        "## Environment", "", "```",
        *(f"{key}: {value if isinstance(value, str) else json.dumps(plain_json(value))}"
          for key, value in environment.items()),
        "```", "",
    ]
    return _write(run_dir, "report.md", "\n".join(lines))


BENCH_SECTION = "## Runtimes side by side (spdy bench)"


def write_bench(run_dir: str | os.PathLike, report: Mapping, table: str, png: bytes) -> None:
    """``spdy bench``'s products: bench.json, bench.md, bench.png, and its section of report.md
    (replacing an earlier one)."""
    write_json(Path(run_dir) / "bench.json", report)
    _write(run_dir, "bench.md", table)
    _write(run_dir, "bench.png", png)
    report_md = Path(run_dir) / "report.md"
    if report_md.is_file():
        text = report_md.read_text().split(f"\n{BENCH_SECTION}")[0].rstrip("\n")
        _write(run_dir, "report.md", f"{text}\n\n{BENCH_SECTION}\n\n{table}\n![runtimes](bench.png)\n")

