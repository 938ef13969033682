"""Shared helpers for the reliability tests (properties, numerics, DDP).

``run_layer`` runs one forward + backward of an nn.LSTM-like module and returns every tensor a
user could observe (output, final states, gradients of input, initial state and every
parameter) by name, so two runs can be compared name by name.
"""
from __future__ import annotations

import torch

from ecgkern.backends import get_backend

CPU = torch.device("cpu")
FLOAT_DTYPES = (torch.float32, torch.float64)
# Largest (batch, T, input, hidden, layers) the tests draw, per backend: triton runs under its
# CPU interpreter (slow), so it gets smaller shapes.
FULL_CAPS = (33, 50, 9, 70, 3)
SIZE_CAPS = {"triton": (9, 20, 9, 40, 2)}


def size_caps(backend: str) -> tuple:
    return SIZE_CAPS.get(backend, FULL_CAPS)


def backend_dtypes(backend: str) -> list[torch.dtype]:
    """The float dtypes ``backend`` runs on the CPU."""
    impl = get_backend(backend, CPU, torch.float32)
    return [d for d in FLOAT_DTYPES if impl.supports("cpu", d) is None]


def run_layer(module, x, hx=None, lengths=None, upstream=None) -> dict[str, torch.Tensor]:
    """Forward + backward; returns {name: tensor} for output, h_n, c_n and every gradient.

    ``upstream``: optional (d_out, d_h, d_c) float64 weights of the loss; default all ones.
    Inputs are cloned into fresh leaves, so the caller's tensors are never touched.
    """
    dtype = next(module.parameters()).dtype
    leaf = lambda t: t.detach().to(dtype).clone().requires_grad_(True)  # noqa: E731
    x = leaf(x)
    leaves = {"input": x}
    if hx is not None:
        hx = (leaf(hx[0]), leaf(hx[1]))
        leaves.update(h0=hx[0], c0=hx[1])
    module.zero_grad(set_to_none=True)
    kwargs = {} if lengths is None else {"lengths": lengths}
    out, (h, c) = module(x, hx, **kwargs)
    if upstream is None:
        upstream = (torch.ones((), dtype=torch.float64),) * 3
    loss = sum((t.double() * u).sum() for t, u in zip((out, h, c), upstream))
    loss.backward()
    result = {"output": out.detach(), "h_n": h.detach(), "c_n": c.detach()}
    result.update({f"grad {n}": t.grad for n, t in leaves.items()})
    result.update({f"grad {n}": p.grad for n, p in module.named_parameters()})
    return result
