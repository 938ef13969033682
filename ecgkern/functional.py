"""The functional LSTM: one layer = input projection (one GEMM) + a backend's recurrence.

``lstm`` is what ``ecgkern.LSTM`` calls; it takes the same inputs as ``torch.nn.LSTM.forward``
plus the flat weights, and validates every one of them before any kernel sees it.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from . import _build, _onnx
from ._validation import check_input, check_lengths, check_state, check_weights
from .backends import get_backend
from .backends._library import no_grad_can_reach

# (w_ih [4H, I], w_hh [4H, H], b_ih [4H] | None, b_hh [4H] | None), and with projections
# (nn.LSTM's proj_size = P) a fifth, w_hr [P, H], with w_hh then [4H, P].
LayerWeights = tuple


def input_projection(x: torch.Tensor, w_ih: torch.Tensor, b_ih, b_hh) -> torch.Tensor:
    """xg = x @ w_ih^T + (b_ih + b_hh) for all steps at once: [T, B, I] -> [T, B, 4H]."""
    T, B, _ = x.shape
    if x.device.type == "cpu" and not _build.cpu_gemm_is_fast(x.dtype):
        # A bfloat16/float16 GEMM without the CPU instructions: in float32, rounded once.
        widen = lambda t: None if t is None else t.float()  # noqa: E731
        return input_projection(x.float(), w_ih.float(), widen(b_ih), widen(b_hh)).to(x.dtype)
    flat = x.reshape(T * B, x.shape[2])
    if b_ih is None:
        xg = flat @ w_ih.t()
    elif x.shape[2] == 1 and x.device.type == "cpu" and x.dtype == torch.float32 and no_grad_can_reach((x, w_ih, b_ih, b_hh)):
        # One input feature (ECG5000) without gradients: an outer product, one pass over xg.
        # ATen's float32 GEMM with K = 1 takes ~3x as long at the ECG shape (its bfloat16 one does
        # not); in training addmm stays, as addcmul's backward costs more than that saves.
        xg = torch.addcmul(b_ih + b_hh, flat, w_ih.t())
    else:
        xg = torch.addmm(b_ih + b_hh, flat, w_ih.t())
    return xg.view(T, B, w_ih.shape[0])


def _time_mask(lengths: torch.Tensor, T: int, device) -> torch.Tensor:
    """[T, B, 1] boolean: True where step t is inside sequence b."""
    steps = torch.arange(T, device=device).unsqueeze(1)
    return (steps < lengths.to(device).unsqueeze(0)).unsqueeze(2)


def reverse_sequences(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Reverse each sequence of a time-major [T, B, F] tensor within its own length.

    Padding stays at the end, so a forward pass over the result is the reverse direction.
    The map is its own inverse.
    """
    if lengths is None:
        return x.flip(0)
    T = x.shape[0]
    steps = torch.arange(T, device=x.device).unsqueeze(1)
    lens = lengths.to(x.device).unsqueeze(0)
    index = torch.where(steps < lens, lens - 1 - steps, steps)  # [T, B]
    return x.gather(0, index.unsqueeze(2).expand_as(x))


def lstm_layer(x, h0, c0, weights: LayerWeights, recurrence, *, lengths=None, reverse=False, input_recurrence=None):
    """One direction of one layer over time-major ``x`` [T, B, I], with a backend's ``recurrence``
    (or, when given, its ``input_recurrence``, which does the input projection itself).

    Returns ``(out [T, B, H], h_n [B, H], c_n [B, H])``. With ``lengths``, positions past a
    sequence's end are zero in ``out`` and ``h_n``/``c_n`` are the states at its last valid step.
    With projections (a fifth weight ``w_hr`` [P, H]) ``recurrence`` is the backend's
    ``projected_recurrence`` and ``out``/``h_n`` have P features.
    """
    w_ih, w_hh, b_ih, b_hh = weights[:4]
    recurrent_weights = (w_hh, *weights[4:])
    mask = None
    if lengths is not None:
        mask = _time_mask(lengths, x.shape[0], x.device)
        # Padding never reaches a valid step, but NaN/Inf in it would leak into gradients.
        x = torch.where(mask, x, x.new_zeros(()))
    if reverse:
        x = reverse_sequences(x, lengths)
    if input_recurrence is not None:
        bias = w_ih.new_zeros(w_ih.shape[0]) if b_ih is None else b_ih + b_hh
        hs, cs = input_recurrence(x, w_ih, bias, w_hh, h0, c0)
    else:
        hs, cs = recurrence(input_projection(x, w_ih, b_ih, b_hh), *recurrent_weights, h0, c0)
    if lengths is None:
        h_n, c_n = hs[-1], cs[-1]
    else:
        last = (lengths.to(x.device) - 1).view(1, -1, 1)
        h_n = hs.gather(0, last.expand(1, *hs.shape[1:]))[0]
        c_n = cs.gather(0, last.expand(1, *cs.shape[1:]))[0]
        hs = torch.where(mask, hs, hs.new_zeros(()))
    if reverse:
        hs = reverse_sequences(hs, lengths)
    return hs, h_n, c_n


def _autocast_dtype(input) -> torch.dtype | None:
    """The dtype torch.autocast asks for on ``input``'s device type, or None when it is off."""
    if not isinstance(input, torch.Tensor) or not torch.amp.is_autocast_available(input.device.type):
        return None  # e.g. meta tensors: validation reports the device
    if not torch.is_autocast_enabled(input.device.type):
        return None
    return torch.get_autocast_dtype(input.device.type)


def _autocast_cast(t, dtype: torch.dtype):
    """A differentiable cast of an autocast-eligible tensor (floating point, not float64, as
    torch.autocast decides); anything else passes unchanged for validation to judge."""
    if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype not in (torch.float64, dtype):
        return t.to(dtype)
    return t


def lstm(
    input: torch.Tensor,
    hx: tuple[torch.Tensor, torch.Tensor] | None,
    weights: Sequence[LayerWeights],
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    dropout: float = 0.0,
    training: bool = False,
    batch_first: bool = False,
    lengths=None,
    backend: str = "auto",
):
    """Multi-layer LSTM with ``torch.nn.LSTM``'s semantics and return values.

    ``input``: [T, B, I] (or [B, T, I] with ``batch_first``) or unbatched [T, I].
    ``hx``: None or ``(h0, c0)``, each [num_layers * num_directions, B, H] ([L*D, H] unbatched).
    ``weights``: one ``(w_ih, w_hh, b_ih, b_hh)`` per layer and direction, in nn.LSTM's order
    (layer 0 forward, layer 0 reverse, layer 1 forward, ...); biases may be None. With
    projections (nn.LSTM's proj_size = P) each tuple ends with ``w_hr`` [P, H]; then h0, h_n
    and the output have P features per direction, c0 and c_n H.
    ``lengths``: optional valid length per sequence (ints >= 1, <= T); output past it is zero.
    Returns ``(output, (h_n, c_n))``.

    Under ``torch.autocast`` (nn.LSTM's mixed precision): the input, the states and every
    weight are cast to the autocast dtype (casts autograd differentiates, so float32
    parameters stay float32 and receive float32 gradients) and the output and states come back
    in that dtype; float64 tensors stay float64, as torch.autocast leaves them.
    """
    autocast_dtype = _autocast_dtype(input)
    if autocast_dtype is not None:
        cast = lambda t: _autocast_cast(t, autocast_dtype)  # noqa: E731
        input = cast(input)
        if isinstance(hx, (tuple, list)):
            hx = type(hx)(cast(s) for s in hx)
        weights = [tuple(cast(w) for w in layer) if isinstance(layer, (tuple, list)) else layer for layer in weights]
        with torch.autocast(input.device.type, enabled=False):
            return lstm(input, hx, weights, num_layers=num_layers, bidirectional=bidirectional, dropout=dropout,
                        training=training, batch_first=batch_first, lengths=lengths, backend=backend)
    num_directions = 2 if bidirectional else 1
    if len(weights) != num_layers * num_directions:
        raise ValueError(f"expected {num_layers * num_directions} weight tuples (num_layers * num_directions), got {len(weights)}")
    first = weights[0]
    if not (isinstance(first, (tuple, list)) and len(first) in (4, 5)
            and all(isinstance(w, torch.Tensor) and w.dim() == 2 for w in (*first[:2], *first[4:]))):
        raise ValueError("weights[0] must be a tuple (w_ih [4H, I], w_hh [4H, H], b_ih, b_hh[, w_hr [P, H]]) "
                         "with 2-D weight tensors")
    w_ih0, w_hh0 = first[0], first[1]
    projected = len(first) == 5
    hidden = w_hh0.shape[1]  # size of h: proj_size with projections
    cell = first[4].shape[1] if projected else hidden  # size of c: hidden_size
    check_input(input, w_ih0.shape[1], w_ih0)
    check_weights(weights, w_ih0.shape[1], hidden, cell, num_directions, input)
    batched = input.dim() == 3
    if not batched:
        input = input.unsqueeze(1)
        if lengths is not None:
            raise ValueError("lengths cannot be used with unbatched (2D) input")
    elif batch_first:
        input = input.transpose(0, 1)
    T, B = input.shape[0], input.shape[1]
    if T == 0:
        raise ValueError("LSTM: expected a sequence length > 0, got an input with 0 time steps")
    state_shape = (num_layers * num_directions, B, hidden)
    cell_shape = (num_layers * num_directions, B, cell)
    if hx is None:
        h0, c0 = input.new_zeros(state_shape), input.new_zeros(cell_shape)
    else:
        if isinstance(hx, torch.Tensor) or (isinstance(hx, (tuple, list)) and len(hx) == 1):
            raise ValueError("LSTM hx must be a tuple (h_0, c_0): h_0 was given without c_0")
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise ValueError(f"LSTM hx must be a tuple (h_0, c_0) of two tensors, got {type(hx).__name__}")
        h0, c0 = hx
        if not batched:
            for name, s, size in (("h_0", h0, hidden), ("c_0", c0, cell)):
                if isinstance(s, torch.Tensor) and s.dim() != 2:
                    expected = (num_layers * num_directions, size)
                    raise ValueError(f"LSTM {name} for unbatched input must be 2D {expected}, got shape {tuple(s.shape)}")
            h0, c0 = (s.unsqueeze(1) if isinstance(s, torch.Tensor) else s for s in (h0, c0))
        check_state("h_0", h0, state_shape, input, "proj_size" if projected else "hidden_size")
        check_state("c_0", c0, cell_shape, input)
    if lengths is not None:
        lengths = check_lengths(lengths, T, B, input.device)
    if not 0.0 <= dropout <= 1.0:
        raise ValueError(f"dropout must be in [0, 1], got {dropout}")

    if _onnx.exporting():
        _onnx.check_exportable(lengths=lengths, projected=projected)
        output, h_n, c_n = _onnx.export_lstm(
            input, h0, c0, weights, num_layers=num_layers, bidirectional=bidirectional,
            dropout=dropout, training=training,
        )
        return _caller_layout(output, h_n, c_n, batched=batched, batch_first=batch_first)

    # Resolved once per call, not per layer: availability checks may touch the file system.
    impl = get_backend(backend, input.device, input.dtype, projections=projected)
    recurrence = impl.projected_recurrence if projected else impl.recurrence
    fuses = getattr(impl, "fuses_input_projection", None)
    layer_input = input
    h_n, c_n = [], []
    for layer in range(num_layers):
        fused = not projected and fuses is not None and fuses(layer_input.shape[2], input.dtype)
        outs = []
        for direction in range(num_directions):
            k = layer * num_directions + direction
            out, h, c = lstm_layer(
                layer_input, h0[k], c0[k], weights[k], recurrence,
                lengths=lengths, reverse=direction == 1, input_recurrence=impl.input_recurrence if fused else None,
            )
            outs.append(out)
            h_n.append(h)
            c_n.append(c)
        layer_input = outs[0] if num_directions == 1 else torch.cat(outs, dim=2)
        if dropout > 0 and training and layer < num_layers - 1:
            layer_input = F.dropout(layer_input, p=dropout, training=True)
    return _caller_layout(layer_input, torch.stack(h_n), torch.stack(c_n), batched=batched, batch_first=batch_first)


def _caller_layout(output, h_n, c_n, *, batched: bool, batch_first: bool):
    """``(output, (h_n, c_n))`` from time-major results, in the layout the caller's input had."""
    if not batched:
        return output.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
    if batch_first:
        output = output.transpose(0, 1)
    return output, (h_n, c_n)
