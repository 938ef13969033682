"""ONNX export: the layer becomes ONNX's own ``LSTM`` operator, one per layer.

``ecgkern.functional.lstm`` checks ``exporting()`` (``torch.onnx.is_in_onnx_export()``, set by
both exporters) and then, instead of a backend's recurrence:

- under the dynamo exporter (``torch.onnx.export(dynamo=True)``, which traces with
  ``torch.export``) emits ONNX ``LSTM`` nodes directly through ``torch.onnx.ops.symbolic_multi_out``
  with the weights reordered to ONNX's gate order (i, o, f, c; ours is i, f, g, o). torch's own
  LSTM op is not used there: tracing it fixes the sequence length into the graph.
- under the legacy TorchScript exporter (``dynamo=False``) calls torch's built-in LSTM op, the one
  ``torch.nn.LSTM`` calls, whose symbolic is ONNX ``LSTM`` with dynamic batch and time.

Either way the graph is independent of the backend the model was built with. Plain
``torch.export`` (``.pt2``) is not ONNX export and keeps ecgkern's own ops.
"""
from __future__ import annotations

import torch

try:  # the dynamo exporter's own flag, set for the whole of torch.onnx.export(dynamo=True)
    from torch.onnx._internal.exporter import _flags as _dynamo_exporter_flags
except ImportError:  # a torch without it: is_in_onnx_export() alone
    _dynamo_exporter_flags = None


def exporting() -> bool:
    """True while ``torch.onnx.export`` (either exporter) is tracing the model.

    ``torch.onnx.is_in_onnx_export()`` says so, except under dynamo, which folds that call to
    False; the dynamo exporter traces with dynamo when its first attempt (non-strict
    ``torch.export``) fails, so its flag is read directly as well (see ``export_lstm``).
    """
    if torch.onnx.is_in_onnx_export():
        return True
    return bool(getattr(_dynamo_exporter_flags, "_is_onnx_exporting", False))


def check_exportable(*, lengths, projected: bool) -> None:
    """Raise a clear error for what ONNX's LSTM operator cannot express."""
    if lengths is not None:
        raise NotImplementedError(
            "ONNX export of ecgkern.LSTM with lengths or a PackedSequence is not supported; "
            "export the model on padded input without lengths"
        )
    if projected:
        raise NotImplementedError(
            "ONNX export of an LSTM with proj_size > 0 is not supported: ONNX's LSTM operator has "
            "no projection (torch.nn.LSTM cannot export it either)"
        )


def export_lstm(input, h0, c0, weights, *, num_layers, bidirectional, dropout, training):
    """The multi-layer LSTM as the running exporter can express it; see the module docstring.

    ``input`` is time-major [T, B, I]; ``h0``/``c0`` [L*D, B, H]; ``weights`` one
    ``(w_ih, w_hh, b_ih, b_hh)`` per layer and direction. Returns ``(output, h_n, c_n)``.
    """
    if torch.jit.is_tracing():  # the legacy exporter traces with TorchScript
        return builtin_lstm(input, h0, c0, weights, num_layers=num_layers, bidirectional=bidirectional,
                            dropout=dropout, training=training)
    if torch.compiler.is_dynamo_compiling():
        # The dynamo exporter's strict fallback, tried only after non-strict torch.export failed
        # (the exporter reports that error first); dynamo cannot trace torch.onnx.ops.
        raise NotImplementedError(
            "ONNX export of ecgkern.LSTM runs through torch.export's non-strict mode, the dynamo "
            "exporter's first attempt; that attempt failed (see its error), and the strict (dynamo) "
            "fallback cannot emit ONNX's LSTM operator"
        )
    if training and dropout > 0 and num_layers > 1:
        raise NotImplementedError(
            "ONNX export of an LSTM with dropout in training mode is not supported; call model.eval() first"
        )
    directions = 2 if bidirectional else 1
    layer_input, h_n, c_n = input, [], []
    for layer in range(num_layers):
        k = slice(layer * directions, (layer + 1) * directions)
        out, h, c = onnx_lstm_node(layer_input, h0[k], c0[k], weights[k])
        layer_input = out
        h_n.append(h)
        c_n.append(c)
    return layer_input, torch.cat(h_n), torch.cat(c_n)


def _onnx_gate_order(w: torch.Tensor) -> torch.Tensor:
    """Rows of a [4H, ...] weight or [4H] bias from gate order i, f, g, o to ONNX's i, o, f, c."""
    i, f, g, o = w.chunk(4, dim=0)
    return torch.cat([i, o, f, g], dim=0)


def onnx_lstm_node(x, h0, c0, weights):
    """One layer (one or both directions) as a single ONNX ``LSTM`` node.

    ``x`` [T, B, I], ``h0``/``c0`` [D, B, H]; returns ``(out [T, B, D*H], h_n [D, B, H], c_n)``.
    """
    directions = len(weights)
    hidden = weights[0][1].shape[1]
    W = torch.stack([_onnx_gate_order(w[0]) for w in weights])
    R = torch.stack([_onnx_gate_order(w[1]) for w in weights])
    inputs = [x, W, R]
    if weights[0][2] is not None:
        inputs.append(torch.stack([torch.cat([_onnx_gate_order(w[2]), _onnx_gate_order(w[3])]) for w in weights]))
    else:
        inputs.append(None)
    inputs += [None, h0, c0]  # sequence_lens absent: every sequence runs for all T steps
    T, B = x.shape[0], x.shape[1]
    y, y_h, y_c = torch.onnx.ops.symbolic_multi_out(
        "LSTM", inputs,
        {"hidden_size": hidden, "direction": "bidirectional" if directions == 2 else "forward"},
        dtypes=[x.dtype] * 3,
        shapes=[(T, directions, B, hidden), (directions, B, hidden), (directions, B, hidden)],
    )
    out = y.permute(0, 2, 1, 3).reshape(T, B, directions * hidden)  # [T, D, B, H] -> [T, B, D*H]
    return out, y_h, y_c


def builtin_lstm(input, h0, c0, weights, *, num_layers, bidirectional, dropout, training):
    """torch's own LSTM op (as ``torch.nn.LSTM`` calls it) on time-major ``input`` [T, B, I].

    ``weights``: one ``(w_ih, w_hh, b_ih, b_hh)`` per layer and direction; biases all tensors
    or all None. Returns ``(output [T, B, D*H], h_n, c_n)``.
    """
    has_bias = weights[0][2] is not None
    flat = [w for layer_weights in weights for w in (layer_weights if has_bias else layer_weights[:2])]
    output, h_n, c_n = torch._VF.lstm(
        input, (h0, c0), flat, has_bias, num_layers, float(dropout), training, bidirectional, False
    )
    return output, h_n, c_n
