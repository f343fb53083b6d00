"""The run's intermediate products: their one reader and writer each.

    search.json         {"coefficients", "levels", "loss", "evaluations", "predicted_speedup"}
    baselines.json      {name: {"levels", "predicted_speedup", "loss": {"calibration", "heldout"}}
                         or {"error", "predicted_speedup": null, "loss": {...: null}}}
    final.safetensors   the final model's state dict (stitched, possibly after global AdaPrune); an int8
                        layer's scales as ``<layer>.weight_scale`` (``engine.runtime.int8``)

``timings.json`` belongs to ``engine.timing.table``, ``db/`` to ``engine.database.store``,
``result.json`` to ``engine.export.result`` and the take-away files to ``engine.export.files``.
A reader returns None when its product is missing or unreadable, so the stage is redone.
"""

from __future__ import annotations

import copy
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from engine.runtime.int8 import SCALE, mark_int8
from engine.export.result import ResultError, read_json_object, write_json

SEARCH = "search.json"
BASELINES = "baselines.json"
FINAL = "final.safetensors"
SEARCH_KEYS = ("coefficients", "levels", "loss", "evaluations", "predicted_speedup")


def _read(path: Path, keys: tuple[str, ...] = ()) -> dict | None:
    try:
        value = read_json_object(path)
    except ResultError:
        return None
    return value if all(key in value for key in keys) else None


def write_search(run_dir: Path, record: dict) -> None:
    write_json(run_dir / SEARCH, {key: record[key] for key in SEARCH_KEYS})


def read_search(run_dir: Path) -> dict | None:
    return _read(run_dir / SEARCH, SEARCH_KEYS)


def write_baselines(run_dir: Path, records: dict) -> None:
    write_json(run_dir / BASELINES, records)


def read_baselines(run_dir: Path) -> dict | None:
    return _read(run_dir / BASELINES)


def write_final(run_dir: Path, model: nn.Module) -> None:
    state = {name: tensor.detach().contiguous().clone() for name, tensor in model.state_dict().items()}
    save_file(state, str(run_dir / FINAL))


def has_final(run_dir: Path) -> bool:
    return (run_dir / FINAL).exists()


def load_final(run_dir: Path, dense: nn.Module) -> nn.Module:
    """A copy of ``dense`` with the final weights loaded, in eval mode; a layer stored with its
    ``weight_scale`` is marked int8 again (``engine.runtime.int8.mark_int8``)."""
    model = copy.deepcopy(dense)
    state = load_file(str(run_dir / FINAL))
    for key in [key for key in state if key.endswith("." + SCALE)]:
        mark_int8(model.get_submodule(key[: -len(SCALE) - 1]), state.pop(key))
    model.load_state_dict(state, strict=False)
    return model.eval()
