"""Errors of the backend layer (a leaf module: imports nothing from ecgkern)."""
from __future__ import annotations


class BackendUnavailableError(RuntimeError):
    """Raised when a backend was asked for by name (or picked) but cannot run here."""
