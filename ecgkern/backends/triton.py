"""``triton``: Triton kernels for the fused LSTM gate step, forward and backward.

Two paths, sharing the pointwise math in ``_triton_kernels``:

* step kernels: per time step torch does the recurrent GEMM into a preallocated buffer
  (``addmm(xg[t], h, W_hh^T, out=gates)`` forward, ``mm(dgates, W_hh, out=dh)`` backward) and
  one Triton kernel does everything pointwise: activations, c, h and the saved activated gates
  forward; the gate gradients and dc_{t-1} backward;
* persistent kernels (FlashRNN style), for H <= ``PERSISTENT_MAX_HIDDEN``: one launch runs the
  whole time loop, forward or backward, with W_hh held on-chip and the recurrent GEMM in
  ``tl.dot``. Chosen by ``use_persistent``: on a GPU for float32/float16/bfloat16, and under
  the interpreter (one launch instead of 2T makes the tests much faster there).

Either way dW_hh is ONE GEMM after the reverse loop. float16/bfloat16 are computed
in float32: pointwise math, tl.dot accumulation, and the carried dc of the step path
(bfloat16 on CUDA only: the interpreter computes it wrongly).

Both directions are the kernels of the custom op ``ecgkern::triton_recurrence`` (defined
through ``_library`` with a ``persistent`` flag): autograd, ``torch.func`` and ``torch.compile``
(fullgraph too, one opaque op) go through the shared formula; dW_hh is ``dw_hh_tail``.

CPU: the kernels run through Triton's interpreter on CPU tensors -- slow, for tests only
(``auto`` never picks this backend on CPU). The interpreter must be chosen before Triton
defines the kernels, so it is an explicit switch: set ``TRITON_INTERPRET=1`` in the environment
before the first call of this backend (before importing ecgkern is safest; the tests' conftest
does this). This module never sets it: importing ecgkern leaves the environment alone. Triton
itself is imported on first use, not at import of ecgkern. With TRITON_INTERPRET=1 set on a
CUDA machine, this backend runs on CPU tensors only.
"""
from __future__ import annotations

import importlib.util
import os

import torch

from .._errors import BackendUnavailableError
from .._validation import check_recurrence_args
from ._library import lstm_recurrence_op

NAME = "triton"

# Largest hidden size the persistent kernels take (W_hh, 4*H*H values, must stay on-chip).
PERSISTENT_MAX_HIDDEN = 64

_HAS_CUDA = torch.cuda.is_available()
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

_kernels: dict = {}  # "module": the kernels module once imported, or "error": why it cannot be


def _triton_error() -> str | None:
    """Why Triton cannot be used (imported on first call, then cached); None when it can."""
    if "module" not in _kernels and "error" not in _kernels:
        try:
            from . import _triton_kernels
            _kernels["module"] = _triton_kernels
        except ImportError as exc:  # triton missing or broken: the backend reports it, the rest works
            _kernels["error"] = str(exc)
    return _kernels.get("error")


def _k():
    return _kernels["module"]


_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
CPU_NOTE = "runs on CPU only through Triton's interpreter (slow; for testing)"


def unavailable_reason(device_type: str | None = None) -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed; install it with `pip install triton` (Linux)"
    if "error" in _kernels:
        return f"Triton cannot be imported ({_kernels['error']}); install it with `pip install triton` (Linux)"
    if device_type == "cuda":
        if not _HAS_CUDA:
            return "no CUDA device is available"
        if INTERPRETED:
            return "TRITON_INTERPRET=1 is set, so the kernels run only on CPU tensors"
    if device_type is None and not _HAS_CUDA and not INTERPRETED:
        return "no CUDA device is available and TRITON_INTERPRET is not 1"
    return None


def supports(device_type: str, dtype: torch.dtype) -> str | None:
    if device_type == "cpu":
        if not INTERPRETED:
            return "CPU tensors need Triton's interpreter: set TRITON_INTERPRET=1 in the environment before importing ecgkern"
        if dtype == torch.bfloat16:  # the interpreter runs on numpy, which has no bfloat16
            return "bfloat16 runs on CUDA only (Triton's interpreter computes it wrongly)"
        if dtype not in _FLOAT_DTYPES:
            return f"{dtype} is not supported (float32, float64 and float16 are on CPU)"
        return None
    if device_type != "cuda":
        return f"device type {device_type!r} is not supported (cuda, and cpu through the interpreter)"
    if dtype not in _FLOAT_DTYPES:
        return f"{dtype} is not supported (float32, float64, float16 and bfloat16 are)"
    return None


def note(device_type: str | None = None) -> str | None:
    """A caveat for ``available_backends()`` / ``ecgkern info`` when the backend is available
    but runs in a special way (here: through the interpreter); None otherwise."""
    if unavailable_reason(device_type) is None and INTERPRETED and device_type != "cuda":
        return CPU_NOTE
    return None


# ---------------------------------------------------------------------------------------------
# Launch helpers.


def _flags(dtype: torch.dtype) -> dict:
    """Arithmetic dtype of the kernels: float64 for float64 tensors, else float32."""
    return {"ACC": _k().tl.float64 if dtype == torch.float64 else _k().tl.float32}


def _step_grid(n: int):
    block = min(1024, _next_pow2(n))
    return (_cdiv(n, block),), block


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def use_persistent(device_type: str, dtype: torch.dtype, hidden: int) -> bool:
    """Whether the one-launch persistent kernels run: for H <= PERSISTENT_MAX_HIDDEN, on a GPU
    except for float64 (Triton's fp64 tl.dot is not on every GPU), and under the interpreter
    (where one launch instead of 2T is also much faster). ECGKERN_TRITON_PERSISTENT=0/1
    overrides the choice."""
    override = os.environ.get("ECGKERN_TRITON_PERSISTENT")
    if override is not None:
        return override == "1"
    if hidden > PERSISTENT_MAX_HIDDEN:
        return False
    return INTERPRETED or (device_type == "cuda" and dtype != torch.float64)


def _persistent_meta(B: int, H: int, dtype: torch.dtype) -> dict:
    bh = max(16, _next_pow2(H))
    bb = 16 if B <= 16 or bh > 32 else 32
    meta = dict(BB=bb, BH=bh, LOWP=dtype in (torch.float16, torch.bfloat16), **_flags(dtype))
    if not INTERPRETED:
        meta["num_warps"] = 4 if bh <= 32 else 8
    return meta


# ---------------------------------------------------------------------------------------------
# Forward and backward loops.


def _forward(xg, w_hh, h0, c0, persistent: bool):
    T, B, G = xg.shape
    H = G // 4
    hs = xg.new_empty(T, B, H)
    cs = xg.new_empty(T, B, H)
    acts = xg.new_empty(T, B, G)
    if persistent:
        meta = _persistent_meta(B, H, xg.dtype)
        _k().persistent_forward[(_cdiv(B, meta["BB"]),)](xg, w_hh, h0, c0, hs, cs, acts, T, B, H, **meta)
        return hs, cs, acts
    grid, block = _step_grid(B * H)
    gates = xg.new_empty(B, G)
    w_t = w_hh.t()
    h, c = h0, c0
    for t in range(T):
        torch.addmm(xg[t], h, w_t, out=gates)
        _k().step_forward[grid](gates, c, hs[t], cs[t], acts[t], B * H, H, BLOCK=block, **_flags(xg.dtype))
        h, c = hs[t], cs[t]
    return hs, cs, acts


def _backward(dhs, dcs, w_hh, h0, c0, hs, cs, acts, persistent: bool):
    """-> dxg, dh0, dc0 (dW_hh: ``dw_hh_tail``)."""
    T, B, H = hs.shape
    dxg = torch.empty_like(acts)
    if persistent:
        dh0, dc0 = torch.empty_like(h0), torch.empty_like(c0)
        meta = _persistent_meta(B, H, hs.dtype)
        _k().persistent_backward[(_cdiv(B, meta["BB"]),)](dhs, dcs, w_hh, c0, cs, acts, dxg, dh0, dc0, T, B, H, **meta)
        return dxg, dh0, dc0
    grid, block = _step_grid(B * H)
    # Carried gradients: dc in float32 at least (it sums over all later steps).
    dh0 = torch.zeros_like(h0)  # dL/dh_t from step t+1, via the GEMM; ends as dL/dh0
    dc0 = torch.zeros_like(c0, dtype=torch.promote_types(c0.dtype, torch.float32))
    for t in range(T - 1, -1, -1):
        c_prev = cs[t - 1] if t > 0 else c0
        _k().step_backward[grid](dhs[t], dh0, dcs[t], dc0, acts[t], cs[t], c_prev, dxg[t], B * H, H,
                                 BLOCK=block, **_flags(hs.dtype))
        torch.mm(dxg[t], w_hh, out=dh0)
    return dxg, dh0, dc0.to(c0.dtype)


def _loaded(fn):
    def run(*args):
        error = _triton_error()
        if error is not None:
            raise BackendUnavailableError(f"LSTM backend 'triton' cannot run: Triton cannot be imported ({error})")
        return fn(*args)
    return run


TRITON_RECURRENCE = lstm_recurrence_op("triton_recurrence", options=(("persistent", "bool"),))
for _device_type in ("cpu", "cuda"):
    TRITON_RECURRENCE.register_kernels(_device_type, forward=_loaded(_forward), backward=_loaded(_backward))


def recurrence(xg: torch.Tensor, w_hh: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, *, persistent: bool | None = None):
    """The backend interface; ``persistent`` forces (True) or forbids (False) the one-launch
    kernels, None lets ``use_persistent`` decide."""
    check_recurrence_args("triton", xg, w_hh, h0, c0, unavailable_reason(xg.device.type) or supports(xg.device.type, xg.dtype))
    T, B, _ = xg.shape
    H = w_hh.shape[1]
    if T * B >= 2**31 or B * H >= 2**31:  # the kernels index rows (t*B + b) and [B, H] blocks in int32
        raise ValueError(f"triton backend: T*B = {T * B} and B*H = {B * H} must each stay below 2^31; "
                         "split the sequence or the batch, or use the cuda backend")
    if persistent is None:
        persistent = use_persistent(xg.device.type, xg.dtype, w_hh.shape[1])
    return TRITON_RECURRENCE(xg, w_hh, h0, c0, persistent=bool(persistent))
