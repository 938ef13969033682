"""``ecgkern.LSTM``: a drop-in for ``torch.nn.LSTM`` whose recurrence runs on a chosen backend.

Same constructor, parameter names, shapes, initialisation and return values as nn.LSTM, so
``load_state_dict`` works both ways. The module knows nothing of kernels: it holds the
parameters and hands them to ``ecgkern.functional.lstm``.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .backends import BACKEND_NAMES
from .functional import lstm


class LSTM(nn.Module):
    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        backend: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__()
        if proj_size:
            raise NotImplementedError("ecgkern.LSTM does not implement proj_size (LSTM with projections); use torch.nn.LSTM for it")
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
            raise ValueError(f"dropout must be a number in [0, 1], got {dropout!r}")
        if backend != "auto" and backend not in BACKEND_NAMES:
            raise ValueError(f"unknown LSTM backend {backend!r}; choose one of {', '.join(('auto',) + BACKEND_NAMES)}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = 0
        self.backend = backend
        factory = {"device": device, "dtype": dtype}
        directions = 2 if bidirectional else 1
        self._weight_names = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * directions
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                names = [f"weight_ih{suffix}", f"weight_hh{suffix}"]
                setattr(self, names[0], nn.Parameter(torch.empty(4 * hidden_size, layer_input, **factory)))
                setattr(self, names[1], nn.Parameter(torch.empty(4 * hidden_size, hidden_size, **factory)))
                if bias:
                    names += [f"bias_ih{suffix}", f"bias_hh{suffix}"]
                    setattr(self, names[2], nn.Parameter(torch.empty(4 * hidden_size, **factory)))
                    setattr(self, names[3], nn.Parameter(torch.empty(4 * hidden_size, **factory)))
                self._weight_names.append(names)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.LSTM's initialisation: every parameter uniform in [-1/sqrt(H), 1/sqrt(H)]."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def flatten_parameters(self) -> None:
        """No-op, for code written against nn.LSTM (ecgkern keeps no flat weight buffer)."""

    def layer_weights(self):
        """One ``(w_ih, w_hh, b_ih, b_hh)`` per layer and direction, in nn.LSTM's order."""
        return [
            tuple(getattr(self, n) for n in names) if self.bias
            else (getattr(self, names[0]), getattr(self, names[1]), None, None)
            for names in self._weight_names
        ]

    def forward(self, input, hx=None, *, lengths=None):
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise ValueError("lengths cannot be combined with a PackedSequence input (it carries its own)")
            return self._forward_packed(input, hx)
        return lstm(
            input, hx, self.layer_weights(),
            num_layers=self.num_layers, bidirectional=self.bidirectional,
            dropout=self.dropout, training=self.training, batch_first=self.batch_first,
            lengths=lengths, backend=self.backend,
        )

    def _forward_packed(self, packed: PackedSequence, hx):
        # Unpack into original batch order; hx is in that order too, as for nn.LSTM.
        padded, lengths = pad_packed_sequence(packed, batch_first=False)
        output, (h_n, c_n) = lstm(
            padded, hx, self.layer_weights(),
            num_layers=self.num_layers, bidirectional=self.bidirectional,
            dropout=self.dropout, training=self.training, batch_first=False,
            lengths=lengths, backend=self.backend,
        )
        if packed.sorted_indices is not None:
            output = output.index_select(1, packed.sorted_indices)
            lengths = lengths.index_select(0, packed.sorted_indices.cpu())
        data = pack_padded_sequence(output, lengths, enforce_sorted=True).data
        return PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices), (h_n, c_n)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s + f", backend={self.backend!r}"
