"""The cpp backend: custom-op contracts, strided inputs, input checks, build and cache behaviour.

Numerical conformance over the full grid also runs in tests/test_conformance.py; here are the
checks specific to the C++ extension.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import ecgkern
from ecgkern import _build
from ecgkern.backends import cpp, reference
from ecgkern.testing import check_module, check_recurrence, gradcheck_recurrence, random_recurrence_inputs

_REASON = cpp.unavailable_reason()
needs_cpp = pytest.mark.skipif(_REASON is not None, reason=f"cpp backend unavailable: {_REASON}")

ops = torch.ops.ecgkern


@needs_cpp
def test_conformance_odd_shapes():
    # (T, B, H): B=1, T=1, H=1, H=17 (not a multiple of the vector width), B not a multiple
    # of the register tile, H past one 4-vector column group in the backward, H past one
    # k block of the forward GEMM (128 with AVX-512; 150, 270: a partial last block).
    shapes = ((1, 1, 1), (1, 3, 4), (6, 1, 17), (5, 4, 8), (9, 3, 33), (4, 13, 17), (3, 7, 70), (20, 5, 64),
              (3, 7, 150), (2, 3, 270))
    check_recurrence(cpp.recurrence, shapes=shapes)


@needs_cpp
def test_conformance_saturated_gates():
    # Large pre-activations drive sigmoid/tanh into saturation (the clamped tanh path).
    check_recurrence(cpp.recurrence, shapes=((7, 3, 9), (5, 2, 16)), scale=12.0)


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_reduced_precision_activations_saturate_and_pass_nan(dtype):
    # bfloat16/float16 storage has its own activations (exp as 2^n * polynomial, a reciprocal
    # estimate): saturated gates within the tolerance rule, odd widths (the masked tail)...
    check_recurrence(cpp.recurrence, shapes=((7, 3, 9), (5, 7, 33)), dtypes=[dtype], scale=12.0)
    # ...pre-activations far past the clamp give finite, saturated results...
    xg, w, h0, c0 = random_recurrence_inputs(3, 4, 17, dtype=dtype)
    for sign in (1.0, -1.0):
        hs, cs = cpp.recurrence(xg * 0 + sign * 1e4, w, h0, c0)
        assert torch.isfinite(hs).all() and torch.isfinite(cs).all(), f"{dtype}: NaN/Inf from saturated gates"
        want_hs, want_cs = (t.to(dtype) for t in reference.recurrence(*(t.double() for t in (xg * 0 + sign * 1e4, w, h0, c0))))
        torch.testing.assert_close(hs, want_hs, rtol=2 ** -7, atol=2 ** -7)
        torch.testing.assert_close(cs, want_cs, rtol=2 ** -7, atol=2 ** -7)
    # ...and a NaN reaches exactly its own row, from its step on.
    xg = xg.clone()
    xg[1, 2, 5] = float("nan")
    hs, cs = cpp.recurrence(xg, w, h0, c0)
    assert torch.isnan(hs[1:, 2]).any() and torch.isnan(cs[1:, 2]).any(), f"{dtype}: the NaN vanished"
    others = [b for b in range(4) if b != 2]
    assert torch.isfinite(hs[:, others]).all() and torch.isfinite(hs[0]).all(), f"{dtype}: the NaN leaked"


@needs_cpp
@pytest.mark.parametrize("kwargs", [
    dict(input_size=3, hidden_size=17),
    dict(input_size=3, hidden_size=5, num_layers=2, bidirectional=True),
    dict(input_size=1, hidden_size=8, batch_first=True),
])
def test_module_matches_reference(kwargs):
    torch.manual_seed(0)
    check_module(ecgkern.LSTM(**kwargs, backend="cpp"))


@needs_cpp
def test_module_with_lengths():
    torch.manual_seed(0)
    check_module(ecgkern.LSTM(3, 6, bidirectional=True, backend="cpp"), batch=4, steps=5, lengths=[5, 2, 1, 4])


@needs_cpp
def test_module_matches_nn_lstm():
    torch.manual_seed(0)
    ref = torch.nn.LSTM(3, 12, num_layers=2)
    ours = ecgkern.LSTM(3, 12, num_layers=2, backend="cpp")
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(9, 4, 3)
    out_ref, (h_ref, c_ref) = ref(x)
    out, (h, c) = ours(x)
    for got, want in ((out, out_ref), (h, h_ref), (c, c_ref)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_cpp
def test_gradcheck_float64():
    gradcheck_recurrence(cpp.recurrence, shapes=((1, 1, 1), (3, 2, 3), (4, 3, 5), (2, 7, 17)))


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(dtype):
    xg, w, h0, c0 = (t.requires_grad_(True) for t in random_recurrence_inputs(4, 3, 5, dtype=dtype))
    torch.library.opcheck(ops.lstm_recurrence.default, (xg, w, h0, c0))
    with torch.no_grad():
        hs, cs, gates = ops.lstm_recurrence(xg, w, h0, c0)
    dhs, dcs = torch.randn_like(hs), torch.randn_like(cs)
    args = (dhs, dcs, w.detach(), h0.detach(), c0.detach(), hs, cs, gates)
    torch.library.opcheck(ops.lstm_recurrence_backward.default, args)


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inference_op(dtype):
    # Same hs/cs as the training forward, bit for bit (same kernel, gates just not stored).
    xg, w, h0, c0 = random_recurrence_inputs(7, 5, 150, dtype=dtype)
    torch.library.opcheck(ops.lstm_recurrence_inference.default, (xg, w, h0, c0))
    hs, cs = ops.lstm_recurrence_inference(xg, w, h0, c0)
    want_hs, want_cs, _ = ops.lstm_recurrence(xg, w, h0, c0)
    torch.testing.assert_close(hs, want_hs, rtol=0, atol=0)
    torch.testing.assert_close(cs, want_cs, rtol=0, atol=0)


@needs_cpp
def test_thread_count_does_not_change_results():
    # Rows are split across threads (OpenMP); each row's arithmetic is the same either way.
    xg, w, h0, c0 = random_recurrence_inputs(5, 9, 20)
    hs, cs, gates = ops.lstm_recurrence(xg, w, h0, c0)
    dhs, dcs = torch.randn_like(hs), torch.randn_like(cs)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append((*ops.lstm_recurrence(xg, w, h0, c0),
                            *ops.lstm_recurrence_backward(dhs, dcs, w, h0, c0, hs, cs, gates)))
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*results):
        torch.testing.assert_close(two, one, rtol=0, atol=0)


@needs_cpp
def test_recurrence_picks_inference_op_without_grad():
    xg, w, h0, c0 = random_recurrence_inputs(4, 3, 5)
    w.requires_grad_(True)
    hs, _ = cpp.recurrence(xg, w, h0, c0)
    assert hs.grad_fn is not None
    with torch.no_grad():
        hs_ng, cs_ng = cpp.recurrence(xg, w, h0, c0)
    assert hs_ng.grad_fn is None
    torch.testing.assert_close(hs_ng, hs.detach(), rtol=0, atol=0)
    with torch.no_grad():
        compiled = torch.compile(lambda *a: cpp.recurrence(*a), fullgraph=True, backend="aot_eager")(xg, w, h0, c0)
    torch.testing.assert_close(compiled[1], cs_ng, rtol=0, atol=0)


@needs_cpp
def test_torch_compile_fullgraph():
    torch.manual_seed(0)
    lstm = ecgkern.LSTM(3, 8, backend="cpp")
    head = torch.nn.Linear(8, 2)

    def model(x):
        out, _ = lstm(x)
        return head(out[-1])

    x = torch.randn(5, 4, 3)
    eager = model(x)  # builds/loads the extension outside of tracing
    eager.square().sum().backward()
    eager_grads = [p.grad.clone() for p in lstm.parameters()]
    for p in lstm.parameters():
        p.grad = None
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    compiled.square().sum().backward()
    torch.testing.assert_close(compiled, eager)
    for got, want in zip((p.grad for p in lstm.parameters()), eager_grads):
        torch.testing.assert_close(got, want)


@needs_cpp
def test_non_contiguous_inputs_match_contiguous():
    T, B, H = 6, 5, 7
    xg, w, h0, c0 = random_recurrence_inputs(T, B, H)
    # Same values, other layouts: batch-major transposed, transposed weight, strided slices.
    xg_nc = xg.transpose(0, 1).contiguous().transpose(0, 1)
    w_nc = w.t().contiguous().t()
    h0_nc = torch.stack([h0, torch.zeros_like(h0)], dim=2).reshape(B, 2 * H)[:, ::2]
    c0_nc = torch.cat([c0, c0], dim=1)[:, H:]
    assert not any(t.is_contiguous() for t in (xg_nc, w_nc, h0_nc, c0_nc))
    want = ops.lstm_recurrence(xg, w, h0, c0)
    got = ops.lstm_recurrence(xg_nc, w_nc, h0_nc, c0_nc)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
    hs, cs, gates = want
    dhs, dcs = torch.randn_like(hs), torch.randn_like(cs)
    want_b = ops.lstm_recurrence_backward(dhs, dcs, w, h0, c0, hs, cs, gates)
    got_b = ops.lstm_recurrence_backward(dhs.transpose(0, 1).contiguous().transpose(0, 1), dcs[:, :, :],
                                         w_nc, h0_nc, c0_nc, hs, cs, gates)
    for g, e in zip(got_b, want_b):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


@needs_cpp
def test_zero_length_and_empty_batch():
    for T, B in ((0, 3), (4, 0)):
        xg, w, h0, c0 = (t.requires_grad_(True) for t in random_recurrence_inputs(max(T, 1), max(B, 1), 4))
        xg = xg.detach()[:T, :B].requires_grad_(True)
        h0, c0 = h0.detach()[:B], c0.detach()[:B]
        hs, cs, gates = ops.lstm_recurrence(xg, w.detach(), h0, c0)
        assert hs.shape == (T, B, 4) and gates.shape == (T, B, 16)
        dxg, dw, dh0, dc0 = ops.lstm_recurrence_backward(hs, cs, w.detach(), h0, c0, hs, cs, gates)
        assert dxg.shape == xg.shape and dw.shape == w.shape
        assert not dw.any() and not dh0.any() and not dc0.any()


@needs_cpp
@pytest.mark.parametrize("zero_h0", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("T, B, H", [(6, 5, 16), (7, 21, 32), (3, 5, 96)])
def test_weight_grad_is_the_sum_over_steps(dtype, zero_h0, T, B, H):
    # dW_hh = sum_t dxg_t^T h_{t-1}, h_{-1} = h0; a zero h0 (the default state) takes a shortcut.
    # H % 32 == 0 in bf16 is the pair-packed vdpbf16ps GEMM where the CPU has it: T*B odd (a
    # last pair with a zero row), 147 rows (two blocks of 64 row pairs), three column groups.
    xg, w, h0, c0 = random_recurrence_inputs(T, B, H, dtype=dtype)
    if zero_h0:
        h0 = torch.zeros_like(h0)
    hs, cs, gates = ops.lstm_recurrence(xg, w, h0, c0)
    dhs, dcs = torch.randn_like(hs), torch.randn_like(cs)
    dxg, dw, _, _ = ops.lstm_recurrence_backward(dhs, dcs, w, h0, c0, hs, cs, gates)
    h_prev = torch.cat((h0.unsqueeze(0), hs[:-1])).double()
    want = dxg.double().flatten(0, 1).t() @ h_prev.flatten(0, 1)
    rtol = {torch.float32: 1e-5, torch.bfloat16: 2 ** -7, torch.float16: 2 ** -10}[dtype]
    torch.testing.assert_close(dw.double(), want, rtol=rtol, atol=rtol * want.abs().max().item())


# The recurrence from the layer input (ecgkern::lstm_input_recurrence: the input projection inside
# the kernels). With w_ih = identity and a zero bias its x is xg, so the recurrence kit checks it.
def _identity_input_recurrence(xg, w_hh, h0, c0):
    eye = torch.eye(xg.shape[2], dtype=xg.dtype)
    return cpp.input_recurrence(xg, eye, xg.new_zeros(xg.shape[2]), w_hh, h0, c0)


def _input_recurrence_args(T, B, I, H, dtype=torch.float64, seed=0):
    """(x, w_ih, bias, w_hh, h0, c0) of one layer."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64)
    w_ih = (torch.rand(4 * H, I, generator=g, dtype=torch.float64) * 2 - 1) / H ** 0.5
    bias = torch.randn(4 * H, generator=g, dtype=torch.float64) * 0.2
    _, w_hh, h0, c0 = random_recurrence_inputs(T, B, H, dtype=torch.float64, seed=seed)
    return [t.to(dtype) for t in (x, w_ih, bias, w_hh, h0, c0)]


@needs_cpp
def test_input_recurrence_conforms():
    # H=150: the K-blocked forward; 17 and 70: partial vectors; B=7: partial register tiles.
    shapes = ((1, 1, 1), (6, 1, 17), (5, 4, 8), (3, 7, 70), (2, 3, 150))
    check_recurrence(_identity_input_recurrence, shapes=shapes)
    check_recurrence(_identity_input_recurrence, shapes=shapes, dtypes=[torch.bfloat16, torch.float16])
    check_recurrence(_identity_input_recurrence, shapes=((7, 3, 9),), scale=12.0)


@needs_cpp
@pytest.mark.parametrize("T, B, I, H", [(5, 3, 1, 7), (4, 7, 3, 20), (3, 2, 17, 150), (2, 1, 300, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_input_recurrence_is_projection_then_recurrence(T, B, I, H, dtype):
    x, w_ih, bias, w_hh, h0, c0 = _input_recurrence_args(T, B, I, H, dtype)
    xg = torch.addmm(bias, x.flatten(0, 1), w_ih.t()).view(T, B, 4 * H)
    want = ops.lstm_recurrence(xg, w_hh, h0, c0)
    got = ops.lstm_input_recurrence(x, w_ih, bias, w_hh, h0, c0)
    inference = ops.lstm_input_recurrence_inference(x, w_ih, bias, w_hh, h0, c0)
    tol = {torch.float32: 1e-5, torch.float64: 1e-12}[dtype]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=tol, atol=tol)
    for g, w in zip(inference, got):  # the inference op is the same kernel without the gates
        torch.testing.assert_close(g, w, rtol=0, atol=0)


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_input_recurrence_reduced_precision(dtype):
    # One float32 sum for x @ w_ih^T + bias + h @ w_hh^T: at least as close to the float64 truth
    # as the separate projection, whose xg is rounded to the storage type first.
    from ecgkern.testing import tolerance
    T, B, I, H = 20, 5, 3, 16
    args = _input_recurrence_args(T, B, I, H, dtype)
    x, w_ih, bias, w_hh, h0, c0 = (t.double() for t in args)
    truth = reference.recurrence(torch.addmm(bias, x.flatten(0, 1), w_ih.t()).view(T, B, 4 * H), w_hh, h0, c0)
    fused = cpp.input_recurrence(*args)
    split = cpp.recurrence(torch.addmm(args[2], args[0].flatten(0, 1), args[1].t()).view(T, B, 4 * H), *args[3:])
    for f, s, t in zip(fused, split, truth):
        assert f.dtype == dtype
        torch.testing.assert_close(f.double(), t, rtol=tolerance(dtype, T, t)[0], atol=tolerance(dtype, T, t)[1])
        assert (f.double() - t).abs().mean() <= (s.double() - t).abs().mean() * 1.05


@needs_cpp
def test_input_recurrence_gradcheck():
    for k, shape in enumerate(((1, 1, 1, 1), (3, 2, 3, 5), (2, 7, 2, 17))):
        args = [t.requires_grad_(True) for t in _input_recurrence_args(*shape, seed=k)]
        assert torch.autograd.gradcheck(cpp.input_recurrence, args, eps=1e-6, atol=1e-7, rtol=1e-5)
    args = [t.requires_grad_(True) for t in _input_recurrence_args(3, 2, 2, 3)]
    assert torch.autograd.gradgradcheck(cpp.input_recurrence, args, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_input_recurrence_opcheck(dtype):
    args = [t.requires_grad_(True) for t in _input_recurrence_args(4, 3, 2, 5, dtype)]
    torch.library.opcheck(ops.lstm_input_recurrence.default, args)
    torch.library.opcheck(ops.lstm_input_recurrence_inference.default, [t.detach() for t in args])


@needs_cpp
@pytest.mark.parametrize("zero_h0", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16],
                         ids=["f32", "f64", "bf16", "f16"])
@pytest.mark.parametrize("T, B, I, H", [(3, 5, 2, 16), (7, 21, 1, 32), (2, 3, 64, 64), (3, 5, 3, 96)])
def test_input_backward_returns_the_weight_gradients(dtype, zero_h0, T, B, I, H):
    # lstm_input_recurrence_backward = lstm_recurrence_backward plus dw_ih = sum_j dxg_j^T x_j and
    # db = sum_j dxg_j, float32-accumulated and rounded once. H % 32 == 0 in bf16 is one
    # pair-packed vdpbf16ps pass for all three weights where the CPU has it: T*B odd (a last
    # pair with a zero row), 147 rows (two blocks), I + 1 extra columns (with H: whole and
    # partial register tiles).
    x, w_ih, bias, w_hh, h0, c0 = _input_recurrence_args(T, B, I, H, dtype)
    if zero_h0:
        h0 = torch.zeros_like(h0)
    hs, cs, gates = ops.lstm_input_recurrence(x, w_ih, bias, w_hh, h0, c0)
    dhs, dcs = torch.randn_like(hs), torch.randn_like(cs)
    dxg, dw_ih, db, dw_hh, dh0, dc0 = ops.lstm_input_recurrence_backward(dhs, dcs, x, w_hh, h0, c0, hs, cs, gates)
    plain = ops.lstm_recurrence_backward(dhs, dcs, w_hh, h0, c0, hs, cs, gates)
    for got, want in zip((dxg, dw_hh, dh0, dc0), plain, strict=True):
        assert torch.equal(got, want)
    assert dw_ih.shape == (4 * H, I) and db.shape == (4 * H,) and dw_ih.dtype == db.dtype == dtype
    g = dxg.double().flatten(0, 1)
    rtol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2 ** -7, torch.float16: 2 ** -10}[dtype]
    for got, want in ((dw_ih, g.t() @ x.double().flatten(0, 1)), (db, g.sum(0))):
        torch.testing.assert_close(got.double(), want, rtol=rtol, atol=rtol * want.abs().max().item())


@needs_cpp
def test_input_backward_rejects_a_bad_x():
    x, w_ih, bias, w_hh, h0, c0 = _input_recurrence_args(3, 2, 3, 4, torch.float32)
    hs, cs, gates = ops.lstm_input_recurrence(x, w_ih, bias, w_hh, h0, c0)
    for bad, message in ((x[:2], r"x has shape \[2, 2, 3\], expected \[T, B, I\]"),
                         (x.double(), r"x has dtype Double but w_hh has dtype Float"), (x[0], r"x must be 3-D")):
        with pytest.raises(RuntimeError, match=message):
            ops.lstm_input_recurrence_backward(hs, cs, bad, w_hh, h0, c0, hs, cs, gates)


@needs_cpp
@pytest.mark.parametrize("position, bad, message", [
    (0, torch.zeros(3, 2), r"x must be 3-D"),
    (1, torch.zeros(16, 4), r"w_ih has shape \[16, 4\], expected \[4H, I\]"),
    (2, torch.zeros(12), r"bias has shape \[12\], expected \[4H\]"),
    (2, torch.zeros(16, dtype=torch.float64), r"bias has dtype Double but w_hh has dtype Float"),
])
def test_input_recurrence_rejects_bad_inputs(position, bad, message):
    args = _input_recurrence_args(3, 2, 3, 4, torch.float32)
    args[position] = bad
    with pytest.raises(RuntimeError, match=message):
        ops.lstm_input_recurrence(*args)


class _RecurrenceOps(torch.utils._python_dispatch.TorchDispatchMode):
    """Records which ecgkern recurrence ops run."""

    def __enter__(self):
        self.names = []
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "ecgkern":
            self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@needs_cpp
@pytest.mark.parametrize("dtype, fused_sizes, split_sizes", [
    (torch.float32, (1, 512), (513,)), (torch.bfloat16, (1, 64), (65,)),
])
def test_layer_projects_inside_the_kernels_for_few_inputs(dtype, fused_sizes, split_sizes):
    for I, name in [(I, "lstm_input_recurrence") for I in fused_sizes] + [(I, "lstm_recurrence") for I in split_sizes]:
        torch.manual_seed(0)
        ours = ecgkern.LSTM(I, 4, backend="cpp", bias=I != 1)
        ref = torch.nn.LSTM(I, 4, bias=I != 1)
        ref.load_state_dict(ours.state_dict())
        x = torch.randn(5, 3, I)
        with _RecurrenceOps() as seen, torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            out, _ = ours(x)
            out.float().sum().backward()
        assert seen.names and set(seen.names) <= {name, f"{name}_backward"}, (I, seen.names)
        want, _ = ref(x)
        want.sum().backward()
        tol = 1e-5 if dtype == torch.float32 else 3e-2
        torch.testing.assert_close(out.float(), want, rtol=tol, atol=tol)
        for p, q in zip(ours.parameters(), ref.parameters()):
            assert p.grad.dtype == torch.float32
            torch.testing.assert_close(p.grad, q.grad, rtol=tol, atol=tol * 10)


def _good_forward_args():
    return list(random_recurrence_inputs(3, 2, 4))


@needs_cpp
@pytest.mark.parametrize("position, bad, message", [
    (0, torch.zeros(3, 16), r"xg must be 3-D"),
    (0, torch.zeros(3, 2, 12), r"xg has shape \[3, 2, 12\], expected \[T, B, 4H\]"),
    (1, torch.zeros(15, 4), r"w_hh has shape \[15, 4\], expected \[4H, H\]"),
    (1, torch.zeros(16), r"w_hh must be 2-D"),
    (2, torch.zeros(3, 4), r"h0 has shape \[3, 4\], expected \[B, H\]"),
    (3, torch.zeros(2, 5), r"c0 has shape \[2, 5\]"),
    (2, torch.zeros(2, 4, dtype=torch.float64), r"h0 has dtype Double but w_hh has dtype Float"),
    (0, torch.zeros(3, 2, 16, dtype=torch.int32), r"xg must be float32, float64, float16 or bfloat16, got Int"),
])
def test_forward_rejects_bad_inputs(position, bad, message):
    args = _good_forward_args()
    args[position] = bad
    with pytest.raises(RuntimeError, match=message):
        ops.lstm_recurrence(*args)


@needs_cpp
def test_backward_rejects_bad_inputs():
    xg, w, h0, c0 = _good_forward_args()
    hs, cs, gates = ops.lstm_recurrence(xg, w, h0, c0)
    with pytest.raises(RuntimeError, match=r"dhs has shape \[3, 2, 5\], expected \[T, B, H\]"):
        ops.lstm_recurrence_backward(torch.zeros(3, 2, 5), cs, w, h0, c0, hs, cs, gates)
    with pytest.raises(RuntimeError, match=r"gates must be 3-D"):
        ops.lstm_recurrence_backward(hs, cs, w, h0, c0, hs, cs, gates[0])
    with pytest.raises(RuntimeError, match=r"cs has dtype Double"):
        ops.lstm_recurrence_backward(hs, cs, w, h0, c0, hs, cs.double(), gates)


def test_supports():
    assert cpp.supports("cpu", torch.float32) is None
    assert cpp.supports("cpu", torch.float64) is None
    assert cpp.supports("cpu", torch.float16) is None
    assert cpp.supports("cpu", torch.bfloat16) is None
    assert "complex64" in cpp.supports("cpu", torch.complex64)
    assert "CPU only" in cpp.supports("cuda", torch.float32)
    assert "CPU only" in cpp.unavailable_reason("cuda")


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


def test_missing_compiler_reports_unavailable(tmp_path):
    # Fresh cache, so nothing prebuilt can be loaded; the compiler does not exist.
    result = _run("""
        import torch, ecgkern
        from ecgkern.backends import available_backends, resolve_backend_name, BackendUnavailableError
        status = available_backends()["cpp"]
        print("STATUS", status.available, status.reason)
        print("AUTO", resolve_backend_name("auto"))
        try:
            ecgkern.LSTM(1, 2, backend="cpp")(torch.zeros(3, 1, 1))
        except BackendUnavailableError as exc:
            print("RAISED", exc)
    """, CXX=str(tmp_path / "no-such-compiler"), ECGKERN_CACHE_DIR=str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert lines["STATUS"].startswith("False") and "no C++ compiler" in lines["STATUS"]
    assert "no-such-compiler" in lines["STATUS"]
    assert lines["AUTO"] == "reference"
    assert "no C++ compiler" in lines["RAISED"]


def test_compiler_error_gives_first_error_line(tmp_path, monkeypatch):
    monkeypatch.setenv("ECGKERN_CACHE_DIR", str(tmp_path / "cache"))
    source = tmp_path / "broken.cpp"
    source.write_text("int ok() { return 1; }\nint broken() { return undeclared_name; }\n")
    with pytest.raises(_build.ExtensionBuildError) as info:
        _build.load_extension("ecgkern_broken_probe", [source])
    message = str(info.value)
    assert "error" in message and "undeclared_name" in message and "broken.cpp:2" in message
    assert "\n" not in message
    assert not list((tmp_path / "cache" / "extensions").glob("ecgkern_broken_probe-*/"))  # nothing half-built kept


def test_concurrent_builds_share_one_cache_entry(tmp_path):
    # Two processes build the same (tiny, torch-free) source at once into an empty cache.
    source = tmp_path / "probe.cpp"
    source.write_text('extern "C" int ecgkern_probe() { return 42; }\n')
    code = f"""
        import ctypes, pathlib
        from ecgkern import _build
        _build.load_extension("ecgkern_probe", [pathlib.Path({str(source)!r})])
        lib = next(_build.cache_dir().glob("ecgkern_probe-*/*.so"))
        print("BUILT" if "ecgkern_probe" in _build.BUILD_SECONDS else "CACHED", ctypes.CDLL(str(lib)).ecgkern_probe())
    """
    env = {**os.environ, "ECGKERN_CACHE_DIR": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    results = sorted(out.split()[0] for out, _ in outs)
    assert results == ["BUILT", "CACHED"], outs  # built once; the other waited and loaded it
    assert all(out.split()[1] == "42" for out, _ in outs)
    entries = [p for p in (tmp_path / "cache" / "extensions").iterdir() if p.is_dir()]
    assert len(entries) == 1 and not entries[0].name.startswith(".")
    # A third process finds it in the cache without building.
    again = _run(code, ECGKERN_CACHE_DIR=str(tmp_path / "cache"))
    assert again.stdout.split() == ["CACHED", "42"], again.stderr


def test_cache_dir_and_csrc_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("ECGKERN_CACHE_DIR", str(tmp_path))
    assert _build.cache_dir() == tmp_path / "extensions"
    assert (_build.csrc_dir() / "lstm_cpu.cpp").is_file()


def test_capability_flags_follow_torch(monkeypatch):
    for capability, expected in (("AVX512", "-DCPU_CAPABILITY_AVX512"), ("AVX2", "-DCPU_CAPABILITY_AVX2")):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        assert expected in _build.cpu_capability_flags()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    assert _build.cpu_capability_flags() == []
    # Asked for by name (benchmarks/ab_cpu_kernels.py builds another ISA's kernels side by side).
    assert "-DCPU_CAPABILITY_AVX2" in _build.cpu_capability_flags("avx2")
    assert "-DCPU_CAPABILITY_AVX512" in _build.cpu_capability_flags("AVX512")


def _static_libstdcxx() -> str | None:
    compiler = shutil.which(_build._compiler())
    if compiler is None:
        return None
    found = subprocess.run([compiler, "-print-file-name=libstdc++.a"], capture_output=True, text=True).stdout.strip()
    return found if os.path.isabs(found) else None


@needs_cpp
@pytest.mark.skipif(not sys.platform.startswith("linux") or _static_libstdcxx() is None,
                    reason="needs Linux and a static libstdc++ (libstdc++.a) to link the extension against")
def test_error_messages_survive_a_static_libstdcxx(tmp_path):
    # A toolchain that links libstdc++.a into the extension (as the H200 image's did): without
    # _build._LINK_FLAGS, this message lost its numbers ("h0 has shape [") and on the GPU
    # machine the same call segfaulted.
    compiler, wrapper = shutil.which(_build._compiler()), tmp_path / "c++"
    wrapper.write_text(f'#!/bin/sh\ncase " $* " in *" -shared "*) exec {compiler} "$@" -static-libstdc++;; esac\n'
                       f'exec {compiler} "$@"\n')
    wrapper.chmod(0o755)
    result = _run("""
        import torch
        from ecgkern import testing
        from ecgkern.backends import cpp
        xg, w_hh, h0, c0 = testing.random_recurrence_inputs(3, 2, 4)
        cpp.recurrence(xg, w_hh, h0, c0)
        try:
            torch.ops.ecgkern.lstm_recurrence(xg, w_hh, h0[:1].contiguous(), c0)
        except RuntimeError as exc:
            print("RAISED", str(exc).splitlines()[0])
    """, CXX=str(wrapper), ECGKERN_CACHE_DIR=str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr[-4000:]
    assert "h0 has shape [1, 4], expected [B, H] = [2, 4]" in result.stdout, result.stdout


# Each machine builds the kernels for its own vector ISA, as torch detects it (AVX-512, AVX2 or
# none); ATEN_CPU_CAPABILITY makes this machine build and run the others' too.
_NATIVE_CAPABILITY = torch.backends.cpu.get_cpu_capability()


@needs_cpp
@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_the_other_x86_builds_conform(capability):
    if _NATIVE_CAPABILITY.lower() == capability:
        pytest.skip(f"{capability} is this machine's own build: every other test runs it")
    if capability == "avx2" and _NATIVE_CAPABILITY not in ("AVX2", "AVX512"):
        pytest.skip(f"this CPU cannot run AVX2 code (torch's capability: {_NATIVE_CAPABILITY})")
    result = _run("""
        import torch
        import ecgkern
        from ecgkern import _build
        from ecgkern.backends import cpp
        from ecgkern.testing import check_module, check_recurrence
        print("FLAGS", " ".join(_build.cpu_capability_flags()) or "none")
        shapes = ((1, 1, 1), (6, 1, 17), (5, 4, 8), (3, 7, 70), (2, 3, 150))
        check_recurrence(cpp.recurrence, shapes=shapes)
        check_recurrence(cpp.recurrence, shapes=shapes[:4], dtypes=[torch.bfloat16, torch.float16])
        check_recurrence(cpp.recurrence, shapes=((7, 3, 9),), scale=12.0)
        torch.manual_seed(0)
        check_module(ecgkern.LSTM(3, 9, num_layers=2, backend="cpp"))
        ref = torch.nn.LSTM(3, 9, proj_size=4)  # the projected kernels (lstm_cpu_proj.cpp)
        ours = ecgkern.LSTM(3, 9, proj_size=4, backend="cpp")
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(5, 2, 3)
        for got, want in zip(torch.autograd.functional.vjp(lambda v: ours(v)[0], x, torch.ones(5, 2, 4)),
                             torch.autograd.functional.vjp(lambda v: ref(v)[0], x, torch.ones(5, 2, 4))):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        print("CONFORMS")
    """, ATEN_CPU_CAPABILITY=capability)
    assert result.returncode == 0, result.stderr[-4000:]
    flags = result.stdout.split("FLAGS", 1)[1].splitlines()[0].split()
    assert flags == (["none"] if capability == "default" else [*flags[:-1], "-DCPU_CAPABILITY_AVX2"]), flags
    assert "CONFORMS" in result.stdout


@needs_cpp
def test_auto_passes_over_the_portable_build(monkeypatch):
    # Without AVX2 the kernels build without vector instructions, ~6x slower than the reference.
    import platform
    import warnings

    from ecgkern.backends import available_backends, resolve_backend_name
    monkeypatch.setattr(_build, "cpu_capability_flags", lambda: [])
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a deliberate choice, not an installation problem: no warning
        assert resolve_backend_name("auto") == "reference"
    status = available_backends()["cpp"]
    assert status.available and "portable build" in status.note
    assert resolve_backend_name("cpp") == "cpp"  # asked for by name, it still runs
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")  # not measured there: no opinion
    assert resolve_backend_name("auto") == "cpp"
