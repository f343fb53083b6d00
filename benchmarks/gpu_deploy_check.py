"""A finished cuda-2:4 run's model as a user deploys it, on the GPU: `engine.deploy.load(RUN_DIR)`.

    python benchmarks/gpu_deploy_check.py RUN_DIR [--repeats 30] [--warmup 5] [--json FILE]

Checks, and exits 1 naming the first that fails:

* ``load`` puts a 2:4 kernel (``Semi24Linear``) in exactly the layers the run put at 2:4, each
  the kernel the profiler recorded (library and alg_id);
* its output on the run's timing batch equals the final weights run densely in the same dtype,
  ``max |y_deployed - y_dense-with-zeros| <= tol * max |y_dense-with-zeros|`` (verify's tolerance);
* ``sentence_transformer(RUN_DIR).encode`` returns finite embeddings, and their cosine to the
  deployed model's own pooled output is 1 up to rounding.

Then times the deployed model against the dense model (same dtype, cuBLAS; replayed from a CUDA
graph too when the run's runtime is "cuda-graph"), interleaved, with CUDA events
(``engine.core.measure`` with ``engine.timing.cuda_events``), and prints one markdown row: dense
ms, deployed ms (median ±relative IQR) and the speedup.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SENTENCES = [
    "The function reads the file and returns the number of lines.",
    "Sparse tensor cores multiply a 2:4 weight at twice the dense rate.",
    "A timing table holds every layer's time at every choice.",
    "Return the greatest common divisor of two integers.",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()

    import torch

    from engine.backends.cuda24 import TOLERANCE
    from engine.core.measure import time_interleaved
    from engine.deploy import load, sentence_transformer
    from engine.export.result import allocation, read_result
    from engine.run.context import RunContext
    from engine.runtime.cuda_graph import CudaGraphModule
    from engine.runtime.execution import forward
    from engine.runtime.semi24 import Semi24Linear
    from engine.timing.cuda24 import TWO_FOUR_LEVEL, inputs_on, on_device, torch_dtype
    from engine.timing.cuda_events import CudaEventTimer

    ctx = RunContext.from_dir(args.run_dir)
    result = read_result(args.run_dir)
    levels = allocation(result)
    recorded = ctx.table.environment.get("kernels", {})
    dtype, cuda = torch_dtype(ctx.profile.hardware.dtype), torch.device("cuda")

    deployed = load(args.run_dir)
    inner = deployed.model if isinstance(deployed, CudaGraphModule) else deployed
    kernels = {name: module for name, module in inner.named_modules() if isinstance(module, Semi24Linear)}
    expected = {name for name, level in levels.items() if level == TWO_FOUR_LEVEL}
    if set(kernels) != expected:
        print(f"FAIL: 2:4 kernels in {sorted(set(kernels) ^ expected)} differ from the run's allocation", file=sys.stderr)
        return 1
    for name, module in kernels.items():
        want = {"backend": recorded[name]["backend"], "alg_id": recorded[name]["alg_id"]}
        if module.info != want:
            print(f"FAIL: layer {name} runs {module.info}, the profiler recorded {want}", file=sys.stderr)
            return 1

    inputs = inputs_on(ctx.timing_inputs(), cuda, dtype)
    dense = on_device(ctx.loaded.model, cuda, dtype)
    with_zeros = on_device(ctx.final_model, cuda, dtype)
    got, reference = forward(ctx.loaded, deployed, inputs).float(), forward(ctx.loaded, with_zeros, inputs).float()
    difference = ((got - reference).abs().max() / reference.abs().max()).item()
    tolerance = TOLERANCE[dtype]
    if not difference <= tolerance:
        print(f"FAIL: deployed output differs from the dense-with-zeros model by {difference:.3g} (> {tolerance})", file=sys.stderr)
        return 1

    encoder = sentence_transformer(args.run_dir)
    embeddings = torch.as_tensor(encoder.encode(SENTENCES, convert_to_numpy=False, convert_to_tensor=True)).float()
    tokens = {key: value.to(cuda) for key, value in ctx.loaded.tokenizer(SENTENCES, padding=True, return_tensors="pt").items()}
    own = forward(ctx.loaded, deployed, tokens).float()
    agreement = torch.nn.functional.cosine_similarity(embeddings, own, dim=-1).min().item()
    if not (torch.isfinite(embeddings).all() and agreement > 0.999):
        print(f"FAIL: sentence_transformer embeddings disagree with the deployed model (min cosine {agreement:.4f})", file=sys.stderr)
        return 1

    if result.get("runtime") == "cuda-graph":  # the dense model as a user would run it beside the deployed one
        dense = CudaGraphModule(dense, inputs)
    with torch.no_grad():
        stats = time_interleaved(
            {"dense": lambda: forward(ctx.loaded, dense, inputs), "deployed": lambda: forward(ctx.loaded, deployed, inputs)},
            args.warmup, args.repeats, 0.1, timer=CudaEventTimer(1),
        )
    record = {
        "run_dir": str(args.run_dir), "gpu": torch.cuda.get_device_name(), "dtype": ctx.profile.hardware.dtype,
        "runtime": result.get("runtime"),
        "layers_at_24": len(kernels), "max_relative_difference": difference, "encode_min_cosine": agreement,
        "dense": stats["dense"].to_json(), "deployed": stats["deployed"].to_json(),
        "speedup": stats["dense"].median / stats["deployed"].median,
    }
    if args.json:
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    print("| run | runtime | layers at 2:4 | dense ms | deployed ms | speedup | max rel. difference |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.run_dir.name} | {record['runtime']} | {len(kernels)} | {stats['dense'].median * 1e3:.3f} ±{stats['dense'].spread:.0%} | "
          f"{stats['deployed'].median * 1e3:.3f} ±{stats['deployed'].spread:.0%} | {record['speedup']:.3f}x | {difference:.2g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
