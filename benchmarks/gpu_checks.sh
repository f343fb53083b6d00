#!/usr/bin/env bash
# Everything of the cuda-2:4 backend that needs an NVIDIA GPU, in one command (docs/gpu.md):
#
#   bash benchmarks/gpu_checks.sh [OUT]          # OUT defaults to gpu-results/
#   GPU_CHECKS_FULL=1 bash benchmarks/gpu_checks.sh OUT   # also a whole `spdy run` of the GPU profile
#
# Writes into OUT: env.json (machine, torch, CUDA, cuSPARSELt), pytest-cuda.txt/.xml (the CUDA
# tests), pytest-cpu.txt (the GPU-related CPU tests), bench_cuda24.md/.json and
# minilm_timings.json (per-shape 2:4 speedups and MiniLM end to end), minilm-gpu-24/timings.json
# (the measured table that replaces tests/data/cuda24/minilm-synthetic.json), and with
# GPU_CHECKS_FULL=1 the run directory of `spdy run profiles/minilm-gpu-24.toml`.
# Every step runs even if an earlier one fails; the exit status is 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu-results}"
mkdir -p "$OUT"
[ -x .venv/bin/python ] || make setup
PY=.venv/bin/python
status=0
step() {  # step NAME COMMAND...: run, tee the output to OUT/NAME.txt, remember a failure
    local name="$1"; shift
    echo "== $name: $*" >&2
    if ! "$@" 2>&1 | tee "$OUT/$name.txt"; then
        echo "== $name FAILED" >&2
        status=1
    fi
}
.venv/bin/spdy env --json > "$OUT/env.json" 2>&1 || status=1
step pytest-cuda "$PY" -m pytest -m cuda -ra -v tests/test_cuda24.py --junitxml "$OUT/pytest-cuda.xml"
step pytest-cpu "$PY" -m pytest -q -ra tests/test_cuda24.py tests/test_spdy_24.py tests/test_nm_pipeline.py tests/test_table.py tests/test_measure.py tests/test_config.py
step bench "$PY" benchmarks/bench_cuda24.py --out "$OUT"
# exit status 3 here only means the profile's target is beyond what the measured table allows
step timings .venv/bin/spdy timings profiles/minilm-gpu-24.toml --out "$OUT/minilm-gpu-24"
if [ "${GPU_CHECKS_FULL:-0}" = "1" ]; then
    step run .venv/bin/spdy run profiles/minilm-gpu-24.toml --out "$OUT/minilm-gpu-24" --resume
fi
echo "results in $OUT (status $status)" >&2
exit $status
