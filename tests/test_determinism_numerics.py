"""Determinism and numerics, for every backend that runs on the CPU.

* the same seed and inputs give bit-identical outputs, states and gradients, run to run;
* inputs (and initial states) of magnitude 1e4 give no NaN/Inf anywhere, gradients included;
* a NaN in one sequence's input reaches that sequence only: every other sequence's output,
  final states and input/state gradients stay finite; NaN in padding past a sequence's length
  reaches nothing at all;
* float64 agrees with the float64 reference to 1e-10 at the largest drawn sizes.
"""
from __future__ import annotations

import pytest
import torch

import ecgkern
from ecgkern.testing import check_module

from _reliability import backend_dtypes, run_layer, size_caps

CONFIG = dict(input_size=3, hidden_size=17, num_layers=2, bidirectional=True)
B, T = 5, 9


def _model(backend, dtype, seed=0, **overrides):
    torch.manual_seed(seed)
    return ecgkern.LSTM(**{**CONFIG, **overrides}, backend=backend, dtype=dtype)


def _inputs(dtype, scale=1.0, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, CONFIG["input_size"], generator=g, dtype=torch.float64) * scale
    hx = tuple(torch.randn(4, B, CONFIG["hidden_size"], generator=g, dtype=torch.float64) * scale for _ in range(2))
    return x.to(dtype), tuple(s.to(dtype) for s in hx)



def test_bit_identical_run_to_run(backend):
    lengths = torch.tensor([9, 4, 1, 7, 9])
    for dtype in backend_dtypes(backend):
        runs = []
        for _ in range(3):
            x, hx = _inputs(dtype)
            runs.append(run_layer(_model(backend, dtype), x, hx, lengths))
        for name, first in runs[0].items():
            for k, again in enumerate(runs[1:], 2):
                if not torch.equal(first, again[name]):
                    diff = (first.double() - again[name].double()).abs().max().item()
                    raise AssertionError(f"{backend} {dtype}: {name} differs between run 1 and run {k} (max |diff| {diff:.3e})")


def test_magnitude_1e4_stays_finite(backend):
    for dtype in backend_dtypes(backend):
        for sign in (1.0, -1.0):
            x, hx = _inputs(dtype, scale=1e4 * sign)
            result = run_layer(_model(backend, dtype), x, hx)
            for name, t in result.items():
                bad = (~torch.isfinite(t)).sum().item()
                assert bad == 0, f"{backend} {dtype}: {name} has {bad} NaN/Inf entries for inputs of magnitude 1e4"


def _assert_only_sequence_is_nan(result: dict, seq: int, context: str) -> None:
    others = [b for b in range(B) if b != seq]
    # Batch is dim 1 of the time-major output, of the states and of their gradients.
    for name in ("output", "h_n", "c_n", "grad input", "grad h0", "grad c0"):
        t = result[name]
        assert torch.isfinite(t[:, others]).all(), f"{context}: NaN/Inf leaked from sequence {seq} into others' {name}"
        assert torch.isnan(t[:, seq]).any(), f"{context}: the NaN of sequence {seq} vanished from its {name}"


def test_nan_stays_in_its_sequence(backend):
    for dtype in backend_dtypes(backend):
        x, hx = _inputs(dtype)
        x[4, 2, 1] = float("nan")  # sequence 2, step 4
        result = run_layer(_model(backend, dtype), x, hx)
        _assert_only_sequence_is_nan(result, 2, f"{backend} {dtype}")


def test_nan_past_a_sequence_length_reaches_nothing(backend):
    lengths = torch.tensor([9, 4, 1, 7, 9])
    for dtype in backend_dtypes(backend):
        x, hx = _inputs(dtype)
        x[4:, 1] = float("nan")  # sequence 1 ends after step 3: all of this is padding
        x[1:, 2] = float("inf")
        result = run_layer(_model(backend, dtype), x, hx, lengths)
        for name, t in result.items():
            assert torch.isfinite(t).all(), f"{backend} {dtype}: NaN/Inf in padding leaked into {name}"


def test_float64_agrees_with_reference_to_1e10_at_the_largest_sizes(backend):
    if backend == "reference":
        pytest.skip("the reference is the oracle: comparing it to itself in float64 tests nothing")
    if torch.float64 not in backend_dtypes(backend):
        pytest.skip(f"backend {backend!r} has no float64 on CPU")
    batch, steps, input_size, hidden, _ = size_caps(backend)
    module = _model(backend, torch.float64, input_size=input_size, hidden_size=hidden, num_layers=1, bidirectional=False)
    lengths = [steps] + [1 + (7 * k) % steps for k in range(batch - 1)]
    check_module(module, batch=batch, steps=steps, lengths=lengths)  # float64 tolerance: 1e-10
