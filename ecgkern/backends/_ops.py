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

and, CPU only, the same recurrence from the layer input, the input projection computed step by
step inside the kernel (xg is never written to memory; up to the input sizes of ``cpp.FUSED_INPUT_MAX``):

    ecgkern::lstm_input_recurrence(x [T,B,I], w_ih [4H,I], bias [4H], w_hh, h0, c0) -> (hs, cs, gates)
    ecgkern::lstm_input_recurrence_backward(dhs, dcs, x, w_hh, h0, c0, hs, cs, gates)
        -> (dxg, dw_ih [4H,I], dbias [4H], dw_hh, dh0, dc0)     lstm_recurrence_backward's kernel, and
        the input projection's weight gradients from its dxg (one pass for all three weights);
        dx = dxg @ w_ih is a tail (``_input_projection_tails``), computed only when needed
    ecgkern::lstm_input_recurrence_inference(x, w_ih, bias, w_hh, h0, c0) -> (hs, cs)
"""
from __future__ import annotations

import torch

from .. import _build
from . import reference
from ._library import RecurrenceOp, lstm_recurrence_op, matmul


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


def _project(x, w_ih, bias):
    """xg = x @ w_ih^T + bias: [T, B, I] -> [T, B, 4H]."""
    return torch.addmm(bias, x.flatten(0, 1), w_ih.t()).view(*x.shape[:2], w_ih.shape[0])


def _input_reference(x, w_ih, bias, w_hh, h0, c0):
    return reference.recurrence(_project(x, w_ih, bias), w_hh, h0, c0)


def _input_fake(x, w_ih, bias, w_hh, h0, c0):
    T, B, _ = x.shape
    H = w_hh.shape[1]
    return x.new_empty(T, B, H), x.new_empty(T, B, H), x.new_empty(T, B, 4 * H)


def _fake_input_backward(dhs, dcs, x, w_hh, h0, c0, hs, cs, gates):
    G = w_hh.shape[0]
    return (torch.empty_like(gates), x.new_empty(G, x.shape[2]), x.new_empty(G), torch.empty_like(w_hh),
            torch.empty_like(h0), torch.empty_like(c0))


# The gradient of x from dxg, the kernel's gate gradients (the weights' come from the kernel).
_input_projection_tails = {
    "x": lambda v: matmul(v["dxg"].flatten(0, 1), v["w_ih"]).view(v["x"].shape),
}

LSTM_INPUT_RECURRENCE = RecurrenceOp(
    "lstm_input_recurrence",
    inputs=("x", "w_ih", "bias", "w_hh", "h0", "c0"),
    batch_dims={"x": 1, "h0": 0, "c0": 0},
    fake=_input_fake,
    reference=_input_reference,
    backward_args=("dhs", "dcs", "x", "w_hh", "h0", "c0", "hs", "cs", "gates"),
    backward_returns=("xg", "w_ih", "bias", "w_hh", "h0", "c0"),
    backward_fake=_fake_input_backward,
    tails=_input_projection_tails,
)
LSTM_INPUT_RECURRENCE.register_kernels("cpu", forward=_cpu("lstm_input_recurrence"),
                                       backward=_cpu("lstm_input_recurrence_backward"),
                                       inference=_cpu("lstm_input_recurrence_inference"))

input_recurrence = LSTM_INPUT_RECURRENCE
