"""The ``triton`` backend: step kernels and persistent kernels against the reference, float64
gradcheck, saturation, custom-op registration and torch.compile of a model using it.

On a machine without CUDA everything runs through Triton's interpreter (slow), so the shapes
here are tiny; on a GPU the same tests run the compiled kernels on CUDA tensors.
"""
import functools

import pytest
import torch

import ecgkern
from ecgkern.backends import resolve_backend_name
from ecgkern.backends import triton as tb
from ecgkern.testing import check_module, check_recurrence, random_recurrence_inputs

DEVICE = "cuda" if torch.cuda.is_available() and not tb.INTERPRETED else "cpu"
pytestmark = pytest.mark.skipif(tb.unavailable_reason(DEVICE) is not None,
                                reason=f"triton backend unavailable: {tb.unavailable_reason(DEVICE)}")
PATHS = {"step": False, "persistent": True}


@pytest.mark.parametrize("path", PATHS)
def test_matches_reference(path):
    rec = functools.partial(tb.recurrence, persistent=PATHS[path])
    # B=17 spans two batch blocks of the persistent kernel; H=20 is padded to 32 there.
    check_recurrence(rec, shapes=((1, 1, 1), (3, 2, 5), (2, 17, 20)), scale=2.0, seed=3, device=DEVICE)


@pytest.mark.parametrize("path", PATHS)
def test_float64_gradcheck(path):
    rec = functools.partial(tb.recurrence, persistent=PATHS[path])
    inputs = [t.requires_grad_(True) for t in random_recurrence_inputs(3, 2, 3, dtype=torch.float64, device=DEVICE, seed=5)]
    # fast_mode: a few directional derivatives instead of the full Jacobian (interpreter speed).
    assert torch.autograd.gradcheck(rec, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_saturated_inputs_stay_finite(path, sign):
    xg = torch.full((3, 2, 4 * 5), sign * 1e4, device=DEVICE, requires_grad=True)
    w_hh = torch.full((20, 5), sign * 1e4, device=DEVICE, requires_grad=True)
    h0 = torch.full((2, 5), 0.5, device=DEVICE, requires_grad=True)
    c0 = torch.full((2, 5), -0.5, device=DEVICE, requires_grad=True)
    hs, cs = tb.recurrence(xg, w_hh, h0, c0, persistent=PATHS[path])
    (hs.sum() + cs.sum()).backward()
    for name, t in (("hs", hs), ("cs", cs), ("grad xg", xg.grad), ("grad w_hh", w_hh.grad),
                    ("grad h0", h0.grad), ("grad c0", c0.grad)):
        assert torch.isfinite(t).all(), f"{path}: {name} has NaN/Inf for inputs of magnitude 1e4"
    # Saturated gates are exactly 0 or 1 (and g = +-1): c grows by at most 1 per step.
    assert (hs.abs() <= 1).all() and (cs.abs() <= 3.5).all()


def test_custom_op_registration_passes_opcheck():
    xg, w_hh, h0, c0 = (t.requires_grad_(True) for t in random_recurrence_inputs(2, 2, 3, device=DEVICE))
    torch.library.opcheck(torch.ops.ecgkern.triton_recurrence.default, (xg, w_hh, h0, c0, False),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_torch_compile_fullgraph_through_the_op():
    inputs = [t.requires_grad_(True) for t in random_recurrence_inputs(3, 2, 4, device=DEVICE, seed=2)]

    def loss(xg, w_hh, h0, c0):
        hs, cs = tb.recurrence(xg, w_hh, h0, c0)
        return (hs * hs).sum() + cs.sum()

    # aot_eager: dynamo + AOTAutograd around the opaque custom op, without inductor's C++ build.
    got = torch.autograd.grad(torch.compile(loss, backend="aot_eager", fullgraph=True)(*inputs), inputs)
    want = torch.autograd.grad(loss(*inputs), inputs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_torch_compile_of_a_model_using_it():
    torch.manual_seed(0)
    model = ecgkern.LSTM(2, 4, backend="triton").to(DEVICE)
    x = torch.randn(3, 2, 2, device=DEVICE)
    out, (h, c) = torch.compile(model, backend="aot_eager")(x)
    out.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref_out, (ref_h, ref_c) = model(x)
    ref_out.sum().backward()
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(c, ref_c)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad)


def test_layer_with_lengths_and_two_directions():
    torch.manual_seed(0)
    module = ecgkern.LSTM(2, 3, num_layers=1, bidirectional=True, backend="triton").to(DEVICE)
    check_module(module, batch=3, steps=4, lengths=[4, 1, 3])


def test_interpreter_is_usable_but_never_auto_on_cpu():
    if not tb.INTERPRETED:
        pytest.skip("Triton runs compiled kernels here, not the interpreter")
    assert tb.unavailable_reason("cpu") is None and tb.supports("cpu", torch.float32) is None
    assert "interpreter" in tb.note("cpu")
    assert resolve_backend_name("auto", "cpu", torch.float32) != "triton"
    assert "CUDA only" in tb.supports("cpu", torch.bfloat16)


def test_missing_triton_is_reported(monkeypatch):
    monkeypatch.setattr(tb, "_kernels", {"error": "No module named 'triton'"})
    reason = tb.unavailable_reason("cpu")
    assert reason is not None and "Triton cannot be imported" in reason


def test_bad_inputs_are_rejected_with_the_reason():
    xg, w_hh, h0, c0 = random_recurrence_inputs(2, 2, 4, device=DEVICE)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        tb.recurrence(xg, w_hh, h0[:, :3], c0)
    with pytest.raises(ValueError, match="w_hh is torch.float64"):
        tb.recurrence(xg, w_hh.double(), h0, c0)
    with pytest.raises(TypeError, match="torch.int32"):
        tb.recurrence(*(t.int() for t in (xg, w_hh, h0, c0)))


def test_row_counts_past_int32_are_refused_before_any_launch():
    H = 2
    xg = torch.zeros(1, 1, 4 * H).expand(2**16, 2**15, 4 * H)  # T*B = 2^31 rows, no memory behind them
    w_hh, h0, c0 = torch.zeros(4 * H, H), torch.zeros(2**15, H), torch.zeros(2**15, H)
    with pytest.raises(ValueError, match=r"T\*B = 2147483648"):
        tb.recurrence(xg, w_hh, h0, c0)
