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
``ecgkern._build``), never at import of ecgkern nor by ``available_backends()``.
"""
from __future__ import annotations

import torch

from .. import _build
from .._build import find_nvcc
from . import _ops

NAME = "cuda"
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _device_reason(device_type: str | None) -> str | None:
    if device_type not in (None, "cuda"):
        return f"the cuda backend runs on CUDA devices only, not on {device_type}"
    return None


def unavailable_reason(device_type: str | None = None) -> str | None:
    """Cheapest check first: device type, CUDA torch, nvcc, a visible GPU, a failed build.
    Never builds: the extension is built for this GPU on first use."""
    reason = _device_reason(device_type)
    if reason is not None or _build.CUDA_EXTENSION.loaded:  # loaded: the rest held, and holds
        return reason
    if torch.version.cuda is None:
        return f"torch was built without CUDA (torch {torch.__version__})"
    if find_nvcc() is None:
        return "no nvcc found (install the CUDA toolkit, or set CUDA_HOME to it)"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return _build.CUDA_EXTENSION.failure() or _build.CUDA_EXTENSION.missing_tools()


def supports(device_type: str, dtype: torch.dtype) -> str | None:
    reason = _device_reason(device_type)
    if reason is not None:
        return reason
    if dtype not in DTYPES:
        return f"the cuda backend supports float32, float64, float16 and bfloat16, not {dtype}"
    return None


def recurrence(xg: torch.Tensor, w_hh: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor):
    return _ops.recurrence(xg, w_hh, h0, c0)


def prepare() -> None:
    """Build (or load from the cache) the extension for this GPU now; raises ``BackendUnavailableError``."""
    _build.CUDA_EXTENSION.ensure_loaded()
