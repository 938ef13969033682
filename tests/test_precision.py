"""bfloat16/float16: every backend that runs the dtype on CPU against the float64 reference
(tolerance rule: ``ecgkern.testing.reduced_precision_tolerance``), and torch.autocast with
nn.LSTM's contract (dtype of the results, float32 gradients of float32 parameters)."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ecgkern
from ecgkern.backends import get_backend, resolve_backend_name
from ecgkern.testing import assert_close, check_module, check_recurrence, random_recurrence_inputs, reduced_precision_tolerance

CPU = torch.device("cpu")
REDUCED = (torch.bfloat16, torch.float16)
# Short and long: the tolerance grows with sqrt(T), so both ends of the rule are exercised.
SHAPES = ((1, 3, 4), (6, 1, 17), (9, 3, 33), (40, 4, 16))


def _impl_for(backend, dtype):
    impl = get_backend(backend, CPU, torch.float32)
    reason = impl.supports("cpu", dtype)
    if reason is not None:
        pytest.skip(f"backend {backend!r} does not run {dtype} on CPU: {reason}")
    return impl


@pytest.mark.parametrize("dtype", REDUCED, ids=["bf16", "f16"])
def test_recurrence_reduced_precision(backend, dtype):
    check_recurrence(_impl_for(backend, dtype).recurrence, shapes=SHAPES, dtypes=[dtype])


@pytest.mark.parametrize("dtype", REDUCED, ids=["bf16", "f16"])
def test_recurrence_reduced_precision_no_grad(backend, dtype):
    check_recurrence(_impl_for(backend, dtype).recurrence, shapes=SHAPES, dtypes=[dtype], check_grads=False, seed=3)


@pytest.mark.parametrize("dtype", REDUCED, ids=["bf16", "f16"])
def test_converted_module_reduced_precision(backend, dtype):
    _impl_for(backend, dtype)
    module = ecgkern.LSTM(3, 5, num_layers=2, bidirectional=True, backend=backend).to(dtype)
    check_module(module, steps=7)


def test_tolerance_rule_rejects_an_error_of_a_few_roundoffs_more():
    truth = torch.linspace(-1, 1, 11, dtype=torch.float64)
    rtol, atol = reduced_precision_tolerance(torch.bfloat16, 16, truth)
    assert rtol == pytest.approx(4 * 2 ** -8 * 4) and atol == rtol
    assert_close("x", truth + 0.5 * atol, truth, rtol, atol)
    with pytest.raises(AssertionError, match="differs from the reference"):
        assert_close("x", truth + 3 * atol, truth, rtol, atol)


@pytest.mark.parametrize("dtype", REDUCED, ids=["bf16", "f16"])
def test_auto_runs_reduced_precision_on_cpp(dtype):
    if get_backend("cpp", CPU, torch.float32).unavailable_reason("cpu") is not None:
        pytest.skip("the cpp backend cannot run here")
    assert resolve_backend_name("auto", "cpu", dtype) == "cpp"


# ---------------------------------------------------------------------------------------------
# torch.autocast


def _pair(backend, seed=0):
    torch.manual_seed(seed)
    ours = ecgkern.LSTM(3, 6, num_layers=2, bidirectional=True, batch_first=True, backend=backend)
    theirs = torch.nn.LSTM(3, 6, num_layers=2, bidirectional=True, batch_first=True)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _autocast_step(module, x, hx, dtype):
    x = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=dtype):
        out, (h, c) = module(x, hx)
    loss = (out.double() * out.double().detach().cos()).sum() + h.double().square().sum() + c.double().sum()
    loss.backward()
    return out, h, c, x.grad, {n: p.grad for n, p in module.named_parameters()}


def test_autocast_bf16_matches_nn_lstm(backend):
    _impl_for(backend, torch.bfloat16)
    ours, theirs = _pair(backend)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 7, 3, generator=g)
    hx = tuple(torch.randn(4, 4, 6, generator=g) * 0.5 for _ in range(2))
    got = _autocast_step(ours, x, hx, torch.bfloat16)
    want = _autocast_step(theirs, x, hx, torch.bfloat16)
    for name, a, b in zip(("output", "h_n", "c_n"), got[:3], want[:3]):
        assert a.dtype == b.dtype == torch.bfloat16, f"{name}: {a.dtype}, nn.LSTM gives {b.dtype}"
        # Each is within the rule of the truth, so within twice the rule of each other.
        rtol, atol = reduced_precision_tolerance(torch.bfloat16, 7, b)
        assert_close(name, a, b, 2 * rtol, 2 * atol, f"{backend} under autocast vs nn.LSTM")
    assert got[3].dtype == want[3].dtype == torch.float32
    for name, grad in got[4].items():
        other = want[4][name]
        assert grad.dtype == torch.float32 and other.dtype == torch.float32, f"grad {name}: {grad.dtype}"
        rtol, atol = reduced_precision_tolerance(torch.bfloat16, 7, other, grad=True)
        assert_close(f"grad {name}", grad, other, 2 * rtol, 2 * atol, f"{backend} under autocast vs nn.LSTM")
    assert all(p.dtype == torch.float32 for p in ours.parameters())


@pytest.mark.parametrize("dtype", REDUCED, ids=["bf16", "f16"])
def test_autocast_against_the_float64_truth(backend, dtype):
    """Under autocast the layer computes what a float64 layer computes on the rounded weights
    and inputs (nn.LSTM itself cannot run float16 autocast on CPU, so the truth is the judge)."""
    _impl_for(backend, dtype)
    ours, _ = _pair(backend, seed=2)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 6, 3, generator=g)
    out, h, c, _, grads = _autocast_step(ours, x, None, dtype)
    twin = ecgkern.LSTM(3, 6, num_layers=2, bidirectional=True, batch_first=True, backend="reference", dtype=torch.float64)
    twin.load_state_dict({k: v.to(dtype).double() for k, v in ours.state_dict().items()})
    tout, th, tc, _, tgrads = _autocast_step(twin, x.to(dtype).double(), None, dtype)  # float64 ignores autocast
    for name, a, b in (("output", out, tout), ("h_n", h, th), ("c_n", c, tc)):
        assert a.dtype == dtype, f"{name} came back as {a.dtype} under {dtype} autocast"
        assert_close(name, a, b, *reduced_precision_tolerance(dtype, 6, b), f"{backend} {dtype} autocast")
    for name, grad in grads.items():
        assert grad.dtype == torch.float32
        assert_close(f"grad {name}", grad, tgrads[name], *reduced_precision_tolerance(dtype, 6, tgrads[name], grad=True))


def test_autocast_leaves_float64_alone():
    module = ecgkern.LSTM(2, 3, backend="reference", dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (h, c) = module(torch.randn(4, 1, 2, dtype=torch.float64))
    assert out.dtype == h.dtype == c.dtype == torch.float64


@pytest.mark.parametrize("mode", ["compile", "export"])
def test_autocast_holds_under_compile_and_export(mode):
    if get_backend("cpp", CPU, torch.float32).unavailable_reason("cpu") is not None:
        pytest.skip("the cpp backend cannot run here")
    torch.manual_seed(0)
    module = ecgkern.LSTM(3, 5, backend="cpp")
    x = torch.randn(6, 2, 3)

    class Autocasted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = module

        def forward(self, x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return self.lstm(x)[0]

    eager = Autocasted()(x)
    if mode == "compile":
        torch._dynamo.reset()
        got = torch.compile(Autocasted(), fullgraph=True)(x)
    else:
        got = torch.export.export(Autocasted(), (x,)).module()(x)
    assert eager.dtype == got.dtype == torch.bfloat16
    # Inductor may fuse and round the casts around the op differently: equal within the rule.
    assert_close("output", got, eager, *reduced_precision_tolerance(torch.bfloat16, 6, eager), mode)


def test_bf16_dot_products_are_built_only_for_cpus_that_have_them(monkeypatch):
    from ecgkern import _build

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    for has in (True, False):
        monkeypatch.setattr(_build, "cpu_has_avx512_bf16", lambda has=has: has)
        assert ("-mavx512bf16" in _build.cpu_capability_flags()) is has
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(_build, "cpu_has_avx512_bf16", lambda: True)
    assert "-mavx512bf16" not in _build.cpu_capability_flags()


@pytest.mark.parametrize("op", ["recurrence", "input_recurrence"])
def test_ops_called_directly_follow_autocast(op):
    """The registered ops have autocast kernels: called on float32 tensors under CPU autocast they
    compute in bfloat16 and return it, and float32 leaves get float32 gradients equal to the
    explicitly cast call's."""
    from ecgkern.backends import cpp

    xg, w_hh, h0, c0 = random_recurrence_inputs(5, 3, 8, dtype=torch.float32, seed=3)
    if op == "input_recurrence":  # (x, w_ih, bias, w_hh, h0, c0) with two input features
        g = torch.Generator().manual_seed(4)
        inputs = (torch.randn(5, 3, 2, generator=g), 0.3 * torch.randn(32, 2, generator=g),
                  0.1 * torch.randn(32, generator=g), w_hh, h0, c0)
    else:
        inputs = (xg, w_hh, h0, c0)
    fn = getattr(cpp, op)
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hs, cs = fn(*leaves)
    assert hs.dtype == cs.dtype == torch.bfloat16
    (hs.float().sum() + cs.float().pow(2).sum()).backward()
    cast = [t.clone().requires_grad_(True) for t in inputs]
    want_hs, want_cs = fn(*(t.to(torch.bfloat16) for t in cast))
    (want_hs.float().sum() + want_cs.float().pow(2).sum()).backward()
    assert torch.equal(hs, want_hs) and torch.equal(cs, want_cs)
    for got, want in zip(leaves, cast):
        assert got.grad.dtype == torch.float32
        torch.testing.assert_close(got.grad, want.grad, rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():  # the inference op too
        assert fn(*inputs)[0].dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------
# 16-bit GEMMs on CPUs without the instructions


class _GemmDtypes(TorchDispatchMode):
    """Records the dtype of every mm/addmm that runs inside it."""

    def __enter__(self):
        self.dtypes = set()
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm):
            self.dtypes.add(args[1].dtype)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("capability, avx512_fp16, fast_bf16, fast_f16", [
    ("AVX512", False, True, False), ("AVX512", True, True, True), ("AVX2", True, False, False), ("DEFAULT", False, False, False),
])
def test_which_16_bit_gemms_run_natively(monkeypatch, capability, avx512_fp16, fast_bf16, fast_f16):
    from ecgkern import _build
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.cpu, "_is_avx512_fp16_supported", lambda: avx512_fp16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_fp16_supported", lambda: False, raising=False)
    assert _build.cpu_gemm_is_fast(torch.bfloat16) is fast_bf16
    assert _build.cpu_gemm_is_fast(torch.float16) is fast_f16
    assert _build.cpu_gemm_is_fast(torch.float32) and _build.cpu_gemm_is_fast(torch.float64)


@pytest.mark.parametrize("dtype", REDUCED, ids=["bf16", "f16"])
@pytest.mark.parametrize("bias", [True, False])
def test_slow_16_bit_input_projection_runs_in_float32(monkeypatch, dtype, bias):
    # Where ATen's 16-bit GEMM is a slow loop, the layer's input projection is the float32 GEMM
    # of the widened operands, rounded once; gradients come back in the storage dtype.
    from ecgkern import _build
    from ecgkern.functional import input_projection
    monkeypatch.setattr(_build, "cpu_gemm_is_fast", lambda d: d not in REDUCED)
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(5, 3, 4, generator=g).to(dtype), torch.randn(8, 4, generator=g).to(dtype).requires_grad_()
    b_ih, b_hh = (torch.randn(8, generator=g).to(dtype).requires_grad_() if bias else None for _ in range(2))
    with _GemmDtypes() as gemms:
        xg = input_projection(x, w, b_ih, b_hh)
        xg.float().sum().backward()
    assert gemms.dtypes and gemms.dtypes <= {torch.float32}, f"GEMMs ran in {gemms.dtypes}"
    assert xg.dtype == dtype and xg.shape == (5, 3, 8)
    want = x.float().reshape(15, 4) @ w.detach().float().t()
    if bias:
        want = want + (b_ih.detach().float() + b_hh.detach().float())
    torch.testing.assert_close(xg.detach(), want.view(5, 3, 8).to(dtype), rtol=2 ** -7, atol=0)
    assert w.grad.dtype == dtype
    torch.testing.assert_close(w.grad.float(), x.float().reshape(15, 4).sum(0).expand(8, 4), rtol=2 ** -7, atol=0)


@pytest.mark.parametrize("dtype", REDUCED, ids=["bf16", "f16"])
def test_input_projection_gradients_follow_the_16_bit_gemm_rule(monkeypatch, dtype):
    # The x gradient of the op that projects inside the kernels is a GEMM over dxg: in float32,
    # rounded once, where the CPU has no instructions for the 16-bit GEMM (as above). (Its w_ih
    # and bias gradients come from the kernel: tests/test_cpp_backend.py.)
    from ecgkern import _build
    from ecgkern.backends import _ops
    monkeypatch.setattr(_build, "cpu_gemm_is_fast", lambda d: d not in REDUCED)
    g = torch.Generator().manual_seed(0)
    values = {"dxg": torch.randn(4, 3, 8, generator=g).to(dtype), "x": torch.randn(4, 3, 2, generator=g).to(dtype),
              "w_ih": torch.randn(8, 2, generator=g).to(dtype)}
    with _GemmDtypes() as gemms:
        dx = _ops._input_projection_tails["x"](values)
    assert gemms.dtypes == {torch.float32}
    assert dx.dtype == dtype and dx.shape == (4, 3, 2)
    dxg = values["dxg"].float().flatten(0, 1)
    torch.testing.assert_close(dx.float(), (dxg @ values["w_ih"].float()).view(4, 3, 2).to(dtype).float())
