"""Argument checks shared by the Python-level backends (the C++/CUDA ones check in C++)."""
from __future__ import annotations


def _check_like_xg(backend: str, xg, others: dict, reason: str | None) -> None:
    """Every tensor in ``others`` has xg's dtype and device, and the backend can run those."""
    for name, t in others.items():
        if t.dtype != xg.dtype or t.device != xg.device:
            raise ValueError(f"{backend} backend: {name} is {t.dtype} on {t.device}, expected {xg.dtype} on {xg.device} like xg")
    if reason is not None:
        raise TypeError(f"{backend} backend cannot run {xg.dtype} on {xg.device.type}: {reason}")


def check_recurrence_args(backend: str, xg, w_hh, h0, c0, reason: str | None) -> None:
    """Raise a clear error unless (xg, w_hh, h0, c0) form one valid recurrence call.

    ``reason``: why the backend cannot run xg's dtype/device (None when it can).
    """
    _check_like_xg(backend, xg, {"w_hh": w_hh, "h0": h0, "c0": c0}, reason)
    if xg.dim() != 3 or w_hh.dim() != 2:
        raise ValueError(f"{backend} backend: xg must be [T, B, 4H] and w_hh [4H, H], got {tuple(xg.shape)} and {tuple(w_hh.shape)}")
    T, B, G = xg.shape
    H = w_hh.shape[1]
    if G != 4 * H or tuple(w_hh.shape) != (G, H) or tuple(h0.shape) != (B, H) or tuple(c0.shape) != (B, H):
        raise ValueError(
            f"{backend} backend: inconsistent shapes xg {tuple(xg.shape)}, w_hh {tuple(w_hh.shape)}, "
            f"h0 {tuple(h0.shape)}, c0 {tuple(c0.shape)}; expected [T,B,4H], [4H,H], [B,H], [B,H]"
        )


def check_projected_args(backend: str, xg, w_hh, w_hr, h0, c0, reason: str | None) -> None:
    """Like ``check_recurrence_args`` for the recurrence with projections:
    xg [T, B, 4H], w_hh [4H, P], w_hr [P, H], h0 [B, P], c0 [B, H]."""
    _check_like_xg(backend, xg, {"w_hh": w_hh, "w_hr": w_hr, "h0": h0, "c0": c0}, reason)
    if xg.dim() != 3 or w_hr.dim() != 2:
        raise ValueError(f"{backend} backend: xg must be [T, B, 4H] and w_hr [P, H], got {tuple(xg.shape)} and {tuple(w_hr.shape)}")
    _, B, G = xg.shape
    P, H = w_hr.shape
    if G != 4 * H or tuple(w_hh.shape) != (G, P) or tuple(h0.shape) != (B, P) or tuple(c0.shape) != (B, H):
        raise ValueError(
            f"{backend} backend: inconsistent shapes xg {tuple(xg.shape)}, w_hh {tuple(w_hh.shape)}, "
            f"w_hr {tuple(w_hr.shape)}, h0 {tuple(h0.shape)}, c0 {tuple(c0.shape)}; "
            "expected [T,B,4H], [4H,P], [P,H], [B,P], [B,H]"
        )
