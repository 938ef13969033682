"""``ecgkern::lstm_projected_recurrence``: the recurrence with projections (nn.LSTM's proj_size),
implemented by the cpp extension (``csrc/lstm_cpu_proj.cpp``, private ``ecgkern_cpu::*`` ops).

    ecgkern::lstm_projected_recurrence(xg [T,B,4H], w_hh [4H,P], w_hr [P,H], h0 [B,P], c0 [B,H])
        -> (hs [T,B,P], cs [T,B,H], gates [T,B,4H])       gates: activated i, f, g, o per step
    ecgkern::lstm_projected_recurrence_backward(dhs, dcs, w_hh, w_hr, h0, c0, hs, cs, gates)
        -> (dxg, dw_hh, dw_hr, dh0, dc0)

Defined at import of ecgkern through ``_library.RecurrenceOp``, like ``_ops``' op, so double
backward, torch.func and export go through the same shared paths.
"""
from __future__ import annotations

import torch

from . import reference
from ._library import RecurrenceOp
from ._ops import _cpu


def _fake(xg, w_hh, w_hr, h0, c0):
    T, B, _ = xg.shape
    P, H = w_hr.shape
    return xg.new_empty(T, B, P), xg.new_empty(T, B, H), torch.empty_like(xg)


def _fake_backward(dhs, dcs, w_hh, w_hr, h0, c0, hs, cs, gates):
    return (torch.empty_like(gates), torch.empty_like(w_hh), torch.empty_like(w_hr),
            torch.empty_like(h0), torch.empty_like(c0))


LSTM_PROJECTED_RECURRENCE = RecurrenceOp(
    "lstm_projected_recurrence",
    inputs=("xg", "w_hh", "w_hr", "h0", "c0"),
    fake=_fake,
    reference=reference.projected_recurrence,
    backward_args=("dhs", "dcs", "w_hh", "w_hr", "h0", "c0", "hs", "cs", "gates"),
    backward_returns=("xg", "w_hh", "w_hr", "h0", "c0"),
    backward_fake=_fake_backward,
)
LSTM_PROJECTED_RECURRENCE.register_kernels(
    "cpu", forward=_cpu("lstm_projected_recurrence"), backward=_cpu("lstm_projected_recurrence_backward"))

projected_recurrence = LSTM_PROJECTED_RECURRENCE
