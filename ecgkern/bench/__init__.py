"""Benchmarks of every LSTM backend against torch.nn.LSTM and the reference loop.

``ecgkern bench`` (or ``python -m ecgkern bench``) calls :func:`main`; see ``--help``.
"""
from .cli import main

__all__ = ["main"]
