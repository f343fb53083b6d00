"""``result.json``, the record of a finished run: its one reader and writer.

    {"target_speedup", "predicted_speedup", "measured_speedup" (null until verified),
     "dense_baseline", "layers": [{"name", "level", "time", ...}], "loss": {"calibration",
     "heldout"}, "heldout_metric", "baselines", "seed", "evaluations", "budget", "base_time",
     "predicted_time", "gap", "quality" (every held-out metric by name, engine.model.losses),
     with gap or sequential "stitched_quality" (the same metrics of the allocation stitched from
     the database, as the baselines are scored), and after verify "verify": {the verify event's fields}}

Written atomically and validated (required keys, each layer's name, level and time, the level a
grid label); non-finite numbers (an abandoned loss, no held-out set) are stored as null, since
JSON has no infinity.  ``spdy finetune`` keeps its own record in ``finetune/result.json``
(``engine.recovery.finetune``), read with ``read_json_object`` too.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

from engine.core.atomic import write_text
from engine.core.grid import level_sparsity

NAME = "result.json"
REQUIRED = ("target_speedup", "predicted_speedup", "measured_speedup", "dense_baseline",
            "layers", "loss", "baselines", "seed", "evaluations")


class ResultError(ValueError):
    """A result.json that is missing, not JSON, or not a result; the message names the file."""


def plain_json(value):
    """numpy scalars -> Python numbers, tuples -> lists, inf/nan -> None (JSON has no infinity)."""
    if isinstance(value, Mapping):
        return {str(key): plain_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(item) for item in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def finite(value) -> float | None:
    """A finite float as it is, anything else (inf, nan, None) as None: JSON has no infinity."""
    return value if isinstance(value, float) and math.isfinite(value) else None


def write_json(path: str | os.PathLike, value) -> Path:
    """Any JSON product, atomically, with non-finite numbers as null."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(plain_json(value), indent=1, allow_nan=False) + "\n")
    return path


def read_json_object(path: str | os.PathLike, what: str = "a JSON object") -> dict:
    """The JSON object in ``path``; ``ResultError`` naming the file if it is missing or not an object."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ResultError(f"{path}: not valid JSON ({error})") from None
    except OSError as error:
        raise ResultError(f"{path}: cannot be read ({error.strerror or error})") from None
    if not isinstance(value, dict):
        raise ResultError(f"{path}: expected {what}, found {type(value).__name__}")
    return value


def validate(result: Mapping, source: str = NAME) -> None:
    missing = [key for key in REQUIRED if key not in result]
    if missing:
        raise ResultError(f"{source}: lacks {', '.join(missing)}")
    if not isinstance(result["layers"], list):
        raise ResultError(f"{source}: 'layers' must be a list")
    for layer in result["layers"]:
        if not isinstance(layer, Mapping) or not {"name", "level", "time"} <= layer.keys():
            raise ResultError(f"{source}: layer {layer!r} needs name, level and time")
        try:
            level_sparsity(layer["level"])
        except (ValueError, TypeError):
            raise ResultError(f"{source}: layer {layer['name']!r} has level {layer['level']!r}, not a grid level") from None


def write_result(run_dir: str | os.PathLike, result: Mapping) -> Path:
    """Validate and write ``RUN_DIR/result.json``."""
    validate(result)
    return write_json(Path(run_dir) / NAME, result)


def read_result(run_dir: str | os.PathLike) -> dict:
    """``RUN_DIR/result.json``, validated; ``ResultError`` naming the file otherwise."""
    path = Path(run_dir) / NAME
    if not path.exists():
        raise ResultError(f"{path}: no result yet (the search has not finished)")
    result = read_json_object(path, "a run result")
    validate(result, str(path))
    return result


def has_result(run_dir: str | os.PathLike) -> bool:
    """A valid result.json is there."""
    try:
        read_result(run_dir)
    except ResultError:
        return False
    return True


def update_result(run_dir: str | os.PathLike, **fields) -> dict:
    """Read, set ``fields``, validate and write back; returns the new result."""
    result = read_result(run_dir)
    result.update(fields)
    write_result(run_dir, result)
    return result


def allocation(result: Mapping) -> dict[str, str]:
    """Layer name -> level of a result."""
    return {row["name"]: row["level"] for row in result["layers"]}
