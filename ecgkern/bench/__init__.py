"""Benchmarks of every LSTM backend against torch.nn.LSTM and the reference loop.

``ecgkern bench`` and ``python -m benchmarks`` both call :func:`main`; see ``--help``.
"""
from .cli import main

__all__ = ["main"]
