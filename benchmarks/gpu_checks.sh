#!/usr/bin/env bash
# Everything of the cuda-2:4 backend that needs an NVIDIA GPU, in one command (docs/gpu.md):
#
#   bash benchmarks/gpu_checks.sh [OUT]          # OUT defaults to gpu-results/
#
# Steps, in this order (each writes OUT/<step>.txt; a failed step does not stop the next):
#   env      nvidia-smi, torch / CUDA / cuSPARSELt versions                        -> env.json
#   pytest   the CUDA tests (tests/test_cuda24.py, tests/test_cuda_graph.py; -m cuda)  -> pytest.xml
#   timings  `spdy timings profiles/minilm-gpu-24.toml`: MiniLM's measured table    -> timings/timings.json
#   obs      `spdy run` of that profile on the measured table at TARGET (OBS database, global AdaPrune)
#                                                                                   -> run-obs/
#   deploy   benchmarks/gpu_deploy_check.py run-obs: engine.deploy.load on the GPU -> deploy.json
#   bench16  benchmarks/bench_cuda24.py --dtype float16 --graphs: per shape, MiniLM end to end -> bench-float16/
#   bench-bf16  the same per shape in bfloat16                                      -> bench-bfloat16/
#   eager16  the float16 shapes again without CUDA graphs (launch and plan set-up included) -> bench-float16-eager/
#   little   the obs run with the little-data pipeline (database.method = "adaprune") -> run-little/
#
# TARGET is 1 + 0.9 (S_max - 1), where S_max = base / (base - prunable + sum_l min_c t[l][c]) is the
# largest speedup the measured table allows (every layer at its faster choice): close to the best
# reachable, with room for the search to choose.  GPU_CHECKS_TARGET overrides it.
#
# Environment:
#   PYTHON                 the interpreter (default .venv/bin/python; else python3, e.g. an image's
#                          own PyTorch with CUDA on a machine without a package index)
#   GPU_CHECKS_STEPS       only these steps, in this order (e.g. "env pytest bench16")
#   GPU_CHECKS_SECONDS     no step starts after this many seconds, and a step is cut at what is left
#                          (default: no limit)
# The exit status is 1 if any step failed or was cut.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu-results}"
mkdir -p "$OUT"
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python
    elif python3 -c "import torch" 2>/dev/null; then PYTHON=python3
    else make setup && PYTHON=.venv/bin/python; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
SPDY=("$PYTHON" -m spdy_tui.cli)
PROFILE=profiles/minilm-gpu-24.toml
STEPS="${GPU_CHECKS_STEPS:-env pytest timings obs deploy bench16 bench-bf16 little eager16}"
LIMIT="${GPU_CHECKS_SECONDS:-0}"
START=$SECONDS
status=0

left() {  # seconds left before the limit (a large number without one)
    if [ "$LIMIT" -gt 0 ]; then echo $((LIMIT - (SECONDS - START))); else echo 86400; fi
}

step() {  # step NAME COMMAND...: run within the time left, tee to OUT/NAME.txt, remember a failure
    local name="$1"; shift
    local seconds; seconds=$(left)
    if [ "$seconds" -lt 10 ]; then
        echo "== $name: not started, the time limit is reached" | tee "$OUT/$name.txt" >&2
        status=1; return
    fi
    echo "== $name ($(date -u +%H:%M:%S), ${seconds}s left): $*" >&2
    local began=$SECONDS
    timeout --signal=INT --kill-after=15 "$seconds" "$@" > >(tee "$OUT/$name.txt") 2>&1
    local code=$?
    echo "== $name: exit $code after $((SECONDS - began))s" | tee -a "$OUT/$name.txt" >&2
    [ "$code" -eq 0 ] || status=1
}

target() {  # TARGET from the measured table (see the header)
    if [ -n "${GPU_CHECKS_TARGET:-}" ]; then echo "$GPU_CHECKS_TARGET"; return; fi
    "$PYTHON" - "$OUT/timings/timings.json" <<'EOF'
import math, sys
from engine.timing.table import load_table
table = load_table(sys.argv[1])
fastest = table.base - table.prunable + math.fsum(min(layer.seconds) for layer in table.layers)
most = table.base / fastest
print(f"{math.floor((1 + 0.9 * (most - 1)) * 1000) / 1000:.3f}")
print(f"largest speedup the table allows: {most:.4f}x", file=sys.stderr)
EOF
}

env_step() {
    nvidia-smi || true
    "$PYTHON" - <<'EOF'
import json, torch
from engine.core.environment import describe_environment
from engine.runtime.semi24 import DTYPES, Semi24Kernels
record = describe_environment()
record["torch_cuda"] = torch.version.cuda
record["cusparselt_version"] = torch.backends.cusparselt.version() if torch.backends.cusparselt.is_available() else None
record["libraries"] = {name: Semi24Kernels(DTYPES[name]).library_report() for name in ("float16", "bfloat16")}
print(json.dumps(record, indent=1, default=str))
EOF
}

export -f env_step
export PYTHON
for name in $STEPS; do
    case "$name" in
        env) step env bash -c env_step; sed -n '/^{/,/^}/p' "$OUT/env.txt" > "$OUT/env.json" ;;
        pytest) step pytest "$PYTHON" -m pytest -m cuda -ra -v -p no:cacheprovider tests/test_cuda24.py tests/test_cuda_graph.py --junitxml "$OUT/pytest.xml" ;;
        timings) step timings "${SPDY[@]}" timings "$PROFILE" --out "$OUT/timings" --set search.target=1.0 ;;
        obs) step obs "${SPDY[@]}" run "$PROFILE" --out "$OUT/run-obs" --set "hardware.timings=$OUT/timings/timings.json" \
                 --set "search.target=$(target)" ;;
        deploy) step deploy "$PYTHON" benchmarks/gpu_deploy_check.py "$OUT/run-obs" --json "$OUT/deploy.json" ;;
        bench16) step bench16 "$PYTHON" benchmarks/bench_cuda24.py --dtype float16 --graphs --out "$OUT/bench-float16" ;;
        bench-bf16) step bench-bf16 "$PYTHON" benchmarks/bench_cuda24.py --dtype bfloat16 --graphs --no-e2e --out "$OUT/bench-bfloat16" ;;
        eager16) step eager16 "$PYTHON" benchmarks/bench_cuda24.py --dtype float16 --no-e2e --out "$OUT/bench-float16-eager" ;;
        little) step little "${SPDY[@]}" run "$PROFILE" --out "$OUT/run-little" --set "hardware.timings=$OUT/timings/timings.json" \
                    --set "search.target=$(target)" --set database.method=adaprune ;;
        *) echo "unknown step $name (env pytest timings obs deploy bench16 bench-bf16 eager16 little)" >&2; status=1 ;;
    esac
done
echo "results in $OUT (status $status, $((SECONDS - START))s)" >&2
exit $status
