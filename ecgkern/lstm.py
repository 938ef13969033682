"""``ecgkern.LSTM``: a drop-in for ``torch.nn.LSTM`` whose recurrence runs on a chosen backend.

Same constructor, parameter names, shapes, initialisation and return values as nn.LSTM
(``proj_size`` included), so ``load_state_dict`` works both ways; ``from_torch``/``to_torch``
convert whole modules. The module knows nothing of kernels: it holds the parameters and hands
them to ``ecgkern.functional.lstm``.

It is not a subclass of nn.LSTM (nn.LSTM's forward would bypass the backend), so code that
tests ``isinstance(m, nn.LSTM)`` (``torch.ao.quantization.quantize_dynamic``, init schemes)
does not see it: convert with ``to_torch()`` first.
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
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(proj_size, bool) or not isinstance(proj_size, int) or proj_size < 0:
            raise ValueError(f"proj_size must be a non-negative int (0 disables projections), got {proj_size!r}")
        if proj_size >= hidden_size:
            raise ValueError(f"proj_size must be smaller than hidden_size, got proj_size={proj_size} and hidden_size={hidden_size}")
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
        self.proj_size = proj_size
        self.backend = backend
        factory = {"device": device, "dtype": dtype}
        directions = 2 if bidirectional else 1
        real_hidden = proj_size or hidden_size  # the size of h (and of each direction's output)
        # nn.LSTM's names, per layer and direction: weight_ih, weight_hh[, bias_ih, bias_hh][, weight_hr].
        self._all_weights = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else real_hidden * directions
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                shapes = {f"weight_ih{suffix}": (4 * hidden_size, layer_input),
                          f"weight_hh{suffix}": (4 * hidden_size, real_hidden)}
                if bias:
                    shapes.update({f"bias_ih{suffix}": (4 * hidden_size,), f"bias_hh{suffix}": (4 * hidden_size,)})
                if proj_size:
                    shapes[f"weight_hr{suffix}"] = (proj_size, hidden_size)
                for name, shape in shapes.items():
                    setattr(self, name, nn.Parameter(torch.empty(shape, **factory)))
                self._all_weights.append(list(shapes))
        self.reset_parameters()

    # nn.LSTM's attributes that user code reads.
    mode = "LSTM"

    @property
    def _flat_weights_names(self) -> list[str]:
        return [name for names in self._all_weights for name in names]

    @property
    def _flat_weights(self) -> list[nn.Parameter]:
        return [getattr(self, name) for name in self._flat_weights_names]

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """The parameters per layer and direction, as ``torch.nn.LSTM.all_weights``."""
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def reset_parameters(self) -> None:
        """nn.LSTM's initialisation: every parameter uniform in [-1/sqrt(H), 1/sqrt(H)]."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def flatten_parameters(self) -> None:
        """No-op, for code written against nn.LSTM (ecgkern keeps no flat weight buffer)."""

    def layer_weights(self):
        """One ``(w_ih, w_hh, b_ih, b_hh)`` per layer and direction, in nn.LSTM's order; biases
        None without bias; with projections a fifth, ``w_hr``."""
        out = []
        for weights in self.all_weights:
            w_ih, w_hh = weights[:2]
            b_ih, b_hh = weights[2:4] if self.bias else (None, None)
            out.append((w_ih, w_hh, b_ih, b_hh, *weights[-1:]) if self.proj_size else (w_ih, w_hh, b_ih, b_hh))
        return out

    _CONFIG = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional", "proj_size")

    @classmethod
    def from_torch(cls, module: nn.LSTM, backend: str = "auto") -> LSTM:
        """An ``ecgkern.LSTM`` equal to ``module`` (a ``torch.nn.LSTM``): same configuration,
        a copy of its weights (and their requires_grad), on its device and dtype, in its
        training mode."""
        if not isinstance(module, nn.LSTM):
            raise TypeError(f"from_torch expects a torch.nn.LSTM, got {type(module).__name__}")
        weight = module.weight_ih_l0
        out = cls(**{k: getattr(module, k) for k in cls._CONFIG}, backend=backend, device=weight.device, dtype=weight.dtype)
        return _copy_state(module, out)

    def to_torch(self) -> nn.LSTM:
        """A ``torch.nn.LSTM`` equal to this module: same configuration, a copy of the weights
        (and their requires_grad), on the same device and dtype, in the same training mode (the
        backend choice is dropped)."""
        weight = self.weight_ih_l0
        out = nn.LSTM(**{k: getattr(self, k) for k in self._CONFIG}, device=weight.device, dtype=weight.dtype)
        return _copy_state(self, out)

    def __prepare_scriptable__(self):
        # torch.jit.script calls this on every submodule before compiling.
        raise RuntimeError(
            "ecgkern.LSTM does not support TorchScript (torch.jit.script, deprecated upstream). "
            "Use torch.compile or torch.export, torch.jit.trace, or script a torch.nn.LSTM made "
            "with .to_torch()"
        )

    # lengths is not keyword-only: the legacy ONNX exporter passes every default positionally.
    def forward(self, input, hx=None, lengths=None):
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
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        return s + f", backend={self.backend!r}"


def _copy_state(source: nn.Module, target: nn.Module) -> nn.Module:
    """``target`` with ``source``'s parameter values and requires_grad flags and training mode."""
    target.load_state_dict(source.state_dict())
    for p, q in zip(source.parameters(), target.parameters(), strict=True):  # same names, same order
        q.requires_grad_(p.requires_grad)
    return target.train(source.training)
