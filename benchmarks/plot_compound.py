"""The compound (int8 + fp32) trade-off against SPDY over fp32 choices only and ONNX Runtime int8.

    .venv/bin/python benchmarks/plot_compound.py --compound runs/minilm-int8-sweep --fp32 runs/minilm-sweep \\
        --png docs/img/minilm-compound-tradeoff.png

Reads two finished sweeps (``spdy sweep``) of the same model and machine: per target, SPDY's
measured speedup (its run's verify) and held-out cosine to dense; from every run's ``bench.json``
(``spdy bench``) the measured ONNX Runtime fp32 / int8 and uniform int8 points with their held-out
cosine.  Prints a markdown table and writes one PNG, speedup over the fastest dense path against
held-out cosine to the dense model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def spdy_points(sweep: Path) -> list[tuple[float, float, float, float]]:
    """(target, measured speedup, held-out cosine, neighbour recall@10) of every finished run."""
    points = []
    for result_path in sorted(sweep.glob("target-*/result.json")):
        result = json.loads(result_path.read_text())
        if result.get("measured_speedup") is None:
            continue
        quality = result.get("quality") or {}
        points.append((result["target_speedup"], result["measured_speedup"], quality.get("cosine"), quality.get("recall_at_10")))
    return sorted(points)


def bench_points(sweep: Path) -> dict[str, list[tuple[float, float, float]]]:
    """runtime -> [(speedup, cosine, recall@10)] from every run's bench.json (measured side by side there)."""
    rows: dict[str, list] = {}
    for bench_path in sorted(sweep.glob("target-*/bench.json")):
        for row in json.loads(bench_path.read_text())["rows"]:
            if row["runtime"] in ("onnxruntime-int8", "uniform-int8", "pruned"):
                rows.setdefault(row["runtime"], []).append((row["speedup"], row.get("cosine_mean"), row.get("recall_at_10")))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compound", type=Path, required=True)
    parser.add_argument("--fp32", type=Path, required=True)
    parser.add_argument("--png", type=Path, required=True)
    args = parser.parse_args()

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    compound, fp32 = spdy_points(args.compound), spdy_points(args.fp32)
    bench = bench_points(args.compound)
    print("| allocation | target | measured speedup | held-out cosine | recall@10 |")
    print("|---|---|---|---|---|")
    for label, points in (("SPDY int8 + fp32 (compound)", compound), ("SPDY fp32 only", fp32)):
        for target, measured, cosine, recall in points:
            print(f"| {label} | {target:g}x | {measured:.3f}x | {cosine:.4f} | {'-' if recall is None else f'{recall:.3f}'} |")
    for runtime, points in bench.items():
        for speedup, cosine, recall in points:
            print(f"| {runtime} (spdy bench) | - | {speedup:.3f}x | {cosine:.4f} | {'-' if recall is None else f'{recall:.3f}'} |")

    figure = Figure(figsize=(6.4, 4.2), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label, points, style in (("SPDY int8 + fp32 (measured)", compound, "-o"), ("SPDY fp32 only (measured)", fp32, "-s")):
        axes.plot([p[1] for p in points], [p[2] for p in points], style, label=label)
    markers = {"onnxruntime-int8": ("*", "ONNX Runtime int8 dynamic"), "uniform-int8": ("D", "uniform int8 (our runtime)")}
    for runtime, (marker, label) in markers.items():
        if runtime in bench:
            axes.plot([p[0] for p in bench[runtime]], [p[1] for p in bench[runtime]], marker, markersize=10, linestyle="none", label=label)
    axes.set_xlabel("speedup over the fastest dense path (measured)")
    axes.set_ylabel("held-out cosine to the dense embeddings")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower left")
    axes.set_title("MiniLM on 2 Zen 4 cores: compound vs fp32-only vs ONNX Runtime int8", loc="left", fontsize=9)
    args.png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.png, bbox_inches="tight")
    print(f"\nwrote {args.png}")


if __name__ == "__main__":
    main()
