"""Argument validation, in one place: the layer's inputs (``ecgkern.functional.lstm``) and the
recurrence calls of the Python-level backends (the C++/CUDA kernels check theirs in
``csrc/tensor_checks.h``). Every message names the problem and the value that caused it."""
from __future__ import annotations

from collections.abc import Sequence

import torch

# ---------------------------------------------------------------------------------------------
# The layer's inputs.


def check_input(input: torch.Tensor, input_size: int, weight: torch.Tensor) -> None:
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"LSTM input must be a torch.Tensor, got {type(input).__name__}")
    if input.dim() not in (2, 3):
        raise ValueError(f"LSTM: expected input to be 2D (unbatched) or 3D (batched), got {input.dim()}D with shape {tuple(input.shape)}")
    if not input.dtype.is_floating_point:
        raise TypeError(f"LSTM input must be a floating-point tensor, got dtype {input.dtype}")
    if input.shape[-1] != input_size:
        raise ValueError(f"LSTM input feature size mismatch: input.size(-1) is {input.shape[-1]}, expected input_size={input_size}")
    if input.device != weight.device:
        raise ValueError(f"LSTM input is on {input.device} but the weights are on {weight.device}; move one to the other")
    if input.dtype != weight.dtype:
        raise TypeError(f"LSTM input dtype {input.dtype} does not match weight dtype {weight.dtype}; "
                        f"convert the input with .to({weight.dtype}) or the model with .to({input.dtype})")


def check_tensor(label: str, t, shape: tuple, ref: torch.Tensor, hint: str = "") -> None:
    """``t`` must be a tensor of ``shape`` with ``ref``'s device and dtype; errors start with ``label``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{label} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{label} has shape {tuple(t.shape)}, expected {shape}{hint}")
    if t.device != ref.device:
        raise ValueError(f"{label} is on {t.device} but the input is on {ref.device}")
    if t.dtype != ref.dtype:
        raise TypeError(f"{label} dtype {t.dtype} does not match input dtype {ref.dtype}")


def check_state(name: str, state, expected: tuple, ref: torch.Tensor, size_name: str = "hidden_size") -> None:
    check_tensor(f"LSTM {name}", state, expected, ref, f" (num_layers * num_directions, batch, {size_name})")


def check_weights(weights: Sequence[tuple], input_size: int, hidden: int, cell: int, num_directions: int,
                   ref: torch.Tensor) -> None:
    """Every layer's (w_ih, w_hh, b_ih, b_hh[, w_hr]): nn.LSTM's shapes, and the input's dtype and device.

    ``hidden``: size of h (proj_size with projections); ``cell``: size of c (hidden_size).
    """
    projected = len(weights[0]) == 5
    for k, layer_weights in enumerate(weights):
        if not isinstance(layer_weights, (tuple, list)) or len(layer_weights) != len(weights[0]):
            raise ValueError(f"weights[{k}] must be a tuple (w_ih, w_hh, b_ih, b_hh{', w_hr' if projected else ''}), "
                             f"like weights[0], got {type(layer_weights).__name__}")
        layer_input = input_size if k < num_directions else hidden * num_directions
        b_ih, b_hh = layer_weights[2], layer_weights[3]
        if (b_ih is None) != (b_hh is None):
            raise ValueError(f"weights[{k}]: b_ih and b_hh must both be tensors or both be None")
        expected = {"w_ih": (4 * cell, layer_input), "w_hh": (4 * cell, hidden), "b_ih": (4 * cell,),
                    "b_hh": (4 * cell,), "w_hr": (hidden, cell)}
        for (name, shape), w in zip(expected.items(), layer_weights):
            if w is not None or name == "w_hr":
                check_tensor(f"weights[{k}] {name}", w, shape, ref)


def check_lengths(lengths, T: int, B: int, device: torch.device) -> torch.Tensor:
    if not isinstance(lengths, torch.Tensor):
        try:
            lengths = torch.as_tensor(lengths)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"lengths must be a 1-D integer tensor or sequence of ints: {exc}") from None
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must hold integers, got dtype {lengths.dtype}")
    if lengths.device.type != "cpu" and lengths.device != device:
        raise ValueError(f"lengths is on {lengths.device}; it must be on the CPU or on the input's device ({device})")
    if lengths.dim() != 1 or lengths.shape[0] != B:
        raise ValueError(f"lengths must have shape ({B},) (one per sequence in the batch), got {tuple(lengths.shape)}")
    if B > 0:
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 1:
            raise ValueError(f"lengths must be >= 1, got a length of {lo}")
        if hi > T:
            raise ValueError(f"lengths must be <= the sequence length {T}, got a length of {hi}")
    return lengths.to(torch.long)


# ---------------------------------------------------------------------------------------------
# A backend's recurrence arguments.


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
