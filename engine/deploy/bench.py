"""``spdy bench RUN_DIR``: the deployable model against every dense path a user has, side by side.

Each runtime lives in its own worker process (thread pools of different runtimes in one process
disturb each other: field notes), built one after the other, then timed in interleaved rounds:
in every round each worker in turn (rotated order) runs ``warmup`` untimed and ``calls`` timed
forward passes on the run's timing batch while the others wait.  Per runtime: the median and the
interquartile range of the per-call seconds, the speedup over the fastest dense path, and the
held-out quality (cosine of the outputs to the dense model's: the mean, the 10th percentile; neighbour recall@10).

    pruned            the run's model on its runtime (engine.deploy.load; with ``weights``, a fine-tuning's)
    pruned-eager      the same weights on our kernels in eager PyTorch (when the run is compiled)
    uniform-int8      every layer at dense int8 from the run's database, on the run's runtime (grid.int8)
    torch, onednn     the dense model eager (MKL; oneDNN pre-packed Linears)
    compiled          the dense model under torch.compile (inductor, frozen weights)
    onnxruntime       the dense model in ONNX Runtime fp32          (encoders)
    onnxruntime-int8  ONNX Runtime dynamic int8, per-channel weights (encoders; a reference point)
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from engine.model.losses import heldout_metrics

DENSE = ("torch", "onednn", "compiled", "onnxruntime")
REFERENCE_POINTS = ("onnxruntime-int8",)


def runtimes_for(ctx, result: dict) -> list[str]:
    """The runtimes ``spdy bench`` compares for a run."""
    names = ["pruned"] + (["pruned-eager"] if result.get("runtime") == "compiled" else [])
    if ctx.profile.grid.int8:
        names.append("uniform-int8")
    names += ["torch", "onednn", "compiled"]
    from engine.runtime.paths import onnx_exportable

    if onnx_exportable(ctx.loaded.model, ctx.timing_inputs()) is None:
        names += ["onnxruntime", "onnxruntime-int8"]
    return names


def _build(ctx, name: str, workdir: Path, weights: str | None = None):
    """(a callable running the timing batch, a callable computing outputs for any inputs)."""
    from engine.deploy import allocation_model, load
    from engine.timing.calibrate import DENSE_INT8
    from engine.runtime.execution import forward
    from engine.runtime.paths import dense_path

    loaded, inputs = ctx.loaded, ctx.timing_inputs()
    if name in ("pruned", "pruned-eager", "uniform-int8"):
        if name == "uniform-int8":
            model = allocation_model(ctx.run_dir, {layer: DENSE_INT8 for layer in loaded.layer_names})
        else:
            model = load(ctx.run_dir, "eager" if name == "pruned-eager" else None, weights)
        return (lambda: forward(loaded, model, inputs)), (lambda x: forward(loaded, model, x))
    path = dense_path(name, loaded.model, loaded.layer_names, inputs, loaded.run_model, ctx.profile.hardware.threads, workdir)
    return (lambda: path(inputs)), path


def _worker(connection, run_dir: str, name: str, workdir: str, weights: str | None) -> None:  # pragma: no cover - child process
    try:
        from engine.run.context import RunContext
        from engine.runtime.execution import set_threads

        ctx = RunContext.from_dir(run_dir)
        set_threads(ctx.profile.hardware.threads)
        started = time.perf_counter()
        run, outputs = _build(ctx, name, Path(workdir), weights)
        run()
        built = time.perf_counter() - started
        with torch.no_grad():
            heldout = [np.asarray(outputs(batch.inputs), dtype=np.float32) for batch in ctx.data.heldout]
        connection.send(("ready", (built, heldout)))
    except BaseException:
        connection.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            request = connection.recv()
        except EOFError:
            return
        if request is None:
            return
        warmup, calls = request
        with torch.no_grad():
            for _ in range(warmup):
                run()
            samples = []
            for _ in range(calls):
                started = time.perf_counter()
                run()
                samples.append(time.perf_counter() - started)
        connection.send(("ok", samples))


class BenchError(RuntimeError):
    """A runtime could not be built or run; the message carries its traceback."""


def bench(ctx, result: dict, rounds: int = 10, warmup: int = 1, calls: int = 3, names: list[str] | None = None,
          on_progress=None, weights: str | Path | None = None) -> dict:
    """Time every runtime in its own process, interleaved; the table's rows and the setup.  ``weights``:
    a pruned.safetensors (a fine-tuning's) to time as "pruned" instead of the run's final model."""
    names = names or runtimes_for(ctx, result)
    if weights is not None:
        from engine.deploy import deployed_weights

        deployed_weights(ctx, result, weights)  # refused here, with the file named, not in a worker
        weights = str(weights)
    workdir = ctx.run_dir / "bench"
    workdir.mkdir(exist_ok=True)
    context = mp.get_context("spawn")
    workers, built, heldout = {}, {}, {}
    try:
        for name in names:  # built one after the other: compiles and exports do not overlap the others
            parent, child = context.Pipe()
            process = context.Process(target=_worker, args=(child, str(ctx.run_dir), name, str(workdir), weights), daemon=True)
            process.start()
            status, payload = parent.recv()
            if status == "error":
                raise BenchError(f"runtime {name}: could not be built:\n{payload}")
            workers[name] = (parent, process)
            built[name], heldout[name] = payload
            if on_progress is not None:
                on_progress(f"built {name} in {built[name]:.1f} s")
        samples = {name: [] for name in names}
        for round_index in range(rounds):
            order = names[round_index % len(names):] + names[: round_index % len(names)]
            for name in order:
                connection = workers[name][0]
                connection.send((warmup, calls))
                status, payload = connection.recv()
                if status == "error":
                    raise BenchError(f"runtime {name} failed:\n{payload}")
                samples[name].extend(payload)
            if on_progress is not None:
                on_progress(f"round {round_index + 1}/{rounds}")
    finally:
        for connection, process in workers.values():
            try:
                connection.send(None)
            except (BrokenPipeError, OSError):
                pass
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
    return {**summarise(ctx, names, samples, heldout, built, rounds, warmup, calls), "weights": weights}


def summarise(ctx, names, samples, heldout, built, rounds, warmup, calls) -> dict:
    medians = {name: statistics.median(values) for name, values in samples.items()}
    dense = [name for name in names if name in DENSE]
    fastest = min(dense, key=lambda name: medians[name])
    rows = []
    for name in names:
        q1, _, q3 = np.quantile(samples[name], [0.25, 0.5, 0.75])
        row = {"runtime": name, "ms": medians[name] * 1e3, "iqr_ms": [q1 * 1e3, q3 * 1e3],
               "speedup": medians[fastest] / medians[name], "build_seconds": built[name]}
        if heldout[name] and heldout["torch"]:
            outputs, dense = (torch.from_numpy(np.concatenate(heldout[key])) for key in (name, "torch"))
            closeness = heldout_metrics("encoder", outputs, dense)  # cosine of any output; recall for encoders
            row["cosine_mean"], row["cosine_p10"] = closeness["cosine"], closeness["cosine_p10"]
            if ctx.loaded.task == "encoder":
                row["recall_at_10"] = closeness["recall_at_10"]
            else:
                row["agreement"] = heldout_metrics(ctx.loaded.task, outputs, dense)["agreement"]
        rows.append(row)
    return {"rows": rows, "baseline": fastest, "rounds": rounds, "warmup": warmup, "calls": calls,
            "threads": ctx.profile.hardware.threads, "batch": ctx.profile.hardware.batch_size,
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def markdown(report: dict, environment: dict) -> str:
    """The bench table, with the baseline and the machine named."""
    lines = [
        f"Measured {report['when']} on {environment.get('cpu', '?')} ({environment.get('isa', '?')}), "
        f"{report['threads']} threads, batch {report['batch']}; each runtime in its own process, "
        f"{report['rounds']} interleaved rounds x {report['calls']} calls. Speedup over the fastest dense path: "
        f"**{report['baseline']}**." + (f" pruned: the weights of {report['weights']}." if report.get("weights") else ""),
        "",
        "| runtime | ms (median) | IQR ms | speedup | held-out cosine to dense (mean / p10) | neighbour recall@10 |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        cosine = f"{row['cosine_mean']:.4f} / {row['cosine_p10']:.4f}" if "cosine_mean" in row else "-"
        recall = f"{row['recall_at_10']:.3f}" if "recall_at_10" in row else "-"
        lines.append(f"| {row['runtime']} | {row['ms']:.1f} | {row['iqr_ms'][0]:.1f}-{row['iqr_ms'][1]:.1f} | "
                     f"{row['speedup']:.3f}x | {cosine} | {recall} |")
    return "\n".join(lines) + "\n"


def png(report: dict) -> bytes:
    """Bars of median ms per runtime (IQR whiskers), the baseline marked."""
    import io

    from matplotlib.figure import Figure

    rows = report["rows"]
    figure = Figure(figsize=(7, 0.45 * len(rows) + 1.2))
    axes = figure.add_subplot()
    labels = [row["runtime"] for row in rows][::-1]
    ms = [row["ms"] for row in rows][::-1]
    errors = np.array([[row["ms"] - row["iqr_ms"][0], row["iqr_ms"][1] - row["ms"]] for row in rows][::-1]).T
    colours = ["tab:green" if label.startswith("pruned") else "tab:blue" if label == "uniform-int8" else "tab:gray"
               for label in labels]
    axes.barh(labels, ms, xerr=errors, color=colours)
    for y, row in enumerate(rows[::-1]):
        axes.text(row["ms"], y, f" {row['speedup']:.2f}x", va="center", fontsize=8)
    axes.set_xlabel(f"ms per batch (median, IQR); speedup over {report['baseline']}")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()
