"""Timing tables: seconds per (layer, level), plus the dense end-to-end and prunable times.

A table answers the question the DP needs: if every layer l runs at level i_l, how long does
the model take?  Under the additive model (spdy-method.md §2.1)

    predicted_time = base - prunable + sum_l seconds[l][i_l],

where ``base`` is the dense end-to-end time on the runtime that will run the pruned model and
``prunable`` the dense time of the listed layers (so ``base - prunable`` is the fixed overhead:
attention, norms, adds, ...).  Speedups are against the *reference*: the fastest dense path a
user could run instead (``dense_baseline`` names it; ``reference_seconds`` is its time, ``base``
when not recorded, e.g. ONNX Runtime when it beats compiled torch):

    speedup = reference_seconds / predicted_time.

Two formats are read and written:

* the original SPDY text format (``base`` / ``prunable`` headers, then per layer a name line and
  ``<seconds> <level>`` lines).  Quirks of the shipped tables are handled: layers without entries
  are dropped, a layer may lack a level, and a level listed twice keeps its last value, as the
  original loader's dict did (each case is recorded in ``TimingTable.warnings``);
* a versioned JSON format of ours that also carries units, the backend, the dense baseline,
  the measuring environment and, per layer, an optional ``note`` (e.g. why a layer only has its
  dense level: the GPU 2:4 kernels cannot run its shape).  The note is an optional key of a
  layer's entry, so tables without notes read and write exactly as before.

A table read from a file must also add up (``check_table``), or no prediction made from it means
anything (a truncated table promised 17-25x where the full one allows 4.3x):

* the dense times of the listed layers add up to ``prunable`` within ``PRUNABLE_TOLERANCE`` (1%,
  relative).  Our JSON tables hold the exact sum; the shipped SPDY tables agree to 0.001% except
  the YOLO ones (yolov5s 0.06%, yolov5m 0.8%: their headers were measured apart from the layers);
* ``prunable`` is not above ``base`` (a negative fixed overhead).  Our profilers measure both and
  may find the layers' sum a little above the whole model on a tiny, noisy model (the CPU profiler
  records it in the table's warnings, ``NOISE_WARNING``): a JSON table measured by one of them
  (backend "cpu" or "cuda-2:4") or carrying that warning still loads, with the warning.  A SPDY
  text table, or any other JSON table, is refused;
* every allocation takes a positive time (``base - prunable + the fastest levels > 0``), whatever
  the format: otherwise speedups come out negative.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.core import atomic
from engine.core.grid import level_sparsity, sort_levels

JSON_FORMAT = "spdy-tui/timings"
JSON_VERSION = 1
PRUNABLE_TOLERANCE = 0.01  # |sum of dense layer times - prunable| <= this x prunable
# What engine/timing/cpu.py writes in a table's warnings when the dense layers' times add up to
# more than the dense model measured end to end (noise on a tiny model): such a table may load.
NOISE_WARNING = "more than the dense model end to end"
MEASURING_BACKENDS = ("cpu", "cuda-2:4")  # engine.backends: tables they measure may show that noise


class TableError(ValueError):
    """A timing table could not be read; the message names the file and line."""


@dataclass(frozen=True)
class LayerTimes:
    """Measured seconds of one layer at each of its levels, ascending in sparsity."""

    name: str
    levels: tuple[str, ...]
    seconds: tuple[float, ...]
    note: str = ""  # free text: which kernel was timed, or why a level is missing

    @property
    def dense_seconds(self) -> float:
        return self.seconds[self.levels.index("0.0000")] if "0.0000" in self.levels else self.seconds[0]

    def seconds_at(self, level: str) -> float:
        return self.seconds[self.levels.index(level)]


@dataclass
class TimingTable:
    base: float
    prunable: float
    layers: list[LayerTimes]
    unit: str = "s"
    backend: str = ""
    dense_baseline: str = ""
    environment: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    baseline_seconds: float | None = None  # the reference's time when it is not ``base``

    # ------------------------------------------------------------------ queries
    @property
    def reference_seconds(self) -> float:
        """The time speedups are measured against: the fastest dense path a user could run."""
        return self.base if self.baseline_seconds is None else self.baseline_seconds

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def overhead(self) -> float:
        """Time outside the listed layers: base - prunable."""
        return self.base - self.prunable

    def layer(self, name: str) -> LayerTimes:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def subset(self, names: list[str]) -> TimingTable:
        """The table restricted to ``names`` (in that order); dropped layers' dense time joins the overhead."""
        kept = [self.layer(name) for name in names]
        dropped = math.fsum(layer.dense_seconds for layer in self.layers if layer.name not in set(names))
        return TimingTable(
            self.base, self.prunable - dropped, kept, self.unit, self.backend, self.dense_baseline,
            dict(self.environment), list(self.warnings), self.baseline_seconds,
        )

    def matrix(self) -> tuple[np.ndarray, list[list[str]]]:
        """Seconds as a (layers, max levels) float array padded with inf, and the level labels."""
        width = max(len(layer.levels) for layer in self.layers)
        times = np.full((len(self.layers), width), np.inf)
        for row, layer in enumerate(self.layers):
            times[row, : len(layer.seconds)] = layer.seconds
        return times, [list(layer.levels) for layer in self.layers]

    def predicted_time(self, levels: list[str]) -> float:
        """base - prunable + sum of each layer's seconds at its chosen level (exactly summed)."""
        chosen = [layer.seconds_at(level) for layer, level in zip(self.layers, levels, strict=True)]
        return self.overhead + math.fsum(chosen)

    def max_speedup(self) -> float:
        """Speedup if every layer ran at its fastest level."""
        return self.reference_seconds / (self.overhead + math.fsum(min(layer.seconds) for layer in self.layers))

    # ------------------------------------------------------------------ JSON
    def to_json(self) -> dict:
        return {
            "format": JSON_FORMAT,
            "version": JSON_VERSION,
            "unit": self.unit,
            "base": self.base,
            "prunable": self.prunable,
            "backend": self.backend,
            "dense_baseline": self.dense_baseline,
            **({"baseline_seconds": self.baseline_seconds} if self.baseline_seconds is not None else {}),
            "environment": self.environment,
            "warnings": self.warnings,
            "layers": [
                {"name": layer.name, "levels": dict(zip(layer.levels, layer.seconds))}
                | ({"note": layer.note} if layer.note else {})
                for layer in self.layers
            ],
        }

    @classmethod
    def from_json(cls, data: dict, source: str = "<json>") -> TimingTable:
        if data.get("format") != JSON_FORMAT:
            raise TableError(f"{source}: not a spdy-tui timing table (format is {data.get('format')!r})")
        if data.get("version") != JSON_VERSION:
            raise TableError(f"{source}: unsupported timing table version {data.get('version')!r}")
        try:
            layers = [
                _layer(entry["name"], dict(entry["levels"]), source, str(entry.get("note", ""))) for entry in data["layers"]
            ]
            table = cls(
                base=float(data["base"]),
                prunable=float(data["prunable"]),
                layers=layers,
                unit=data.get("unit", "s"),
                backend=data.get("backend", ""),
                dense_baseline=data.get("dense_baseline", ""),
                environment=dict(data.get("environment", {})),
                warnings=list(data.get("warnings", [])),
                baseline_seconds=None if data.get("baseline_seconds") is None else float(data["baseline_seconds"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, TableError):
                raise
            raise TableError(f"{source}: malformed timing table: {exc}") from None
        check_table(table, source, "json")
        return table

    # ------------------------------------------------------------------ SPDY text
    def to_spdy_txt(self) -> str:
        lines = ["base", repr(self.base), "prunable", repr(self.prunable)]
        for layer in self.layers:
            lines.append(layer.name)
            lines += [f"{seconds!r} {level}" for level, seconds in zip(layer.levels, layer.seconds)]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_spdy_txt(cls, text: str, source: str = "<text>") -> TimingTable:
        header: dict[str, float] = {}
        entries: dict[str, dict[str, float]] = {}
        warnings: list[str] = []
        expecting: str | None = None  # "base" or "prunable" once its header line was read
        current: str | None = None
        name_lines: dict[str, int] = {}
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line:
                continue
            where = f"{source}:{number}"
            if expecting is not None:
                header[expecting] = _float(line, where, f"the {expecting} time")
                expecting = None
            elif line in ("base", "prunable") and current is None:
                expecting = line
            elif " " in line or "\t" in line:
                if current is None:
                    raise TableError(f"{where}: entry {line!r} before any layer name")
                parts = line.split()
                if len(parts) != 2:
                    raise TableError(f"{where}: expected '<seconds> <level>', got {line!r}")
                seconds, level = _float(parts[0], where, "seconds"), parts[1]
                try:
                    level_sparsity(level)
                except ValueError as exc:
                    raise TableError(f"{where}: {exc}") from None
                if level in entries[current]:
                    warnings.append(f"layer {current}: level {level} listed twice; the later value is kept (line {number})")
                entries[current][level] = seconds
            else:
                current = line
                if current in entries:
                    raise TableError(f"{where}: layer {current!r} listed twice")
                entries[current] = {}
                name_lines[current] = number
        layers = []
        for name, levels in entries.items():
            if not levels:
                if _is_number(name):  # a number where a layer name or an entry belongs: a damaged table
                    raise TableError(
                        f"{source}:{name_lines[name]}: expected a layer name or a '<seconds> <level>' entry, got the bare "
                        f"number {name!r} (a time without its level, or a header value without its 'base' or 'prunable' line)"
                    )
                warnings.append(f"layer {name}: no entries; dropped")
                continue
            layers.append(_layer(name, levels, source))
        for key in ("base", "prunable"):
            if key not in header:
                raise TableError(f"{source}: missing the '{key}' header")
        table = cls(base=header["base"], prunable=header["prunable"], layers=layers, warnings=warnings)
        check_table(table, source, "spdy-txt")
        return table


def _float(text: str, where: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TableError(f"{where}: expected {what} as a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise TableError(f"{where}: {what} must be a finite non-negative number, got {text!r}")
    return value


def _layer(name: str, levels: dict[str, float], source: str, note: str = "") -> LayerTimes:
    if not levels:
        raise TableError(f"{source}: layer {name!r} has no levels")
    for level, seconds in levels.items():
        try:
            level_sparsity(level)
        except ValueError as exc:
            raise TableError(f"{source}: layer {name!r}: {exc}") from None
        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0):
            raise TableError(f"{source}: layer {name!r} level {level}: bad seconds {seconds!r}")
    ordered = sort_levels(list(levels))
    return LayerTimes(name, tuple(ordered), tuple(float(levels[level]) for level in ordered), note)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_table(table: TimingTable, source: str, fmt: str = "json") -> None:
    """Refuse a table that does not add up (module docstring); ``fmt`` is the format it was read
    from ("json" or "spdy-txt").  Raises TableError naming ``source``, what is wrong and what to do."""
    if not table.layers:
        raise TableError(f"{source}: the table lists no layer with timings")
    if table.base <= 0:
        raise TableError(f"{source}: base time must be positive, got {table.base}")
    dense_sum = math.fsum(layer.dense_seconds for layer in table.layers)
    if abs(dense_sum - table.prunable) > PRUNABLE_TOLERANCE * max(table.prunable, dense_sum):
        raise TableError(
            f"{source}: the dense times of its {len(table.layers)} layers add up to {dense_sum:.6g} s, but its "
            f"'prunable' header says {table.prunable:.6g} s ({_percent(dense_sum, table.prunable)}; at most "
            f"{PRUNABLE_TOLERANCE:.0%} is allowed): layers are missing from the table or the header is wrong. "
            "List every prunable layer with its dense (0.0000) time, or set 'prunable' to the sum"
        )
    recorded = any(NOISE_WARNING in warning for warning in table.warnings)
    measured = fmt == "json" and (recorded or table.backend in MEASURING_BACKENDS)
    if table.prunable > table.base and measured and not recorded:
        table.warnings.append(
            f"the dense layers' times add up to {table.prunable * 1e3:.3f} ms, {NOISE_WARNING} "
            f"({table.base * 1e3:.3f} ms): measurement noise; re-measure with more repeats"
        )
    if table.prunable > table.base and not measured:
        raise TableError(
            f"{source}: 'prunable' ({table.prunable:.6g} s) exceeds 'base' ({table.base:.6g} s): the listed layers "
            "cannot take longer than the whole model. Check the two headers, or re-measure the table "
            "(`spdy timings` with more hardware.repeats)"
        )
    fastest = table.overhead + math.fsum(min(layer.seconds) for layer in table.layers)
    if fastest <= 0:
        raise TableError(
            f"{source}: with every layer at its fastest level the model would take {fastest:.6g} s "
            f"(base {table.base:.6g} - prunable {table.prunable:.6g} + the fastest layer times): not a positive "
            "time. Re-measure the table (`spdy timings` with more hardware.repeats)"
        )


def _percent(value: float, reference: float) -> str:
    if reference <= 0:
        return "no prunable time"
    return f"{(value - reference) / reference:+.2%}"


def load_table(path: str | os.PathLike) -> TimingTable:
    """Read a timing table, JSON (ours) or the original SPDY text format, by content."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise TableError(f"{path}: no such timing table file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TableError(f"{path}: cannot read timing table: {exc}") from None
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TableError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
        return TimingTable.from_json(data, str(path))
    return TimingTable.from_spdy_txt(text, str(path))


def save_table(table: TimingTable, path: str | os.PathLike, fmt: str = "json") -> None:
    """Write a table atomically, as ``json`` (ours) or ``spdy-txt`` (the original format)."""
    path = Path(path)
    if fmt == "json":
        text = json.dumps(table.to_json(), indent=1) + "\n"
    elif fmt == "spdy-txt":
        text = table.to_spdy_txt()
    else:
        raise ValueError(f"unknown timing table format {fmt!r} (json or spdy-txt)")
    atomic.write_text(path, text)
