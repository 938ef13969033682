"""The ``cpp`` backend: hand-written C++ forward and backward of the recurrence on CPU.

The kernels (``csrc/lstm_cpu.cpp``) implement the ``ecgkern::lstm_recurrence`` ops of ``_ops``;
the extension is built on first use (15-40 s on 2 cores, then cached, see ``ecgkern._build``),
never at import and never by ``available_backends()``: "available" means it can be built here.
A build that fails at first use raises ``BackendUnavailableError`` and makes this backend
unavailable for the rest of the process (``auto`` then falls back).
"""
from __future__ import annotations

import torch

from .. import _build
from . import _ops, _ops_projected

NAME = "cpp"


def unavailable_reason(device_type: str | None = None) -> str | None:
    if device_type not in (None, "cpu"):
        return f"the cpp backend runs on CPU only, not on {device_type}"
    return _build.CPU_EXTENSION.failure() or _build.CPU_EXTENSION.missing_tools()


def supports(device_type: str, dtype: torch.dtype) -> str | None:
    if device_type != "cpu":
        return f"the cpp backend runs on CPU only, not on {device_type}"
    if dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        return f"the cpp backend supports float32, float64, bfloat16 and float16, not {dtype}"
    return None


# Measured at the ECG shape on an AVX-512 machine made to build without vector instructions:
# 0.15x the reference no_grad, 0.14x training (ATEN_CPU_CAPABILITY=default python
# benchmarks/bench_cpp_profile.py --skip-large).
PORTABLE_NOTE = ("this CPU gets the portable build of the C++ kernels (torch detects no AVX2): correct, but "
                 "about 6x slower than the reference, so backend='auto' takes the reference")


def note(device_type: str | None = None) -> str | None:
    """A caveat for ``available_backends()`` / ``ecgkern info``: the portable build (see ``auto_skip_reason``)."""
    return auto_skip_reason(device_type or "cpu") if unavailable_reason(device_type) is None else None


def auto_skip_reason(device_type: str) -> str | None:
    """Why ``auto`` passes over this backend although it runs here: on an x86 CPU without AVX2 the
    kernels are slower than the reference."""
    return PORTABLE_NOTE if device_type == "cpu" and _build.portable_x86_build() else None


def recurrence(xg: torch.Tensor, w_hh: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor):
    return _ops.recurrence(xg, w_hh, h0, c0)


# Input sizes up to which the kernels compute the input projection themselves (each register
# tile of pre-activations starts from x_t @ w_ih^T + bias) instead of the layer's one GEMM into a
# [T, B, 4H] xg: where the whole layer measured faster that way, no_grad and training, at T=140,
# B=64, H=64 on Zen 5 (python benchmarks/ab_input_projection.py DTYPE SIZES): float32 1.08-1.21x
# at I=1, 1.22-1.33x at I=64, 1.32-1.91x at I=512 (the largest measured); float64 1.10-2.15x over
# the same sizes; bf16 autocast 1.16-1.77x up to I=64 but 0.79-1.15x at I=128, float16 1.02-1.18x
# up to I=64 and 0.98x at I=128 (their x part is a float32 GEMM, the separate projection a
# 16-bit one).
FUSED_INPUT_MAX = {torch.float64: 512, torch.float32: 512, torch.bfloat16: 64, torch.float16: 64}


def fuses_input_projection(input_size: int, dtype: torch.dtype) -> bool:
    """Whether ``input_recurrence`` pays off for a layer with ``input_size`` features."""
    return input_size <= FUSED_INPUT_MAX.get(dtype, 0)


def input_projection_summary() -> str:
    """One line for ``ecgkern info``: which layers project their input inside the kernels."""
    groups = {}
    for dtype, limit in FUSED_INPUT_MAX.items():
        groups.setdefault(limit, []).append(str(dtype).removeprefix("torch."))
    return "cpp input projection inside the kernels up to " + ", ".join(
        f"{limit} input features ({'/'.join(names)})" for limit, names in groups.items())


def input_recurrence(x, w_ih, bias, w_hh, h0, c0):
    """``recurrence(x @ w_ih^T + bias, w_hh, h0, c0)`` without the [T, B, 4H] xg in memory."""
    return _ops.input_recurrence(x, w_ih, bias, w_hh, h0, c0)


def supports_projections(device_type: str, dtype: torch.dtype) -> str | None:
    if dtype not in (torch.float32, torch.float64):
        return f"the cpp backend's LSTM with projections (proj_size > 0) supports float32 and float64, not {dtype}"
    return supports(device_type, dtype)


def projected_recurrence(xg, w_hh, w_hr, h0, c0):
    return _ops_projected.projected_recurrence(xg, w_hh, w_hr, h0, c0)


def prepare() -> None:
    """Build (or load from the cache) the extension now; raises ``BackendUnavailableError``."""
    _build.CPU_EXTENSION.ensure_loaded()
