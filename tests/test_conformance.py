"""The conformance suite: every registered backend that can run on the CPU, against the reference.

A new backend gets all of this by being registered and available; unavailable ones are skipped
with their reason.
"""
import pytest
import torch

import ecgkern
from ecgkern.backends import get_backend
from ecgkern.testing import check_module, check_recurrence, gradcheck_recurrence

CPU = torch.device("cpu")
FLOAT_DTYPES = (torch.float32, torch.float64)


def _impl(backend, dtype=torch.float32):
    return get_backend(backend, CPU, dtype)


def _dtypes(backend):
    return [d for d in FLOAT_DTYPES if _impl(backend).supports("cpu", d) is None]


def test_recurrence_outputs_and_gradients(backend):
    check_recurrence(_impl(backend).recurrence, dtypes=_dtypes(backend))


def test_recurrence_float64_gradcheck(backend):
    if torch.float64 not in _dtypes(backend):
        pytest.skip(f"backend {backend!r} has no float64 on CPU")
    impl = _impl(backend, torch.float64)
    # An interpreted backend (triton on CPU) is too slow for the full Jacobian: random projections.
    gradcheck_recurrence(impl.recurrence, fast_mode=getattr(impl, "note", lambda d: None)("cpu") is not None)


def test_recurrence_no_grad_forward(backend):
    check_recurrence(_impl(backend).recurrence, dtypes=_dtypes(backend), check_grads=False, seed=7)


def test_recurrence_saturated_inputs_stay_finite(backend):
    impl = _impl(backend)
    for sign in (1.0, -1.0):
        xg = torch.full((4, 3, 4 * 5), sign * 1e4, requires_grad=True)
        w_hh = torch.full((20, 5), sign * 1e4, requires_grad=True)
        h0 = torch.zeros(3, 5, requires_grad=True)
        c0 = torch.zeros(3, 5, requires_grad=True)
        hs, cs = impl.recurrence(xg, w_hh, h0, c0)
        (hs.sum() + cs.sum()).backward()
        for name, t in (("hs", hs), ("cs", cs), ("grad xg", xg.grad), ("grad w_hh", w_hh.grad)):
            assert torch.isfinite(t).all(), f"{backend}: {name} has NaN/Inf for inputs of magnitude 1e4"


def test_recurrence_backward_allocates_linearly_in_T(backend):
    # A per-step ``xg[t]`` under autograd makes the backward write a whole zero [T, B, 4H]
    # gradient for every step (quadratic in T: 80 s instead of 0.3 s at T=1024, B=64, H=64).
    # Here T=256: a quadratic backward allocates ~256x the size of xg, a linear one a few x.
    from ecgkern.bench.measure import cpu_allocation_deltas

    T, B, H = 256, 4, 8
    gen = torch.Generator().manual_seed(0)
    xg = torch.randn(T, B, 4 * H, generator=gen, requires_grad=True)
    w_hh = (torch.randn(4 * H, H, generator=gen) * 0.3).requires_grad_(True)
    h0 = torch.zeros(B, H, requires_grad=True)
    c0 = torch.zeros(B, H, requires_grad=True)
    hs, cs = _impl(backend).recurrence(xg, w_hh, h0, c0)
    loss = hs.sum() + cs.sum()
    deltas = cpu_allocation_deltas(lambda: torch.autograd.grad(loss, (xg, w_hh, h0, c0)))
    if deltas is None:
        pytest.skip("torch's profiler does not expose its memory events in this version")
    allocated = sum(d for d in deltas if d > 0)
    xg_bytes = xg.numel() * xg.element_size()
    assert allocated <= 16 * xg_bytes, (
        f"{backend}: the backward at T={T} allocated {allocated / xg_bytes:.0f}x the size of xg "
        f"({allocated} bytes): memory work grows faster than linearly in T"
    )


LAYER_CONFIGS = [
    dict(input_size=1, hidden_size=8, num_layers=1, bidirectional=False, batch_first=True),
    dict(input_size=3, hidden_size=17, num_layers=2, bidirectional=True, batch_first=False),
    dict(input_size=2, hidden_size=1, num_layers=3, bidirectional=False, batch_first=False),
    dict(input_size=3, hidden_size=6, num_layers=1, bidirectional=True, batch_first=True, bias=False),
]


@pytest.mark.parametrize("cfg", LAYER_CONFIGS, ids=lambda c: f"I{c['input_size']}H{c['hidden_size']}L{c['num_layers']}{'bi' if c['bidirectional'] else ''}")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["f32", "f64"])
def test_layer_against_reference(backend, cfg, dtype):
    if dtype not in _dtypes(backend):
        pytest.skip(f"backend {backend!r} does not support {dtype} on CPU")
    torch.manual_seed(0)
    module = ecgkern.LSTM(**cfg, backend=backend).to(dtype)
    check_module(module, batch=3, steps=5)
    check_module(module, batch=1, steps=1, with_state=False)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["f32", "f64"])
def test_layer_with_lengths(backend, dtype):
    if dtype not in _dtypes(backend):
        pytest.skip(f"backend {backend!r} does not support {dtype} on CPU")
    torch.manual_seed(0)
    module = ecgkern.LSTM(3, 6, num_layers=2, bidirectional=True, backend=backend).to(dtype)
    check_module(module, batch=4, steps=6, lengths=[6, 2, 1, 5])
