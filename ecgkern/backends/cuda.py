"""The ``cuda`` backend: hand-written CUDA forward and backward of the recurrence.

Sources: ``csrc/lstm_cuda_kernels.cu`` (kernels, no torch headers) and ``csrc/lstm_cuda.cpp``
(thin binding registering the CUDA kernels of the ``ecgkern::lstm_recurrence`` ops of
``_ops``). Two strategies, chosen per call by hidden size:

* hidden <= 64: persistent kernels, one launch for all steps, one block per batch row,
  W_hh in registers (the ECG5000 case);
* larger: per step the recurrent GEMM through ATen/cuBLAS, then one fused pointwise kernel.

``ECGKERN_CUDA_STRATEGY=fused|persistent|auto`` overrides the choice (for benchmarks).
Storage float32, float64, float16 or bfloat16; arithmetic in float32 (float64 for float64).

The extension is JIT-built on first use for this GPU's own architecture (see
``ecgkern._build``), never at import of ecgkern.
"""
from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import torch

from . import _ops

NAME = "cuda"
EXTENSION = "ecgkern_cuda"
SOURCES = ("lstm_cuda.cpp", "lstm_cuda_kernels.cu")
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# Line info lets compute-sanitizer name source lines; it does not change the generated code.
# No fast-math, on purpose.
CUDA_CFLAGS = ("-lineinfo",)

_lock = threading.Lock()
_state: dict = {}  # "reason": None once built and loaded, else the build error (tried once)


def find_nvcc() -> str | None:
    """The nvcc that torch's extension builder will use: $CUDA_HOME (or $CUDA_PATH), then PATH,
    then /usr/local/cuda."""
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(variable)
        if root:
            candidate = Path(root) / "bin" / "nvcc"
            return str(candidate) if candidate.is_file() else None
    found = shutil.which("nvcc")
    if found:
        return found
    candidate = Path("/usr/local/cuda/bin/nvcc")
    return str(candidate) if candidate.is_file() else None


def arch_flags(arch_list: str) -> list[str]:
    """nvcc -gencode flags for a TORCH_CUDA_ARCH_LIST-style string such as "8.0;9.0+PTX".

    Passed explicitly (torch then adds none of its own), so the architecture is part of the
    build cache key.
    """
    flags = []
    for item in arch_list.replace(",", ";").replace(" ", ";").split(";"):
        if not item:
            continue
        ptx = item.endswith("+PTX")
        number = item.removesuffix("+PTX").replace(".", "")
        if not number.isdigit():
            raise ValueError(f"cannot read CUDA architecture {item!r} in {arch_list!r}; expected e.g. '8.0;9.0'")
        flags.append(f"-gencode=arch=compute_{number},code=sm_{number}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{number},code=compute_{number}")
    if not flags:
        raise ValueError(f"no CUDA architecture in {arch_list!r}")
    return flags


def _device_arch_list() -> str:
    """$TORCH_CUDA_ARCH_LIST when set, else the current GPU's compute capability."""
    explicit = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if explicit:
        return explicit
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


def build_extension(arch_list: str | None = None) -> None:
    """Build (once, cached) and load the extension; raises ``ExtensionBuildError``.

    ``arch_list`` defaults to this GPU's capability; CI passes "8.0;9.0" to build without a GPU.
    """
    from .. import _build  # lazily: importing ecgkern never builds or imports the builder

    flags = [*CUDA_CFLAGS, *arch_flags(arch_list or _device_arch_list())]
    _build.load_extension(EXTENSION, [_build.csrc_dir() / s for s in SOURCES], extra_cuda_cflags=flags, with_cuda=True)


def _load() -> str | None:
    """Build/load the extension once per process; the reason it cannot run, or None."""
    if "reason" not in _state:
        with _lock:
            if "reason" not in _state:
                from .._build import ExtensionBuildError

                try:
                    build_extension()
                    _state["reason"] = None
                except ExtensionBuildError as exc:
                    _state["reason"] = str(exc)
    return _state["reason"]


def _device_reason(device_type: str | None) -> str | None:
    if device_type not in (None, "cuda"):
        return f"the cuda backend runs on CUDA devices only, not on {device_type}"
    return None


def unavailable_reason(device_type: str | None = None) -> str | None:
    """Cheapest check first: device type, CUDA torch, nvcc, a visible GPU; then the build."""
    reason = _device_reason(device_type)
    if reason is not None or _state.get("reason", "") is None:  # loaded: the rest held, and holds
        return reason
    if torch.version.cuda is None:
        return f"torch was built without CUDA (torch {torch.__version__})"
    if find_nvcc() is None:
        return "no nvcc found (install the CUDA toolkit, or set CUDA_HOME to it)"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return _load()


def supports(device_type: str, dtype: torch.dtype) -> str | None:
    reason = _device_reason(device_type)
    if reason is not None:
        return reason
    if dtype not in DTYPES:
        return f"the cuda backend supports float32, float64, float16 and bfloat16, not {dtype}"
    return None


def recurrence(xg: torch.Tensor, w_hh: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor):
    reason = unavailable_reason("cuda")
    if reason is not None:
        from . import BackendUnavailableError

        raise BackendUnavailableError(f"LSTM backend 'cuda' cannot run: {reason}")
    return _ops.recurrence(xg, w_hh, h0, c0)
