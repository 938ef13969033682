"""The oracle: the explicit-gate LSTM loop, step by step, with autograd for the backward.

Kept plain on purpose; every other backend is tested against it.
"""
from __future__ import annotations

import torch

from .._validation import check_projected_args, check_recurrence_args

NAME = "reference"


def unavailable_reason(device_type: str | None = None) -> str | None:
    return None


def supports(device_type: str, dtype: torch.dtype) -> str | None:
    return None if dtype.is_floating_point else f"{dtype} is not a floating-point dtype"


def recurrence(xg: torch.Tensor, w_hh: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor):
    check_recurrence_args(NAME, xg, w_hh, h0, c0, supports(xg.device.type, xg.dtype))
    return _loop(xg, w_hh, h0, c0)


def supports_projections(device_type: str, dtype: torch.dtype) -> str | None:
    return supports(device_type, dtype)


def projected_recurrence(xg: torch.Tensor, w_hh: torch.Tensor, w_hr: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor):
    """The recurrence with projections (nn.LSTM's proj_size): ``h = (o * tanh(c)) @ w_hr^T``.

    ``w_hh`` [4H, P], ``w_hr`` [P, H], ``h0`` [B, P], ``c0`` [B, H]; returns hs [T, B, P], cs [T, B, H].
    """
    check_projected_args(NAME, xg, w_hh, w_hr, h0, c0, supports(xg.device.type, xg.dtype))
    return _loop(xg, w_hh, h0, c0, w_hr)


def _loop(xg, w_hh, h0, c0, w_hr=None):
    h, c = h0, c0
    hs, cs = [], []
    # unbind, not xg[t]: each indexing's backward would write a whole zero [T, B, 4H] gradient,
    # making the backward quadratic in T; unbind's backward stacks the step gradients once.
    for x_t in xg.unbind(0):
        gates = x_t + h @ w_hh.t()
        i, f, g, o = gates.chunk(4, dim=1)  # gate order i, f, g, o as in torch.nn.LSTM
        i = torch.sigmoid(i)
        f = torch.sigmoid(f)
        g = torch.tanh(g)
        o = torch.sigmoid(o)
        c = f * c + i * g
        h = o * torch.tanh(c)
        if w_hr is not None:
            h = h @ w_hr.t()
        hs.append(h)
        cs.append(c)
    return torch.stack(hs), torch.stack(cs)
