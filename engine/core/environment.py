"""The machine and software a measurement was taken on.

Timing tables are only valid on the environment they were measured in, so every table carries
``describe_environment()`` and a cached table is reused only when ``fingerprint`` matches.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from pathlib import Path
from importlib import metadata

ISA_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile", "neon", "sve")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in ISA_FLAGS if flag in present]
    except OSError:
        pass
    return []


def gpu() -> dict:
    """GPU name and 2:4 kernel availability, without initialising CUDA when torch says there is none."""
    import torch

    if not torch.cuda.is_available():
        return {"gpu": "none"}
    major, minor = torch.cuda.get_device_capability()
    info = {"gpu": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}", "cuda": torch.version.cuda}
    try:
        info["cusparselt"] = str(torch.backends.cusparselt.version()) if torch.backends.cusparselt.is_available() else "unavailable"
    except AttributeError:
        info["cusparselt"] = "unknown"
    return info


def describe_environment() -> dict:
    import torch

    info = {
        "spdy-tui": _version("spdy-tui"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numba": _version("numba"),
        "numpy": _version("numpy"),
        "textual": _version("textual"),
        "transformers": _version("transformers"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "isa": " ".join(cpu_flags()),
        "torch_threads": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
    }
    for variable in THREAD_VARIABLES:
        if variable in os.environ:
            info[variable] = os.environ[variable]
    info.update(gpu())
    return info


def fingerprint(environment: dict, **extra) -> str:
    """A short hash of what makes a measurement valid: hardware, library versions and inputs."""
    keys = ("cpu", "isa", "torch", "numba", "numpy", "gpu", "cusparselt", "spdy-tui")
    payload = {key: environment.get(key) for key in keys} | extra
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_dir() -> Path:
    """Where this machine keeps what spdy-tui derives once and reuses (the digits model, the stdlib
    corpus): ``$SPDY_CACHE_DIR``, else ``~/.cache/spdy-tui``."""
    return Path(os.environ.get("SPDY_CACHE_DIR") or Path.home() / ".cache" / "spdy-tui")
