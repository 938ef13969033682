"""proj_size > 0 (LSTM with projections) against torch.nn.LSTM, on every CPU backend that has it.

A backend without projections must say so when named, and ``auto`` must skip it for such a layer.
"""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import ecgkern
from ecgkern import backends
from ecgkern.testing import assert_close

TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-5, 1e-5)}
GRAD_TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-4, 1e-5)}
CPU = torch.device("cpu")
I, H, P, B, T = 3, 6, 4, 3, 5

GRID = [
    {"num_layers": L, "bidirectional": bi, "batch_first": bf, "bias": bias, "with_state": st}
    for L, bi, bf, bias, st in itertools.product((1, 2), (False, True), (False, True), (True, False), (False, True))
    if not (bf and not st)  # batch_first only moves the input; half its rows cover it
]


def _has_projections(backend: str) -> bool:
    return hasattr(backends.get_backend(backend, CPU, torch.float32), "supports_projections")


def _require_projections(backend: str) -> None:
    if not _has_projections(backend):
        pytest.skip(f"backend {backend!r} does not implement proj_size (checked by test_named_backend_without_projections_says_so)")


def _pair(backend, dtype, from_nn=True, **cfg):
    torch.manual_seed(0)
    kw = {k: cfg[k] for k in ("num_layers", "bidirectional", "batch_first", "bias")}
    ref = nn.LSTM(I, H, proj_size=P, dtype=dtype, **kw)
    ours = ecgkern.LSTM(I, H, proj_size=P, dtype=dtype, backend=backend, **kw)
    if from_nn:
        ours.load_state_dict(ref.state_dict())
    else:
        ref.load_state_dict(ours.state_dict())
    return ref, ours


def _inputs(ours, dtype, with_state):
    g = torch.Generator().manual_seed(2)
    shape = (B, T, I) if ours.batch_first else (T, B, I)
    x = torch.randn(shape, generator=g, dtype=dtype, requires_grad=True)
    if not with_state:
        return x, None
    D = ours.num_layers * (2 if ours.bidirectional else 1)
    h0 = torch.randn(D, B, P, generator=g, dtype=dtype, requires_grad=True)
    c0 = torch.randn(D, B, H, generator=g, dtype=dtype, requires_grad=True)
    return x, (h0, c0)


def _run(module, x, hx):
    out, (h, c) = module(x, hx)
    g = torch.Generator().manual_seed(1)
    data = out.data if hasattr(out, "batch_sizes") else out
    loss = (data * torch.randn(data.shape, generator=g, dtype=data.dtype)).sum() + (h * h).sum() + (c * c).sum() * 0.5
    wanted = [x] + ([*hx] if hx is not None else []) + list(module.parameters())
    return (data, h, c), torch.autograd.grad(loss, wanted)


def _compare(dtype, ours, ref, names):
    (outs, grads), (ref_outs, ref_grads) = ours, ref
    for name, a, b in zip(("output", "h_n", "c_n"), outs, ref_outs):
        assert_close(name, a, b, *TOL[dtype])
    for name, a, b in zip(names, grads, ref_grads):
        assert_close(f"grad {name}", a, b, *GRAD_TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cfg", GRID, ids=lambda c: "-".join(f"{k}={int(v)}" for k, v in c.items()))
def test_matches_nn_lstm(backend, cfg, dtype):
    _require_projections(backend)
    for from_nn in (True, False):
        ref, ours = _pair(backend, dtype, from_nn=from_nn, **cfg)
        x, hx = _inputs(ours, dtype, cfg["with_state"])
        names = ["x"] + (["h0", "c0"] if hx is not None else []) + [n for n, _ in ours.named_parameters()]
        assert names[len(names) - len(list(ref.parameters())):] == [n for n, _ in ref.named_parameters()]
        _compare(dtype, _run(ours, x, hx), _run(ref, x, hx), names)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_lengths_equal_packed_nn_lstm(backend, bidirectional):
    _require_projections(backend)
    dtype = torch.float64
    ref, ours = _pair(backend, dtype, num_layers=2, bidirectional=bidirectional, batch_first=False, bias=True)
    x, hx = _inputs(ours, dtype, with_state=True)
    lengths = torch.tensor([T, 2, 4])
    out, (h, c) = ours(x, hx, lengths=lengths)
    packed, (ref_h, ref_c) = ref(pack_padded_sequence(x, lengths, enforce_sorted=False), hx)
    ref_out, _ = pad_packed_sequence(packed, total_length=T)
    for name, a, b in (("output", out, ref_out), ("h_n", h, ref_h), ("c_n", c, ref_c)):
        assert_close(name, a, b, *TOL[dtype])
    loss = lambda o, hh, cc: (o * o).sum() + hh.sum() + (cc * cc).sum()
    wanted = [x, *hx, *ours.parameters()]
    grads = torch.autograd.grad(loss(out, h, c), wanted)
    ref_grads = torch.autograd.grad(loss(ref_out, ref_h, ref_c), [x, *hx, *ref.parameters()])
    for k, (a, b) in enumerate(zip(grads, ref_grads)):
        assert_close(f"grad {k}", a, b, *GRAD_TOL[dtype])


def test_unbatched_and_packed_input(backend):
    _require_projections(backend)
    ref, ours = _pair(backend, torch.float64, num_layers=1, bidirectional=True, batch_first=False, bias=True)
    x = torch.randn(T, I, dtype=torch.float64)
    for a, b in zip(ours(x)[0:1] + ours(x)[1], ref(x)[0:1] + ref(x)[1]):
        assert_close("unbatched", a, b, *TOL[torch.float64])
    packed = pack_padded_sequence(torch.randn(T, 2, I, dtype=torch.float64), [T, 3])
    assert_close("packed output", ours(packed)[0].data, ref(packed)[0].data, *TOL[torch.float64])


def test_projected_recurrence_float64_gradcheck(backend):
    """The backend's projected recurrence itself: float64 gradcheck (reverse and forward mode) and
    gradgradcheck of every input."""
    _require_projections(backend)
    impl = backends.get_backend(backend, CPU, torch.float64, projections=True)
    if impl.supports("cpu", torch.float64) is not None:
        pytest.skip(f"backend {backend!r} has no float64 on CPU")
    g = torch.Generator().manual_seed(3)
    args = [torch.randn(s, generator=g, dtype=torch.float64, requires_grad=True)
            for s in ((4, 2, 4 * 3), (4 * 3, 2), (2, 3), (2, 2), (2, 3))]  # xg, w_hh, w_hr, h0, c0
    assert torch.autograd.gradcheck(impl.projected_recurrence, args, check_forward_ad=True)
    assert torch.autograd.gradgradcheck(impl.projected_recurrence, args)


def test_cpp_projected_op_opcheck():
    """The custom op's schema, fake kernel and autograd registration (torch.library.opcheck)."""
    if not _available("cpp"):
        pytest.skip("the cpp backend is unavailable here")
    g = torch.Generator().manual_seed(4)
    args = [torch.randn(s, generator=g, requires_grad=True) for s in ((3, 2, 8), (8, 1), (1, 2), (2, 1), (2, 2))]
    torch.library.opcheck(torch.ops.ecgkern.lstm_projected_recurrence.default, args)


def _available(name: str) -> bool:
    return ecgkern.available_backends("cpu")[name].available


def test_named_backend_without_projections_says_so(backend):
    if _has_projections(backend):
        pytest.skip(f"backend {backend!r} implements proj_size")
    lstm = ecgkern.LSTM(I, H, proj_size=P, backend=backend)
    with pytest.raises(ecgkern.BackendUnavailableError, match=rf"{backend} backend does not implement LSTM with projections"):
        lstm(torch.randn(T, B, I))


def test_auto_skips_a_backend_without_projections(monkeypatch):
    monkeypatch.setitem(backends._AUTO_ORDER, "cpu", ("compile", "reference"))
    assert backends.get_backend("auto", CPU, torch.float32).NAME == "compile"
    assert backends.get_backend("auto", CPU, torch.float32, projections=True).NAME == "reference"
    lstm = ecgkern.LSTM(I, H, proj_size=P)  # runs, on the reference
    assert lstm(torch.randn(T, B, I))[0].shape == (T, B, P)


def test_initialisation_and_shapes_like_nn_lstm():
    ours = ecgkern.LSTM(I, H, num_layers=2, proj_size=P, bidirectional=True)
    ref = nn.LSTM(I, H, num_layers=2, proj_size=P, bidirectional=True)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in ref.named_parameters()]
    bound = 1 / H ** 0.5
    for p in ours.parameters():
        assert 0.5 * bound < p.abs().max() <= bound
    assert "proj_size=4" in repr(ours)


def test_wrong_state_sizes_name_the_problem():
    lstm = ecgkern.LSTM(I, H, proj_size=P, backend="reference")
    x = torch.randn(T, B, I)
    with pytest.raises(ValueError, match=r"h_0 has shape \(1, 3, 6\), expected \(1, 3, 4\) .*proj_size"):
        lstm(x, (torch.zeros(1, B, H), torch.zeros(1, B, H)))
    with pytest.raises(ValueError, match=r"c_0 has shape \(1, 3, 4\), expected \(1, 3, 6\)"):
        lstm(x, (torch.zeros(1, B, P), torch.zeros(1, B, P)))


def test_onnx_export_is_a_clear_error(tmp_path):
    pytest.importorskip("onnxscript")
    lstm = ecgkern.LSTM(I, H, proj_size=P)
    with pytest.raises(Exception, match="proj_size > 0 is not supported"):
        torch.onnx.export(lstm, (torch.randn(T, B, I),), tmp_path / "m.onnx", dynamo=False)


def test_compile_export_and_per_sample_grads(backend):
    """The projected layer through torch.compile(fullgraph), torch.export and torch.func.vmap(grad),
    each equal to the reference backend's eager result."""
    _require_projections(backend)
    torch.manual_seed(0)
    ours = ecgkern.LSTM(I, H, proj_size=P, bidirectional=True, backend=backend)
    ref = ecgkern.LSTM(I, H, proj_size=P, bidirectional=True, backend="reference")
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(T, 2, I)
    expected = ref(x)[0]
    compiled = torch.compile(ours, fullgraph=True, backend="eager")
    assert_close("compiled", compiled(x)[0], expected, *TOL[torch.float32])
    exported = torch.export.export(ours, (x,))
    assert_close("exported", exported.module()(x)[0], expected, *TOL[torch.float32])

    def per_sample(module):
        params = dict(module.named_parameters())
        loss = lambda p, xi: torch.func.functional_call(module, p, (xi.unsqueeze(1),))[0].square().sum()
        return torch.func.vmap(torch.func.grad(loss), in_dims=(None, 1))(params, x)

    got, want = per_sample(ours), per_sample(ref)
    for name in want:
        assert_close(f"per-sample grad {name}", got[name], want[name], *GRAD_TOL[torch.float32])


def _projected_args(**change):
    g = torch.Generator().manual_seed(5)
    shapes = {"xg": (3, 2, 4 * H), "w_hh": (4 * H, P), "w_hr": (P, H), "h0": (2, P), "c0": (2, H)}
    args = {n: torch.randn(s, generator=g) for n, s in shapes.items()}
    return {n: change[n](t) if n in change else t for n, t in args.items()}


BAD_PROJECTED = {
    "w_hr transposed": {"w_hr": lambda t: t.t().contiguous()},
    "h0 of hidden_size": {"h0": lambda t: torch.zeros(2, H)},
    "c0 of proj_size": {"c0": lambda t: t[:, :P]},
    "w_hh [4H, H]": {"w_hh": lambda t: torch.zeros(4 * H, H)},
    "xg 4H+4 columns": {"xg": lambda t: torch.cat([t, t[..., :4]], dim=2)},
    "w_hr float64": {"w_hr": lambda t: t.double()},
}


@pytest.mark.parametrize("change", BAD_PROJECTED.values(), ids=BAD_PROJECTED.keys())
def test_projected_recurrence_rejects_inconsistent_arguments(backend, change):
    """Through the backend and (cpp) straight through its private op: a clear error, never a crash."""
    _require_projections(backend)
    impl = backends.get_backend(backend, CPU, torch.float32, projections=True)
    calls = [impl.projected_recurrence]
    if backend == "cpp":
        calls.append(torch.ops.ecgkern_cpu.lstm_projected_recurrence)
    for call in calls:
        with pytest.raises((ValueError, TypeError, RuntimeError), match=r"shape|dtype|expected|columns"):
            call(*_projected_args(**change).values())


def test_auto_skips_a_backend_whose_projections_lack_the_dtype(monkeypatch):
    """A backend with projections for some dtypes only is skipped by auto for the others."""
    reference = backends.get_backend("reference", CPU, torch.float32)
    monkeypatch.setattr(reference, "supports_projections", lambda device_type, dtype: "no float64 projections here")
    monkeypatch.setitem(backends._AUTO_ORDER, "cpu", ("reference", "cpp"))
    if not _available("cpp"):
        pytest.skip("the cpp backend is unavailable here")
    assert backends.get_backend("auto", CPU, torch.float64, projections=True).NAME == "cpp"
    with pytest.raises(ecgkern.BackendUnavailableError, match="no float64 projections here"):
        backends.get_backend("reference", CPU, torch.float64, projections=True)
