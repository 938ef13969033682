"""The ``cpp`` backend: hand-written C++ forward and backward of the recurrence on CPU.

The kernels (``csrc/lstm_cpu.cpp``) implement the ``ecgkern::lstm_recurrence`` ops defined in
``_ops``; the extension is JIT-built on first use (15-40 s on 2 cores, then cached, see
``ecgkern._build``), never at import of ecgkern.
"""
from __future__ import annotations

import threading

import torch

from .. import _build
from . import _ops

NAME = "cpp"
SOURCES = ("lstm_cpu.cpp",)
# -fopenmp: at::parallel_for is inline OpenMP, without the flag it silently runs on one thread.
# No -lgomp: the GOMP symbols resolve to the libgomp libtorch_cpu already loaded (one pool).
# -ffp-contract=off: no compiler-chosen FMAs, so every instantiation (training/inference
# forward) rounds identically; the GEMMs use explicit fmadd and lose nothing.
EXTRA_CFLAGS = ("-fopenmp", "-ffp-contract=off")

_lock = threading.Lock()
_state: dict = {}  # "reason": None once loaded, else the build error sentence (tried once)


# torch.compile runs this once while tracing and keeps the answer (it cannot trace the lock).
@torch.compiler.assume_constant_result
def _load() -> str | None:
    """Build/load the extension once per process; the reason it cannot run, or None."""
    if "reason" not in _state:
        with _lock:
            if "reason" not in _state:
                try:
                    _build.load_extension("ecgkern_cpu", [_build.csrc_dir() / s for s in SOURCES],
                                          extra_cflags=EXTRA_CFLAGS)
                    _state["reason"] = None
                except _build.ExtensionBuildError as exc:
                    _state["reason"] = str(exc)
    return _state["reason"]


def unavailable_reason(device_type: str | None = None) -> str | None:
    if device_type not in (None, "cpu"):
        return f"the cpp backend runs on CPU only, not on {device_type}"
    return _load()


def supports(device_type: str, dtype: torch.dtype) -> str | None:
    if device_type != "cpu":
        return f"the cpp backend runs on CPU only, not on {device_type}"
    if dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        return f"the cpp backend supports float32, float64, bfloat16 and float16, not {dtype}"
    return None


def recurrence(xg: torch.Tensor, w_hh: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor):
    reason = _load()
    if reason is not None:
        from . import BackendUnavailableError

        raise BackendUnavailableError(f"LSTM backend 'cpp' cannot run: {reason}")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (xg, w_hh, h0, c0)):
        return _ops.recurrence(xg, w_hh, h0, c0)
    # No gradient wanted: the forward that does not store the [T, B, 4H] gates for backward.
    return torch.ops.ecgkern.lstm_recurrence_inference(xg, w_hh, h0, c0)
