"""The ``compile`` backend: conformance, saturation, float64 gradcheck and, above all, that it
compiles once per device/dtype and never again for new T, new sizes, or train <-> no_grad."""
import pytest
import torch

from ecgkern.backends import compiled
from ecgkern.testing import check_recurrence, gradcheck_recurrence, random_recurrence_inputs

pytestmark = pytest.mark.skipif(compiled.unavailable_reason("cpu") is not None,
                                reason=f"compile backend unavailable: {compiled.unavailable_reason('cpu')}")


def _train_step(T, B, H, seed=0):
    xg, w_hh, h0, c0 = (t.requires_grad_(True) for t in random_recurrence_inputs(T, B, H, seed=seed))
    hs, cs = compiled.recurrence(xg, w_hh, h0, c0)
    (hs.sum() + cs.square().sum()).backward()
    return w_hh.grad


def _inference(T, B, H, seed=0):
    with torch.no_grad():
        return compiled.recurrence(*random_recurrence_inputs(T, B, H, seed=seed))


def test_compiles_once_for_training_and_inference_of_any_length_and_size():
    _train_step(5, 4, 8)  # compiles the forward and backward cells (float32, CPU) if not done yet
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    # fail_on_recompile turns any recompilation into an error, naming the guard that failed.
    with torch.compiler.set_stance("fail_on_recompile"):
        _inference(5, 4, 8)
        _train_step(11, 4, 8)
        _inference(2, 4, 8)
        _train_step(3, 6, 12)  # new batch and hidden size: dynamic shapes, same graphs
        with torch.inference_mode():
            compiled.recurrence(*random_recurrence_inputs(4, 5, 8))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == before


def test_matches_reference_outputs_and_gradients():
    check_recurrence(compiled.recurrence, shapes=((1, 2, 3), (7, 4, 16), (3, 1, 5)), scale=3.0, seed=11)


def test_float64_gradcheck():
    gradcheck_recurrence(compiled.recurrence, shapes=((3, 2, 3), (2, 1, 4)))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_saturated_inputs_stay_finite(sign):
    xg = torch.full((6, 3, 4 * 5), sign * 1e4, requires_grad=True)
    w_hh = torch.full((20, 5), sign * 1e4, requires_grad=True)
    h0 = torch.full((3, 5), 0.5, requires_grad=True)
    c0 = torch.full((3, 5), -0.5, requires_grad=True)
    hs, cs = compiled.recurrence(xg, w_hh, h0, c0)
    (hs.sum() + cs.sum()).backward()
    for name, t in (("hs", hs), ("cs", cs), ("grad xg", xg.grad), ("grad w_hh", w_hh.grad),
                    ("grad h0", h0.grad), ("grad c0", c0.grad)):
        assert torch.isfinite(t).all(), f"{name} has NaN/Inf for inputs of magnitude 1e4"
    assert (hs.abs() <= 1).all() and (cs.abs() <= 6 * 1.5).all()


def test_bad_inputs_are_rejected_with_the_reason():
    xg, w_hh, h0, c0 = random_recurrence_inputs(3, 2, 4)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        compiled.recurrence(xg, w_hh[:, :3], h0, c0)
    with pytest.raises(ValueError, match="h0 is torch.float64"):
        compiled.recurrence(xg, w_hh, h0.double(), c0)
    with pytest.raises(TypeError, match="complex64 is not supported"):
        compiled.recurrence(*(t.to(torch.complex64) for t in (xg, w_hh, h0, c0)))


def test_missing_cpp_compiler_is_reported():
    from torch._inductor import config

    # config.patch, not monkeypatch: undoing a monkeypatch on a config module can delete the entry.
    with config.patch({"cpp.cxx": (None, "no-such-cxx-ecgkern")}):
        reason = compiled.unavailable_reason("cpu")
    assert config.cpp.cxx != (None, "no-such-cxx-ecgkern")
    assert reason is not None and "C++ compiler" in reason and "no-such-cxx-ecgkern" in reason


def test_support_matrix():
    assert compiled.supports("cpu", torch.float32) is None
    assert compiled.supports("cuda", torch.float64) is None
    assert compiled.supports("cpu", torch.bfloat16) is None
    assert "not supported" in compiled.supports("cpu", torch.complex64)
