"""The conformance suite: every registered backend that can run on the CPU, against the reference.

A new backend gets all of this by being registered and available; unavailable ones are skipped
with their reason.
"""
import pytest
import torch

import ecgkern
from ecgkern.backends import get_backend
from ecgkern.testing import check_backward_memory, check_module, check_recurrence, gradcheck_recurrence

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
    # The reference itself once indexed xg[t] per step: 20 s instead of 0.3 s per forward and
    # backward at T=1024, B=64, H=64, invisible to every value check.
    if check_backward_memory(_impl(backend).recurrence) is None:
        pytest.skip("torch's profiler does not expose its memory events in this version")


def test_backward_memory_check_catches_a_quadratic_backward():
    def indexed_loop(xg, w_hh, h0, c0):  # the reference as it was: xg[t] under autograd
        h, c, hs, cs = h0, c0, [], []
        for t in range(xg.shape[0]):
            i, f, g, o = (xg[t] + h @ w_hh.t()).chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            hs.append(h)
            cs.append(c)
        return torch.stack(hs), torch.stack(cs)

    with pytest.raises(AssertionError, match="faster than linearly in T"):
        if check_backward_memory(indexed_loop) is None:
            pytest.skip("torch's profiler does not expose its memory events in this version")


LAYER_CONFIGS = [
    dict(input_size=1, hidden_size=8, num_layers=1, bidirectional=False, batch_first=True),
    dict(input_size=3, hidden_size=17, num_layers=2, bidirectional=True, batch_first=False),
    dict(input_size=2, hidden_size=1, num_layers=3, bidirectional=False, batch_first=False),
    dict(input_size=3, hidden_size=6, num_layers=1, bidirectional=True, batch_first=True, bias=False),
]


@pytest.mark.parametrize("cfg", LAYER_CONFIGS,
                         ids=lambda c: f"I{c['input_size']}H{c['hidden_size']}L{c['num_layers']}{'bi' if c['bidirectional'] else ''}")
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
