"""Disk size and read time of a database stored dense (format 1) against the compact encoding.

    .venv/bin/python benchmarks/bench_database_storage.py RUN_DIR/db

Reads every level of every layer file of a database (either format), writes the same levels in
the other encoding to a temporary folder, and prints the total bytes of each and the median time
to read one pruned level back into a dense tensor (what the stitcher does on a cache miss), plus
a check that both give bit-identical weights.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.database import compact


def levels_of(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
        if any("/" in key for key in keys):
            labels = sorted({key.split("/")[0] for key in keys} | {key for key in keys if "/" not in key})
            return {label: compact.decode(handle, label) for label in labels}
        return {key: handle.get_tensor(key) for key in keys}


def read_seconds(path: Path, decode, labels: list[str]) -> float:
    samples = []
    for label in labels:
        started = time.perf_counter()
        with safe_open(str(path), framework="pt") as handle:
            decode(handle, label)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", type=Path)
    args = parser.parse_args()
    files = sorted(args.db.glob("*.safetensors"))
    dense_bytes = compact_bytes = 0
    dense_times, compact_times = [], []
    with tempfile.TemporaryDirectory() as folder:
        for path in files:
            levels = {label: compact.canonical(tensor) for label, tensor in levels_of(path).items()}
            dense_file, compact_file = Path(folder) / "dense.safetensors", Path(folder) / "compact.safetensors"
            save_file(levels, str(dense_file))
            save_file({k: v for label, w in levels.items() for k, v in compact.encode(label, w).items()}, str(compact_file))
            dense_bytes += dense_file.stat().st_size
            compact_bytes += compact_file.stat().st_size
            pruned = [label for label in levels if compact.is_compact(label)]
            dense_times.append(read_seconds(dense_file, lambda handle, label: handle.get_tensor(label), pruned))
            compact_times.append(read_seconds(compact_file, compact.decode, pruned))
            with safe_open(str(compact_file), framework="pt") as handle:
                for label in pruned:
                    assert torch.equal(compact.decode(handle, label).view(torch.int32), levels[label].view(torch.int32)), label
    print(f"{len(files)} layer files: dense {dense_bytes / 2**20:.1f} MiB, compact {compact_bytes / 2**20:.1f} MiB "
          f"({dense_bytes / compact_bytes:.2f}x smaller); median read of one pruned level: dense "
          f"{statistics.median(dense_times) * 1e3:.2f} ms, compact {statistics.median(compact_times) * 1e3:.2f} ms; "
          "bit-identical: yes")


if __name__ == "__main__":
    main()
