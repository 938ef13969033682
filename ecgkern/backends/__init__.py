"""Backend registry: name -> module, availability, and the ``auto`` choice.

Every backend module exposes the same small interface:

``NAME``
    its registry name.
``unavailable_reason(device_type=None) -> str | None``
    None when the backend can run (on that device type, or anywhere when None);
    otherwise one sentence saying why not.
``note(device_type=None) -> str | None`` (optional)
    a caveat shown beside "available" (e.g. triton on CPU runs through its interpreter).
``prepare()`` (optional)
    one-time work before the first call (building an extension); raises
    ``BackendUnavailableError`` saying why it failed. Run on first use, never by
    ``available_backends()``.
``supports(device_type, dtype) -> str | None``
    None when the backend handles tensors of that device type and dtype; else why not.
``recurrence(xg, w_hh, h0, c0) -> (hs, cs)``
    the sequential part of one LSTM layer (see DESIGN.md): ``xg`` [T, B, 4H] holds the input
    projection plus both biases, ``w_hh`` [4H, H], ``h0``/``c0`` [B, H]. Returns the hidden
    and cell state after every step, each [T, B, H]; the final states are ``hs[-1]``,
    ``cs[-1]``. Differentiable with respect to all four inputs.
``input_recurrence(x, w_ih, bias, w_hh, h0, c0) -> (hs, cs)`` and
``fuses_input_projection(input_size, dtype) -> bool`` (optional, both or neither)
    ``recurrence`` with the input projection inside (``bias`` = b_ih + b_hh, [4H]), and for which
    layers the layer should call it instead of projecting first.
``projected_recurrence(xg, w_hh, w_hr, h0, c0) -> (hs, cs)`` and
``supports_projections(device_type, dtype) -> str | None`` (optional, both or neither)
    the recurrence with projections (nn.LSTM's ``proj_size``): ``w_hh`` [4H, P], ``w_hr``
    [P, H], ``h0`` [B, P], ``c0`` [B, H]; ``h = (o * tanh(c)) @ w_hr^T``, so ``hs`` is
    [T, B, P] and ``cs`` [T, B, H]; and for which tensors it runs (None, or why not). A
    backend without them cannot run such a layer; ``auto`` skips it there.

Adding a backend is one module and one line in ``_MODULES``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from types import ModuleType

import torch

from .._errors import BackendUnavailableError

# Every backend module is imported here, with ecgkern: each is cheap to import (nothing is built
# or compiled, triton is imported only on first use), every op schema exists from
# ``import ecgkern`` on, and torch.compile never meets an import inside the layer.
from . import compiled, cpp, cuda, reference, triton

_MODULES: dict[str, ModuleType] = {
    "reference": reference,
    "compile": compiled,
    "cpp": cpp,
    "cuda": cuda,
    "triton": triton,
}

# Preference of ``auto`` per device type, fastest first (see benchmarks/results/).
# triton never runs on CPU through ``auto``: its interpreter is for testing only.
_AUTO_ORDER = {
    "cpu": ("cpp", "reference"),
    "cuda": ("cuda", "triton", "reference"),
}

BACKEND_NAMES = tuple(_MODULES)

__all__ = ["BACKEND_NAMES", "BackendStatus", "BackendUnavailableError", "available_backends", "get_backend",
           "resolve_backend_name"]


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    reason: str | None  # why it cannot run; None when it can
    note: str | None = None  # a caveat when it runs in a special way (e.g. an interpreter)

    def __str__(self) -> str:
        if not self.available:
            return f"{self.name}: unavailable ({self.reason})"
        return f"{self.name}: available" + (f" ({self.note})" if self.note else "")


def _module(name: str) -> ModuleType:
    module = _MODULES.get(name)
    if module is None:
        raise ValueError(f"unknown LSTM backend {name!r}; choose one of {', '.join(('auto',) + BACKEND_NAMES)}")
    return module


def available_backends(device: str | torch.device | None = None) -> dict[str, BackendStatus]:
    """Every backend with whether it can run here (on ``device``'s type if given) and why not.

    Never builds, compiles or changes the environment: a C++ backend is available when it can be
    built (compiler, ninja and sources present); it is built on first use.
    """
    device_type = None if device is None else torch.device(device).type
    out = {}
    for name, module in _MODULES.items():
        reason = module.unavailable_reason(device_type)
        note = getattr(module, "note", None) if reason is None else None
        out[name] = BackendStatus(name, reason is None, reason, note(device_type) if note else None)
    return out


# Backends whose fallback ``auto`` has already warned about (once per backend and reason).
_WARNED: set[tuple[str, str]] = set()


def _warn_fallback(preferred: str, reason: str, chosen: str) -> None:
    if (preferred, reason) in _WARNED:
        return
    _WARNED.add((preferred, reason))
    warnings.warn(
        f"ecgkern: backend 'auto' would use {preferred!r} here but it cannot run ({reason}); "
        f"falling back to {chosen!r}, which is slower. Fix the cause above (or pass backend={chosen!r} "
        "to silence this).", RuntimeWarning, stacklevel=4)


def _projection_reason(module: ModuleType, projections: bool, device_type: str, dtype: torch.dtype) -> str | None:
    """Why ``module`` cannot run a layer with projections (None when it can or none is asked)."""
    if not projections:
        return None
    supports_projections = getattr(module, "supports_projections", None)
    if supports_projections is None:
        return f"the {module.NAME} backend does not implement LSTM with projections (proj_size > 0)"
    return supports_projections(device_type, dtype)


def _fallback_reason(name: str, device_type: str, dtype: torch.dtype, projections: bool) -> tuple[str | None, bool]:
    """(why ``name`` cannot run these tensors, whether that reason is about this installation)."""
    module = _MODULES[name]
    auto_skip = getattr(module, "auto_skip_reason", None)
    reason = (module.supports(device_type, dtype) or _projection_reason(module, projections, device_type, dtype)
              or (auto_skip and auto_skip(device_type)))
    if reason is not None:
        return reason, False
    return module.unavailable_reason(device_type) or _prepare(module), True


def _prepare(module: ModuleType) -> str | None:
    """Run the backend's one-time preparation (building its extension); the failure, or None."""
    prepare = getattr(module, "prepare", None)
    if prepare is None:
        return None
    try:
        prepare()
    except BackendUnavailableError as exc:
        return str(exc)
    return None


# torch.compile runs this once per (name, device type, dtype) while tracing and keeps the
# answer: it reads files and the build state, which dynamo cannot trace.
@torch.compiler.assume_constant_result
def _resolve(name: str, device_type: str, dtype: torch.dtype, projections: bool = False) -> str:
    """The backend name that runs these tensors; raises ``BackendUnavailableError``/ValueError."""
    if name == "auto":
        order = _AUTO_ORDER.get(device_type, ("reference",))
        preferred = None
        for candidate in order:
            reason, installation = _fallback_reason(candidate, device_type, dtype, projections)
            if reason is None:
                if preferred is not None:
                    _warn_fallback(*preferred, candidate)
                return candidate
            if preferred is None and installation:
                preferred = (candidate, reason)
        return "reference"
    module = _module(name)
    reason = (module.unavailable_reason(device_type) or module.supports(device_type, dtype)
              or _projection_reason(module, projections, device_type, dtype) or _prepare(module))
    if reason is not None:
        raise BackendUnavailableError(f"LSTM backend {name!r} cannot run {dtype} tensors on {device_type}: {reason}")
    return name


def get_backend(name: str, device: torch.device, dtype: torch.dtype, *, projections: bool = False) -> ModuleType:
    """The backend module that will run tensors of ``device``/``dtype`` (with ``projections``:
    a layer with proj_size > 0, which needs ``projected_recurrence``).

    ``auto`` takes the first of ``_AUTO_ORDER`` that can (warning once when it skips its first
    choice for a reason of this installation: no compiler, a failed build, ...); a backend named
    explicitly raises ``BackendUnavailableError`` with its reason when it cannot.
    """
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string, got {type(name).__name__}")
    return _MODULES[_resolve(name, device.type, dtype, projections)]


def resolve_backend_name(name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> str:
    """The concrete backend name ``name`` stands for on that device and dtype (resolves ``auto``)."""
    return get_backend(name, torch.device(device), dtype).NAME
