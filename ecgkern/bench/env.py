"""The environment a benchmark ran in, stored with every result file."""
from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..timing import Stopwatch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The CPU features that decide which GEMM path runs (float32 FMA, AVX512-BF16 dot products, AMX).
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16")


def cpu_isa() -> dict[str, bool] | None:
    """Each of ``ISA_FLAGS``: whether this CPU has it (from /proc/cpuinfo; None where unreadable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return {flag: flag in present for flag in ISA_FLAGS}
    except OSError:
        pass
    return None


# Variables that cap the vector ISA of ATen (so of the cpp kernels' build), oneDNN and MKL: with
# them an AVX-512 machine measures what an AVX2 one would run.
ISA_CAP_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def isa_caps() -> dict[str, str]:
    """The ``ISA_CAP_VARIABLES`` set in this process's environment."""
    return {name: os.environ[name] for name in ISA_CAP_VARIABLES if name in os.environ}


def git_commit() -> str | None:
    """The ecgkern checkout's commit, with ``+dirty`` when it has uncommitted changes (result
    files that benchmark runs write into the checkout don't count: they are not the code)."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)benchmarks/results"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - optional packages may be absent or broken
        return None


def backend_load_times(devices) -> dict:
    """Seconds each backend took to load here: import, plus its JIT build when not cached yet.

    Called first thing in a run, so it is the process's first contact with each backend.
    """
    from ..backends import BACKEND_NAMES, BackendUnavailableError, get_backend

    times = {}
    for name in BACKEND_NAMES:
        elapsed = Stopwatch()
        for device in devices:
            try:
                get_backend(name, torch.device(device), torch.float32)
            except BackendUnavailableError:
                pass
        times[name] = elapsed.seconds
    return times


def environment(devices=("cpu",)) -> dict:
    import ecgkern

    load_s = backend_load_times(devices)  # before anything else touches the backends
    env = {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_isa": cpu_isa(),
        "cpu_count": os.cpu_count(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "isa_caps": isa_caps(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "numpy": _version("numpy"),
        "cuda_runtime": torch.version.cuda,
        "mkldnn_enabled": bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled),
        "ecgkern": ecgkern.__version__,
        "ecgkern_commit": git_commit(),
        "backends": {name: s.reason for name, s in ecgkern.available_backends().items()},
        "backend_load_s": load_s,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if any(str(d).startswith("cuda") for d in devices) and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu_name=props.name, gpu_memory_bytes=props.total_memory,
                   gpu_capability=f"{props.major}.{props.minor}",
                   cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
    return env
