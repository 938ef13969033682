"""``ecgkern::lstm_recurrence``: the op the C++ extensions (cpp on CPU, cuda on CUDA) implement.

Defined through ``_library.RecurrenceOp`` at import of ecgkern, with Python CPU and CUDA
kernels that build/load the extension on first use (``_build.CPU_EXTENSION`` /
``CUDA_EXTENSION``) and call its private ops (``ecgkern_cpu::*`` / ``ecgkern_cuda::*``).
So a graph saved with ``torch.export`` finds the op after ``import ecgkern`` alone, and the
extension never registers a kernel for a public op (no double registration, whichever loads
first).

    ecgkern::lstm_recurrence(xg [T,B,4H], w_hh [4H,H], h0 [B,H], c0 [B,H])
        -> (hs [T,B,H], cs [T,B,H], gates [T,B,4H])      gates: activated i, f, g, o per step
    ecgkern::lstm_recurrence_backward(dhs, dcs, w_hh, h0, c0, hs, cs, gates)
        -> (dxg [T,B,4H], dw_hh [4H,H], dh0 [B,H], dc0 [B,H])
    ecgkern::lstm_recurrence_inference(xg, w_hh, h0, c0) -> (hs [T,B,H], cs [T,B,H])
        the forward without gates, for when no gradient can be needed (cpp only)
"""
from __future__ import annotations

import torch

from .. import _build
from ._library import lstm_recurrence_op


def _fake_backward(dhs, dcs, w_hh, h0, c0, hs, cs, gates):
    return torch.empty_like(gates), torch.empty_like(w_hh), torch.empty_like(h0), torch.empty_like(c0)


# The C++ kernels compute dW_hh themselves (one GEMM at the end of their reverse loop).
LSTM_RECURRENCE = lstm_recurrence_op("lstm_recurrence", kernel_returns_dw_hh=True, backward_fake=_fake_backward)


def _extension_ops(extension: _build.LazyExtension, namespace: str):
    """The private ops of ``extension`` (building/loading it on first use)."""
    extension.ensure_loaded()  # raises ExtensionBuildError, a BackendUnavailableError
    return getattr(torch.ops, namespace)


def _cpu(name):
    return lambda *args: getattr(_extension_ops(_build.CPU_EXTENSION, "ecgkern_cpu"), name)(*args)


def _cuda(name):
    return lambda *args: getattr(_extension_ops(_build.CUDA_EXTENSION, "ecgkern_cuda"), name)(*args)


LSTM_RECURRENCE.register_kernels("cpu", forward=_cpu("lstm_recurrence"), backward=_cpu("lstm_recurrence_backward"),
                                 inference=_cpu("lstm_recurrence_inference"))
LSTM_RECURRENCE.register_kernels("cuda", forward=_cuda("lstm_recurrence"), backward=_cuda("lstm_recurrence_backward"))

recurrence = LSTM_RECURRENCE
