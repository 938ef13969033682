"""The ``torch.library`` custom ops that the compiled backends (cpp, cuda) implement.

Schemas, fake (shape) kernels and the autograd formula live here, once; each extension only
registers its device kernels with ``TORCH_LIBRARY_IMPL(ecgkern, CPU|CUDA, m)``. That keeps the
cpp and cuda extensions independent of each other and lets ``torch.library.opcheck`` and
``torch.compile(fullgraph=True)`` see through both.

    ecgkern::lstm_recurrence(xg [T,B,4H], w_hh [4H,H], h0 [B,H], c0 [B,H])
        -> (hs [T,B,H], cs [T,B,H], gates [T,B,4H])      gates: activated i, f, g, o per step
    ecgkern::lstm_recurrence_backward(dhs, dcs, w_hh, h0, c0, hs, cs, gates)
        -> (dxg [T,B,4H], dw_hh [4H,H], dh0 [B,H], dc0 [B,H])
    ecgkern::lstm_recurrence_inference(xg, w_hh, h0, c0) -> (hs [T,B,H], cs [T,B,H])
        the forward without gates, for when no gradient is needed (not differentiable;
        implemented by the cpp extension only)
"""
from __future__ import annotations

import torch

_LIB = torch.library.Library("ecgkern", "DEF")  # noqa: keep a reference: the ops live as long as it
_LIB.define("lstm_recurrence(Tensor xg, Tensor w_hh, Tensor h0, Tensor c0) -> (Tensor, Tensor, Tensor)")
_LIB.define(
    "lstm_recurrence_backward(Tensor dhs, Tensor dcs, Tensor w_hh, Tensor h0, Tensor c0, "
    "Tensor hs, Tensor cs, Tensor gates) -> (Tensor, Tensor, Tensor, Tensor)"
)

_LIB.define("lstm_recurrence_inference(Tensor xg, Tensor w_hh, Tensor h0, Tensor c0) -> (Tensor, Tensor)")


@torch.library.register_fake("ecgkern::lstm_recurrence_inference")
def _fake_states(xg, w_hh, h0, c0):
    T, B, _ = xg.shape
    H = w_hh.shape[1]
    return xg.new_empty(T, B, H), xg.new_empty(T, B, H)


@torch.library.register_fake("ecgkern::lstm_recurrence")
def _(xg, w_hh, h0, c0):
    return *_fake_states(xg, w_hh, h0, c0), torch.empty_like(xg)


@torch.library.register_fake("ecgkern::lstm_recurrence_backward")
def _(dhs, dcs, w_hh, h0, c0, hs, cs, gates):
    return torch.empty_like(gates), torch.empty_like(w_hh), torch.empty_like(h0), torch.empty_like(c0)


def _setup_context(ctx, inputs, output):
    _, w_hh, h0, c0 = inputs
    hs, cs, gates = output
    ctx.save_for_backward(w_hh, h0, c0, hs, cs, gates)
    # The gates output is never differentiated: don't let autograd fill a [T, B, 4H] zero grad.
    ctx.set_materialize_grads(False)


def _backward(ctx, dhs, dcs, _dgates):
    w_hh, h0, c0, hs, cs, gates = ctx.saved_tensors
    dhs = torch.zeros_like(hs) if dhs is None else dhs
    dcs = torch.zeros_like(cs) if dcs is None else dcs
    dxg, dw_hh, dh0, dc0 = torch.ops.ecgkern.lstm_recurrence_backward(
        dhs.contiguous(), dcs.contiguous(), w_hh, h0, c0, hs, cs, gates
    )
    return dxg, dw_hh, dh0, dc0


torch.library.register_autograd("ecgkern::lstm_recurrence", _backward, setup_context=_setup_context)


def recurrence(xg, w_hh, h0, c0):
    """The backend interface on top of the op: (hs, cs); gates are kept only for backward."""
    hs, cs, _ = torch.ops.ecgkern.lstm_recurrence(xg.contiguous(), w_hh.contiguous(), h0.contiguous(), c0.contiguous())
    return hs, cs
