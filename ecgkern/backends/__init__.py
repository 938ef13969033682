"""Backend registry: name -> module, availability, and the ``auto`` choice.

Every backend module exposes the same small interface:

``NAME``
    its registry name.
``unavailable_reason(device_type=None) -> str | None``
    None when the backend can run (on that device type, or anywhere when None);
    otherwise one sentence saying why not.
``note(device_type=None) -> str | None`` (optional)
    a caveat shown beside "available" (e.g. triton on CPU runs through its interpreter).
``supports(device_type, dtype) -> str | None``
    None when the backend handles tensors of that device type and dtype; else why not.
``recurrence(xg, w_hh, h0, c0) -> (hs, cs)``
    the sequential part of one LSTM layer (see DESIGN.md): ``xg`` [T, B, 4H] holds the input
    projection plus both biases, ``w_hh`` [4H, H], ``h0``/``c0`` [B, H]. Returns the hidden
    and cell state after every step, each [T, B, H]; the final states are ``hs[-1]``,
    ``cs[-1]``. Differentiable with respect to all four inputs.

Adding a backend is one module and one line in ``_MODULES``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

import torch

_MODULES = {
    "reference": "ecgkern.backends.reference",
    "compile": "ecgkern.backends.compiled",
    "cpp": "ecgkern.backends.cpp",
    "cuda": "ecgkern.backends.cuda",
    "triton": "ecgkern.backends.triton",
}

# Preference of ``auto`` per device type, fastest first (see benchmarks/results/).
# triton never runs on CPU through ``auto``: its interpreter is for testing only.
_AUTO_ORDER = {
    "cpu": ("cpp", "reference"),
    "cuda": ("cuda", "triton", "reference"),
}

BACKEND_NAMES = tuple(_MODULES)


class BackendUnavailableError(RuntimeError):
    """Raised when a backend was asked for by name but cannot run here."""


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


_LOADED: dict[str, ModuleType] = {}


def _module(name: str) -> ModuleType:
    module = _LOADED.get(name)
    if module is None:
        if name not in _MODULES:
            raise ValueError(
                f"unknown LSTM backend {name!r}; choose one of {', '.join(('auto',) + BACKEND_NAMES)}"
            )
        # A plain dict lookup after the first import: torch.compile cannot trace importlib.
        module = _LOADED[name] = importlib.import_module(_MODULES[name])
    return module


def _reason(name: str, device_type: str | None = None) -> str | None:
    try:
        return _module(name).unavailable_reason(device_type)
    except ImportError as exc:  # a broken optional dependency must not break the registry
        return f"its module failed to import ({exc})"


def available_backends(device: str | torch.device | None = None) -> dict[str, BackendStatus]:
    """Every backend with whether it can run here (on ``device``'s type if given) and why not."""
    device_type = None if device is None else torch.device(device).type
    out = {}
    for name in BACKEND_NAMES:
        reason = _reason(name, device_type)
        note = getattr(_module(name), "note", None) if reason is None else None
        out[name] = BackendStatus(name, reason is None, reason, note(device_type) if note else None)
    return out


def get_backend(name: str, device: torch.device, dtype: torch.dtype) -> ModuleType:
    """The backend module that will run tensors of ``device``/``dtype``.

    ``auto`` takes the first of ``_AUTO_ORDER`` that can; a backend named explicitly raises
    ``BackendUnavailableError`` with its reason when it cannot.
    """
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string, got {type(name).__name__}")
    if name == "auto":
        for candidate in _AUTO_ORDER.get(device.type, ("reference",)):
            if _reason(candidate, device.type) is None and _module(candidate).supports(device.type, dtype) is None:
                return _module(candidate)
        return _module("reference")
    module = _module(name)
    reason = module.unavailable_reason(device.type) or module.supports(device.type, dtype)
    if reason is not None:
        raise BackendUnavailableError(f"LSTM backend {name!r} cannot run {dtype} tensors on {device.type}: {reason}")
    return module


def resolve_backend_name(name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> str:
    """The concrete backend name ``name`` stands for on that device and dtype (resolves ``auto``)."""
    return get_backend(name, torch.device(device), dtype).NAME
