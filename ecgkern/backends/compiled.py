"""``compile``: the LSTM recurrence with its pointwise gate math fused by ``torch.compile``.

Not the whole 140-step loop as one graph (that takes minutes to compile): two small cells are
compiled, and the time loop stays in Python around them.

* forward, per step: ``gates = addmm(xg[t], h, W_hh^T)`` (eager GEMM), then ONE fused kernel
  for the four activations, ``c``, ``h``, and the activated gates the backward needs;
* backward, per step in reverse: ONE fused kernel from (dh, dc, saved gates, c) to the
  pre-activation gate gradients and ``dc_prev``, then ``dh_prev = dgates @ W_hh`` (eager GEMM);
  after the loop ``dW_hh`` is ONE GEMM over all steps.

Compilation: each cell is compiled with ``dynamic=True`` once per device and dtype, each pair
with a code object of its own (dynamo keeps graphs and its recompile limit per code object).
Sizes are symbolic, so a new batch size, hidden size or sequence length reuses the graphs;
dynamo only specialises sizes of 1 (B=1 or H=1 add a graph). Every tensor handed to a cell is
freshly allocated, detached and outside inference mode, and the cells always run with autograd
off (inside ``autograd.Function.forward``/``backward`` or under ``no_grad``): switching between
training, ``no_grad`` and ``inference_mode`` never recompiles (tests/test_compile_backend.py
checks this with ``torch.compiler.set_stance("fail_on_recompile")``). Nothing is compiled at
import; the first call compiles (see README for the time) and later calls reuse it.
"""
from __future__ import annotations

import shutil
import types

import torch

from ._checks import check_recurrence_args

NAME = "compile"

_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def unavailable_reason(device_type: str | None = None) -> str | None:
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if device_type == "cuda":
        if not torch.cuda.is_available():
            return "no CUDA device is available"
        return None  # inductor generates Triton for CUDA tensors; no host compiler needed
    # CPU: inductor writes C++ and needs a compiler; look for it without compiling anything.
    from torch._inductor import config

    candidates = config.cpp.cxx if isinstance(config.cpp.cxx, (tuple, list)) else (config.cpp.cxx,)
    if not any(c and shutil.which(c) for c in candidates):
        names = ", ".join(c for c in candidates if c)
        return f"torch.compile needs a C++ compiler for CPU tensors and none was found (looked for {names}; set CXX)"
    return None


def supports(device_type: str, dtype: torch.dtype) -> str | None:
    if device_type not in ("cpu", "cuda"):
        return f"device type {device_type!r} is not supported (cpu and cuda are)"
    if dtype not in _DTYPES:
        return f"{dtype} is not supported (float32, float64, bfloat16 and float16 are)"
    return None


# ---------------------------------------------------------------------------------------------
# The two cells. Plain tensor math: torch.compile fuses each into one kernel.


def _cell_forward(gates: torch.Tensor, c: torch.Tensor):
    """Pre-activation gates [B, 4H] and c [B, H] -> (h, c_new, activated gates [B, 4H])."""
    i, f, g, o = gates.chunk(4, 1)  # gate order i, f, g, o as in torch.nn.LSTM
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c_new = f * c + i * g
    h = o * torch.tanh(c_new)
    return h, c_new, torch.cat((i, f, g, o), 1)


def _cell_backward(dh, dc, act, c, c_prev):
    """One reverse step: (dL/dh_t, dL/dc_t so far, activated gates, c_t, c_{t-1})
    -> (dL/d pre-activation gates [B, 4H], dL/dc_{t-1} through this step)."""
    i, f, g, o = act.chunk(4, 1)
    tanh_c = torch.tanh(c)
    dc = dc + dh * o * (1 - tanh_c * tanh_c)
    dgates = torch.cat((
        dc * g * i * (1 - i),
        dc * c_prev * f * (1 - f),
        dc * i * (1 - g * g),
        dh * tanh_c * o * (1 - o),
    ), 1)
    return dgates, dc * f


_compiled: dict[tuple, tuple] = {}


def _private_copy(fn):
    """``fn`` with a code object of its own: dynamo keeps its graphs and its recompile limit per
    code object, so each (device, dtype) gets its own budget and none evicts another's graphs."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


def _cells(device: torch.device, dtype: torch.dtype):
    """The compiled (forward, backward) cells for that device/dtype, created on first use
    (nothing compiles at import)."""
    key = (device.type, device.index, dtype)
    cells = _compiled.get(key)
    if cells is None:
        cells = tuple(torch.compile(_private_copy(fn), dynamic=True) for fn in (_cell_forward, _cell_backward))
        _compiled[key] = cells
    return cells


# ---------------------------------------------------------------------------------------------
# The loops. Every tensor handed to a cell is freshly allocated (storage offset 0): dynamo
# would otherwise specialise on views' offsets (0, 1, >= 2) and compile extra graphs.


def _forward(xg, w_hh, h0, c0):
    """-> per-step lists (hs, cs, acts), acts = activated gates. Must run with autograd off."""
    cell, _ = _cells(xg.device, xg.dtype)
    w_t = w_hh.t()
    h, c = h0, c0.clone()
    hs, cs, acts = [], [], []
    for t in range(xg.shape[0]):
        h, c, act = cell(torch.addmm(xg[t], h, w_t), c)
        hs.append(h)
        cs.append(c)
        acts.append(act)
    return hs, cs, acts


def _backward(dhs, dcs, w_hh, h0, c0, hs, cs, acts):
    """-> dxg, dw_hh, dh0, dc0 from the stacked upstream grads, the stacked hs and the per-step
    lists cs, acts. Must run with autograd off."""
    _, cell = _cells(dhs.device, dhs.dtype)
    T = hs.shape[0]
    c0 = c0.clone()
    dh, dc = dhs[T - 1].clone(), dcs[T - 1].clone()
    dgates = [None] * T
    for t in range(T - 1, -1, -1):
        dg, dc = cell(dh, dc, acts[t], cs[t], cs[t - 1] if t > 0 else c0)
        dgates[t] = dg
        if t > 0:
            dh = torch.addmm(dhs[t - 1], dg, w_hh)  # dL/dh_{t-1}: its output grad + recurrent grad
            dc = dc + dcs[t - 1]
    dh0 = dg @ w_hh
    dxg = torch.stack(dgates)
    h_prev = torch.cat((h0.unsqueeze(0), hs[:-1]))
    G, H = w_hh.shape
    dw_hh = dxg.reshape(-1, G).t() @ h_prev.reshape(-1, H)  # one GEMM over all steps
    return dxg, dw_hh, dh0, dc


class _Recurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xg, w_hh, h0, c0):
        # Detached, so the cells see requires_grad=False in training and inference alike
        # (dynamo guards on it; a mismatch would recompile).
        xg, w_hh, h0, c0 = (t.detach() for t in (xg, w_hh, h0, c0))
        hs, cs, acts = _forward(xg, w_hh, h0, c0)
        hs = torch.stack(hs)
        ctx.save_for_backward(w_hh, h0, c0, hs)
        ctx.steps = cs, acts  # per-step intermediates (not outputs): fresh tensors for the cells
        return hs, torch.stack(cs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dhs, dcs):
        w_hh, h0, c0, hs = (t.detach() for t in ctx.saved_tensors)
        cs, acts = ctx.steps
        return _backward(dhs, dcs, w_hh, h0, c0, hs, cs, acts)


@torch._dynamo.disable  # an outer torch.compile runs this as is; the cells are compiled already
def recurrence(xg: torch.Tensor, w_hh: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor):
    check_recurrence_args("compile", xg, w_hh, h0, c0, supports(xg.device.type, xg.dtype))
    args = [t.contiguous() for t in (xg, w_hh, h0, c0)]
    if torch.is_grad_enabled() and any(t.requires_grad for t in args):
        return _Recurrence.apply(*args)
    # Inference tensors carry other dispatch keys, which dynamo guards on: leave inference mode
    # (the inputs are only read) so that torch.inference_mode() reuses the same graphs too.
    with torch.inference_mode(False), torch.no_grad():
        hs, cs, _ = _forward(*(t.detach() for t in args))
    return torch.stack(hs), torch.stack(cs)
