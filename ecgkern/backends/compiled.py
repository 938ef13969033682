"""``compile``: the LSTM recurrence with its pointwise gate math fused by ``torch.compile``.

Not the whole 140-step loop as one graph (that takes minutes to compile): two small cells are
compiled, and the time loop stays in Python around them.

* forward, per step: ``gates = addmm(xg[t], h, W_hh^T)`` (eager GEMM), then ONE fused kernel
  for the four activations, ``c``, ``h``, and the activated gates the backward needs;
* backward, per step in reverse: ONE fused kernel from (dh, dc, saved gates, c) to the
  pre-activation gate gradients and ``dc_prev``, then ``dh_prev = dgates @ W_hh`` (eager GEMM);
  after the loop ``dW_hh`` is ONE GEMM over all steps (``_library.dw_hh_tail``).

The loops are the kernels of the custom op ``ecgkern::compile_recurrence`` (``_library``):
an outer ``torch.compile`` sees one opaque op, autograd and ``torch.func`` go through the
shared formula.

Compilation: each cell is compiled with ``dynamic=True`` once per device and dtype, each pair
with a code object of its own (dynamo keeps graphs and its recompile limit per code object).
Sizes are symbolic, so a new batch size, hidden size or sequence length reuses the graphs;
dynamo only specialises sizes of 1 (B=1 or H=1 add a graph). Every tensor handed to a cell is
freshly allocated, detached and outside inference mode, and the cells always run with autograd
off (``_no_autograd``): switching between
training, ``no_grad`` and ``inference_mode`` never recompiles (tests/test_compile_backend.py
checks this with ``torch.compiler.set_stance("fail_on_recompile")``). Nothing is compiled at
import; the first call compiles (see README for the time) and later calls reuse it.
"""
from __future__ import annotations

import shutil
import types

import torch

from .._validation import check_recurrence_args
from ._library import lstm_recurrence_op

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
    """-> dxg, dh0, dc0 (dW_hh: ``dw_hh_tail``). Must run with autograd off."""
    _, cell = _cells(dhs.device, dhs.dtype)
    T = hs.shape[0]
    dh, dc = dhs[T - 1].clone(), dcs[T - 1].clone()
    dgates = [None] * T
    for t in range(T - 1, -1, -1):
        # Fresh copies of the saved steps (views would make dynamo specialise on offsets).
        c_prev = (cs[t - 1] if t > 0 else c0).clone()
        dg, dc = cell(dh, dc, acts[t].clone(), cs[t].clone(), c_prev)
        dgates[t] = dg
        if t > 0:
            dh = torch.addmm(dhs[t - 1], dg, w_hh)  # dL/dh_{t-1}: its output grad + recurrent grad
            dc = dc + dcs[t - 1]
    return torch.stack(dgates), dg @ w_hh, dc


def _no_autograd(fn):
    """Run ``fn`` with autograd off and outside inference mode: the cells then see the same
    tensor flags in training, ``no_grad`` and ``inference_mode`` (dynamo guards on them)."""
    def run(*args):
        with torch.inference_mode(False), torch.no_grad():
            return fn(*(a.detach() if isinstance(a, torch.Tensor) else a for a in args))
    return run


def _forward_stacked(xg, w_hh, h0, c0):
    hs, cs, acts = _forward(xg, w_hh, h0, c0)
    return torch.stack(hs), torch.stack(cs), torch.stack(acts)


def _inference(xg, w_hh, h0, c0):
    hs, cs, _ = _forward(xg, w_hh, h0, c0)
    return torch.stack(hs), torch.stack(cs)


# ecgkern::compile_recurrence: opaque to an outer torch.compile (the cells are compiled already).
COMPILE_RECURRENCE = lstm_recurrence_op("compile_recurrence")
for _device_type in ("cpu", "cuda"):
    COMPILE_RECURRENCE.register_kernels(_device_type, forward=_no_autograd(_forward_stacked),
                                        backward=_no_autograd(_backward), inference=_no_autograd(_inference))


def recurrence(xg: torch.Tensor, w_hh: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor):
    check_recurrence_args("compile", xg, w_hh, h0, c0, supports(xg.device.type, xg.dtype))
    return COMPILE_RECURRENCE(xg, w_hh, h0, c0)
