"""Bad input, table-driven: the layer, the functional API, each backend's recurrence, and the
C++ ops called directly.

Every row of the tables is (what is wrong, how to make it, the exception type, a regex the
message must match). The regex names the problem (shape, dtype, device or value), so a row
fails on an error that is raised for the wrong reason. Input-level rows run through both
``ecgkern.LSTM`` and ``ecgkern.lstm`` with every available backend selected; validation happens
before any kernel runs, so no backend ever sees them. Inputs that must *work* (B=0, strided
inputs, unsorted PackedSequence, ...) are checked against contiguous runs and torch.nn.LSTM.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import ecgkern
from ecgkern.backends import BackendUnavailableError, available_backends, get_backend
from ecgkern.functional import lstm as functional_lstm
from ecgkern.testing import GRAD_TOLERANCES, TOLERANCES, assert_close

from _reliability import CPU, backend_dtypes, run_layer

I, H, L, B, T = 3, 5, 2, 2, 4  # bidirectional: L * D = 4 state rows
LD = 2 * L
META = torch.device("meta")  # the only second device here: stands in for "another device"


class Case(NamedTuple):
    name: str
    make: Callable  # mutates a dict of good arguments into bad ones
    exc: type
    match: str


def _good() -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "input": torch.randn(T, B, I, generator=g),
        "hx": (torch.randn(LD, B, H, generator=g), torch.randn(LD, B, H, generator=g)),
        "lengths": None,
    }


def _set(**changes):
    return lambda a: a.update(changes)


def _set_hx(h0=None, c0=None):
    def make(a):
        h, c = a["hx"]
        a["hx"] = (h if h0 is None else h0(h), c if c0 is None else c0(c))
    return make


# Rows that both the layer and the functional API must reject, with every backend.
CALL_CASES = [
    Case("input not a tensor", _set(input=[[1.0] * I] * T), TypeError, r"input must be a torch.Tensor, got list"),
    Case("input rank 1", _set(input=torch.randn(I)), ValueError, r"2D .*3D.*got 1D with shape \(3,\)"),
    Case("input rank 4", _set(input=torch.randn(T, B, I, 1)), ValueError, r"got 4D with shape \(4, 2, 3, 1\)"),
    Case("feature size mismatch", _set(input=torch.randn(T, B, I + 1)), ValueError, r"feature size mismatch.*4.*input_size=3"),
    Case("integer input", _set(input=torch.ones(T, B, I, dtype=torch.int64)), TypeError, r"floating-point.*torch\.int64"),
    Case("boolean input", _set(input=torch.ones(T, B, I, dtype=torch.bool)), TypeError, r"floating-point.*torch\.bool"),
    Case("input float64, weights float32", _set(input=torch.randn(T, B, I, dtype=torch.float64)), TypeError,
         r"input dtype torch\.float64 does not match weight dtype torch\.float32"),
    Case("input on another device", _set(input=torch.randn(T, B, I, device=META)), ValueError,
         r"input is on meta but the weights are on cpu"),
    Case("T = 0", _set(input=torch.randn(0, B, I)), ValueError, r"sequence length > 0.*0 time steps"),
    Case("T = 0 unbatched", _set(input=torch.randn(0, I), hx=None), ValueError, r"sequence length > 0"),
    Case("h0 wrong layers*directions", _set_hx(h0=lambda h: h[:3]), ValueError, r"h_0 has shape \(3, 2, 5\), expected \(4, 2, 5\)"),
    Case("h0 wrong batch", _set_hx(h0=lambda h: torch.cat([h, h], 1)), ValueError, r"h_0 has shape \(4, 4, 5\), expected \(4, 2, 5\)"),
    Case("h0 wrong hidden", _set_hx(h0=lambda h: h[..., :3]), ValueError, r"h_0 has shape \(4, 2, 3\), expected \(4, 2, 5\)"),
    Case("h0 wrong rank", _set_hx(h0=lambda h: h[0]), ValueError, r"h_0 has shape \(2, 5\), expected \(4, 2, 5\)"),
    Case("c0 wrong shape", _set_hx(c0=lambda c: c[:, :1]), ValueError, r"c_0 has shape \(4, 1, 5\), expected \(4, 2, 5\)"),
    Case("h0 wrong dtype", _set_hx(h0=lambda h: h.double()), TypeError, r"h_0 dtype torch\.float64 does not match input dtype torch\.float32"),
    Case("c0 wrong dtype", _set_hx(c0=lambda c: c.half()), TypeError, r"c_0 dtype torch\.float16 does not match"),
    Case("h0 integer", _set_hx(h0=lambda h: h.long()), TypeError, r"h_0 dtype torch\.int64"),
    Case("h0 on another device", _set_hx(h0=lambda h: h.to(META)), ValueError, r"h_0 is on meta but the input is on cpu"),
    Case("c0 on another device", _set_hx(c0=lambda c: c.to(META)), ValueError, r"c_0 is on meta but the input is on cpu"),
    Case("h0 without c0 (tensor)", lambda a: a.update(hx=a["hx"][0]), ValueError, r"h_0 was given without c_0"),
    Case("h0 without c0 (1-tuple)", lambda a: a.update(hx=a["hx"][:1]), ValueError, r"h_0 was given without c_0"),
    Case("c0 is None", lambda a: a.update(hx=(a["hx"][0], None)), TypeError, r"c_0 must be a torch\.Tensor, got NoneType"),
    Case("hx of three tensors", lambda a: a.update(hx=a["hx"] * 2), ValueError, r"tuple \(h_0, c_0\) of two tensors"),
    Case("unbatched input, batched hx", _set(input=torch.randn(T, I)), ValueError, r"h_0 for unbatched input must be 2D"),
    Case("lengths > T", _set(lengths=torch.tensor([T + 1, 1])), ValueError, r"<= the sequence length 4, got a length of 5"),
    Case("lengths zero", _set(lengths=torch.tensor([T, 0])), ValueError, r">= 1, got a length of 0"),
    Case("lengths negative", _set(lengths=torch.tensor([-2, T])), ValueError, r">= 1, got a length of -2"),
    Case("lengths float dtype", _set(lengths=torch.tensor([2.0, 3.0])), TypeError, r"integers, got dtype torch\.float32"),
    Case("lengths bool dtype", _set(lengths=torch.tensor([True, True])), TypeError, r"integers, got dtype torch\.bool"),
    Case("lengths float list", _set(lengths=[2.5, 3]), TypeError, r"integers, got dtype torch\.float"),
    Case("lengths on another device", _set(lengths=torch.tensor([2, 3], device=META)), ValueError,
         r"lengths is on meta; it must be on the CPU or on the input's device \(cpu\)"),
    Case("lengths wrong count", _set(lengths=torch.tensor([2, 3, 1])), ValueError, r"shape \(2,\).*got \(3,\)"),
    Case("lengths 2-D", _set(lengths=torch.tensor([[2, 3]])), ValueError, r"shape \(2,\).*got \(1, 2\)"),
    Case("lengths not numbers", _set(lengths=["a", "b"]), TypeError, r"1-D integer tensor or sequence of ints"),
    Case("lengths with unbatched input", _set(input=torch.randn(T, I), hx=None, lengths=torch.tensor([T])), ValueError,
         r"lengths cannot be used with unbatched"),
]


def test_functional_api_is_exported():
    # `from .lstm import LSTM` in ecgkern/__init__.py must not shadow the function with the submodule.
    assert ecgkern.lstm is functional_lstm, f"ecgkern.lstm is {ecgkern.lstm!r}, not the functional API"


def _model(backend: str, dtype=torch.float32, **kwargs):
    torch.manual_seed(0)
    return ecgkern.LSTM(I, H, L, bidirectional=True, backend=backend, dtype=dtype, **kwargs)


def _call(api: str, model, input, hx=None, lengths=None):
    if api == "layer":
        return model(input, hx, lengths=lengths)
    return functional_lstm(input, hx, model.layer_weights(), num_layers=L, bidirectional=True,
                        batch_first=model.batch_first, lengths=lengths, backend=model.backend)


@pytest.mark.parametrize("case", CALL_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("api", ["layer", "functional"])
def test_bad_call_raises(api, case, backend):
    args = _good()
    case.make(args)
    with pytest.raises(case.exc, match=case.match):
        _call(api, _model(backend), **args)


# Rows for the functional API only: its weights come from the caller, not from a module.
def _weights(mutate):
    def make(ws):
        ws = [list(w) for w in ws]
        mutate(ws)
        return [tuple(w) for w in ws]
    return make


WEIGHT_CASES = [
    Case("too few weight tuples", lambda ws: ws[:3], ValueError, r"expected 4 weight tuples.*got 3"),
    Case("weight tuple too short", _weights(lambda ws: ws.__setitem__(1, ws[1][:2])), ValueError,
         r"weights\[1\] must be a tuple \(w_ih, w_hh, b_ih, b_hh\)"),
    Case("w_ih 1-D", _weights(lambda ws: ws[0].__setitem__(0, ws[0][0][0])), ValueError, r"weights\[0\] must be .*2-D"),
    Case("w_hh wrong shape", _weights(lambda ws: ws[2].__setitem__(1, ws[2][1][:, :4])), ValueError,
         r"weights\[2\] w_hh has shape \(20, 4\), expected \(20, 5\)"),
    Case("w_ih of layer 1 wrong input", _weights(lambda ws: ws[3].__setitem__(0, ws[3][0][:, :5])), ValueError,
         r"weights\[3\] w_ih has shape \(20, 5\), expected \(20, 10\)"),
    Case("bias wrong shape", _weights(lambda ws: ws[1].__setitem__(3, ws[1][3][:19])), ValueError,
         r"weights\[1\] b_hh has shape \(19,\), expected \(20,\)"),
    Case("only one bias", _weights(lambda ws: ws[0].__setitem__(2, None)), ValueError, r"b_ih and b_hh must both be"),
    Case("w_hh wrong dtype", _weights(lambda ws: ws[1].__setitem__(1, ws[1][1].double())), TypeError,
         r"weights\[1\] w_hh dtype torch\.float64 does not match input dtype torch\.float32"),
    Case("bias on another device", _weights(lambda ws: ws[2].__setitem__(2, ws[2][2].to(META))), ValueError,
         r"weights\[2\] b_ih is on meta but the input is on cpu"),
    Case("weight not a tensor", _weights(lambda ws: ws[3].__setitem__(1, ws[3][1].tolist())), TypeError,
         r"weights\[3\] w_hh must be a torch\.Tensor, got list"),
]


@pytest.mark.parametrize("case", WEIGHT_CASES, ids=lambda c: c.name)
def test_bad_weights_raise(case, backend):
    args = _good()
    weights = case.make([tuple(w.detach() for w in ws) for ws in _model(backend).layer_weights()])
    with pytest.raises(case.exc, match=case.match):
        functional_lstm(args["input"], args["hx"], weights, num_layers=L, bidirectional=True, backend=backend)


def test_bad_dropout_functional_raises(backend):
    args = _good()
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\], got 1\.5"):
        functional_lstm(args["input"], None, _model(backend).layer_weights(), num_layers=L, bidirectional=True,
                     dropout=1.5, training=True, backend=backend)


# Rows for the module's constructor and its PackedSequence path.
CONSTRUCTOR_CASES = [
    Case("hidden_size 0", lambda: ecgkern.LSTM(I, 0), ValueError, r"hidden_size must be a positive int, got 0"),
    Case("input_size float", lambda: ecgkern.LSTM(2.5, H), ValueError, r"input_size must be a positive int, got 2\.5"),
    Case("num_layers bool", lambda: ecgkern.LSTM(I, H, True), ValueError, r"num_layers must be a positive int, got True"),
    Case("dropout > 1", lambda: ecgkern.LSTM(I, H, dropout=1.5), ValueError, r"dropout must be a number in \[0, 1\], got 1\.5"),
    Case("proj_size >= hidden_size", lambda: ecgkern.LSTM(I, H, proj_size=H), ValueError,
         rf"proj_size must be smaller than hidden_size, got proj_size={H} and hidden_size={H}"),
    Case("proj_size negative", lambda: ecgkern.LSTM(I, H, proj_size=-1), ValueError, r"proj_size must be a non-negative int"),
    Case("unknown backend", lambda: ecgkern.LSTM(I, H, backend="nope"), ValueError, r"unknown LSTM backend 'nope'; choose one of auto, reference"),
    Case("unknown backend (functional)", lambda: functional_lstm(torch.randn(T, B, I), None, _model("reference").layer_weights(),
         num_layers=L, bidirectional=True, backend="nope"), ValueError, r"unknown LSTM backend 'nope'"),
    Case("backend not a string (functional)", lambda: functional_lstm(torch.randn(T, B, I), None, _model("reference").layer_weights(),
         num_layers=L, bidirectional=True, backend=3), TypeError, r"backend must be a string, got int"),
    Case("PackedSequence and lengths", lambda: _model("reference")(pack_padded_sequence(torch.randn(T, B, I), [T, 2]), lengths=[T, 2]),
         ValueError, r"lengths cannot be combined with a PackedSequence"),
]


@pytest.mark.parametrize("case", CONSTRUCTOR_CASES, ids=lambda c: c.name)
def test_bad_construction_raises(case):
    with pytest.raises(case.exc, match=case.match):
        case.make()


def _unavailable():
    return [name for name, s in available_backends("cpu").items() if not s.available]


@pytest.mark.parametrize("name", _unavailable() or [pytest.param("none", marks=pytest.mark.skip(reason="every backend is available here"))])
@pytest.mark.parametrize("api", ["layer", "functional"])
def test_unavailable_backend_raises_its_reason(api, name):
    reason = available_backends("cpu")[name].reason
    args = _good()
    with pytest.raises(BackendUnavailableError, match=rf"LSTM backend '{name}' cannot run .* on cpu: {re.escape(reason)}"):
        _call(api, _model(name), **args)
    with pytest.raises(BackendUnavailableError, match=re.escape(reason)):
        get_backend(name, CPU, torch.float32)


# ---------------------------------------------------------------------------------------------
# Each backend's recurrence(xg, w_hh, h0, c0) called directly with inconsistent arguments: it
# must raise, never broadcast or read out of bounds. (The layer never passes these.)

_T, _B, _H = 3, 2, 4
_SHAPE_WORDS = r"(?i)(shape|size|must be|expected|dimension|mat1|dtype|-D)"


def _rec_args(**changes):
    g = torch.Generator().manual_seed(1)
    args = {"xg": torch.randn(_T, _B, 4 * _H, generator=g), "w_hh": torch.randn(4 * _H, _H, generator=g),
            "h0": torch.randn(_B, _H, generator=g), "c0": torch.randn(_B, _H, generator=g)}
    for name, fn in changes.items():
        args[name] = fn(args[name])
    return args


RECURRENCE_CASES = [
    Case("xg 2-D", dict(xg=lambda t: t[0]), Exception, _SHAPE_WORDS),
    Case("xg gates not 4H", dict(xg=lambda t: t[..., :-1]), Exception, _SHAPE_WORDS),
    Case("w_hh not [4H, H]", dict(w_hh=lambda t: t[:, :-1]), Exception, _SHAPE_WORDS),
    Case("w_hh 4H+4 rows", dict(w_hh=lambda t: torch.cat([t, t[:4]])), Exception, _SHAPE_WORDS),
    Case("h0 batch 1 (broadcastable)", dict(h0=lambda t: t[:1]), Exception, _SHAPE_WORDS),
    Case("c0 batch 1 (broadcastable)", dict(c0=lambda t: t[:1]), Exception, _SHAPE_WORDS),
    Case("h0 batch + 1", dict(h0=lambda t: torch.cat([t, t[:1]])), Exception, _SHAPE_WORDS),
    Case("h0 3-D", dict(h0=lambda t: t[None]), Exception, _SHAPE_WORDS),
    Case("w_hh float64, rest float32", dict(w_hh=lambda t: t.double()), Exception, _SHAPE_WORDS),
    Case("c0 float64, rest float32", dict(c0=lambda t: t.double()), Exception, _SHAPE_WORDS),
]


@pytest.mark.parametrize("case", RECURRENCE_CASES, ids=lambda c: c.name)
def test_backend_recurrence_rejects_inconsistent_arguments(case, backend):
    impl = get_backend(backend, CPU, torch.float32)
    with pytest.raises(case.exc, match=case.match) as info:
        impl.recurrence(**_rec_args(**case.make))
    assert not isinstance(info.value, (AssertionError, NotImplementedError)), info.value


# ---------------------------------------------------------------------------------------------
# The C++ kernels through torch.ops, bypassing every Python check: TORCH_CHECK must catch these.

def _cpp_ops():
    reason = available_backends("cpu")["cpp"].reason
    if reason is not None:
        pytest.skip(f"the cpp extension is unavailable: {reason}")
    get_backend("cpp", CPU, torch.float32)  # loads the extension (built once, cached)
    return torch.ops.ecgkern


def _fwd_args(**changes):
    a = _rec_args(**changes)
    return a["xg"], a["w_hh"], a["h0"], a["c0"]


def _bwd_args(**changes):
    g = torch.Generator().manual_seed(2)
    args = {"dhs": torch.randn(_T, _B, _H, generator=g), "dcs": torch.randn(_T, _B, _H, generator=g),
            "w_hh": torch.randn(4 * _H, _H, generator=g), "h0": torch.randn(_B, _H, generator=g),
            "c0": torch.randn(_B, _H, generator=g), "hs": torch.randn(_T, _B, _H, generator=g),
            "cs": torch.randn(_T, _B, _H, generator=g), "gates": torch.rand(_T, _B, 4 * _H, generator=g)}
    for name, fn in changes.items():
        args[name] = fn(args[name])
    return tuple(args.values())


OP_CASES = [
    Case("fwd xg 2-D", lambda ops: ops.lstm_recurrence(*_fwd_args(xg=lambda t: t[0])), RuntimeError, r"xg must be 3-D"),
    Case("fwd xg gates not 4H", lambda ops: ops.lstm_recurrence(*_fwd_args(xg=lambda t: t[..., :-1])),
         RuntimeError, r"xg has shape \[3, 2, 15\], expected \[T, B, 4H\]"),
    Case("fwd w_hh not [4H, H]", lambda ops: ops.lstm_recurrence(*_fwd_args(w_hh=lambda t: t[:, :-1])),
         RuntimeError, r"w_hh has shape \[16, 3\], expected \[4H, H\]"),
    Case("fwd w_hh 1-D", lambda ops: ops.lstm_recurrence(*_fwd_args(w_hh=lambda t: t[0])), RuntimeError, r"w_hh must be 2-D"),
    Case("fwd h0 batch 1", lambda ops: ops.lstm_recurrence(*_fwd_args(h0=lambda t: t[:1])),
         RuntimeError, r"h0 has shape \[1, 4\], expected \[B, H\]"),
    Case("fwd c0 3-D", lambda ops: ops.lstm_recurrence(*_fwd_args(c0=lambda t: t[None])), RuntimeError, r"c0 must be 2-D"),
    Case("fwd mixed dtypes", lambda ops: ops.lstm_recurrence(*_fwd_args(h0=lambda t: t.double())),
         RuntimeError, r"h0 has dtype Double but w_hh has dtype Float"),
    Case("fwd integer", lambda ops: ops.lstm_recurrence(*_fwd_args(**{k: (lambda t: t.long()) for k in ("xg", "w_hh", "h0", "c0")})),
         RuntimeError, r"must be float32, float64, float16 or bfloat16, got Long"),
    Case("fwd complex", lambda ops: ops.lstm_recurrence(*_fwd_args(**{k: (lambda t: t.to(torch.complex64)) for k in ("xg", "w_hh", "h0", "c0")})),
         RuntimeError, r"must be float32, float64, float16 or bfloat16, got ComplexFloat"),
    Case("bwd gates not 4H", lambda ops: ops.lstm_recurrence_backward(*_bwd_args(gates=lambda t: t[..., :-1])), RuntimeError, r"gates has shape"),
    Case("bwd dhs too short", lambda ops: ops.lstm_recurrence_backward(*_bwd_args(dhs=lambda t: t[:-1])), RuntimeError, r"dhs has shape \[2, 2, 4\]"),
    Case("bwd cs wrong batch", lambda ops: ops.lstm_recurrence_backward(*_bwd_args(cs=lambda t: t[:, :1])),
         RuntimeError, r"cs has shape \[3, 1, 4\]"),
    Case("bwd hs float64", lambda ops: ops.lstm_recurrence_backward(*_bwd_args(hs=lambda t: t.double())), RuntimeError, r"hs has dtype Double"),
    Case("bwd c0 1-D", lambda ops: ops.lstm_recurrence_backward(*_bwd_args(c0=lambda t: t[0])), RuntimeError, r"c0 must be 2-D"),
]


@pytest.mark.parametrize("case", OP_CASES, ids=lambda c: c.name)
def test_cpp_op_called_directly_checks_its_arguments(case):
    ops = _cpp_ops()
    with pytest.raises(case.exc, match=case.match):
        case.make(ops)


# ---------------------------------------------------------------------------------------------
# Inputs that look odd but are valid: they must work, and give the same answer as the plain form.

def _close(got: dict, want: dict, dtype, context: str) -> None:
    for name, w in want.items():
        rtol, atol = (TOLERANCES if name in ("output", "h_n", "c_n") else GRAD_TOLERANCES)[dtype]
        assert_close(name, got[name], w, rtol, atol, context)


def test_empty_batch_gives_empty_results_like_nn_lstm(backend):
    model = _model(backend)
    ref = torch.nn.LSTM(I, H, L, bidirectional=True)
    ref.load_state_dict(model.state_dict())
    for kwargs in ({}, {"lengths": torch.zeros(0, dtype=torch.long)}):
        x = torch.randn(T, 0, I, requires_grad=True)
        out, (h, c) = model(x, **kwargs)
        want_out, (want_h, _) = ref(x)
        assert out.shape == want_out.shape == (T, 0, 2 * H) and h.shape == c.shape == want_h.shape == (LD, 0, H)
        (out.sum() + h.sum() + c.sum()).backward()
        assert x.grad.shape == x.shape
        assert all(p.grad is not None and torch.all(p.grad == 0) for p in model.parameters())
        model.zero_grad()


def _strided_variants(x):
    """Time-major [T, B, I] x as non-contiguous views holding the same values."""
    padded = torch.zeros(T, 2 * B, 3 * I)
    padded[:, ::2, ::3] = x
    channels_last = x.permute(1, 2, 0).contiguous().permute(2, 0, 1)  # stored [B, I, T]
    return {"every other element": padded[:, ::2, ::3], "channels-last-like": channels_last,
            "expanded batch": x[:, :1].expand(T, B, I)}


@pytest.mark.parametrize("api", ["layer", "functional"])
def test_strided_inputs_work_and_equal_contiguous(api, backend):
    model = _model(backend)
    args = _good()
    for name, x in _strided_variants(args["input"]).items():
        assert not x.is_contiguous(), name
        h0, c0 = args["hx"]
        strided_hx = (h0.transpose(0, 1).contiguous().transpose(0, 1), c0[:, :1].expand(LD, B, H))
        got = _call(api, model, x, strided_hx, lengths=torch.tensor([T, 2]))
        want = _call(api, model, x.contiguous(), tuple(s.contiguous() for s in strided_hx), lengths=torch.tensor([T, 2]))
        rtol, atol = TOLERANCES[torch.float32]
        for what, g, w in zip(("output", "h_n", "c_n"), (got[0], *got[1]), (want[0], *want[1])):
            assert_close(what, g, w, rtol, atol, f"{backend} {api} {name}")


def test_batch_first_permuted_input_equals_contiguous(backend):
    """A [B, T, I] view of a tensor stored as [B, I, T] (channels-last-like), with batch_first."""
    model = _model(backend, batch_first=True)
    stored = torch.randn(B, I, T)
    x = stored.permute(0, 2, 1)
    assert not x.is_contiguous()
    _close(run_layer(model, x), run_layer(model, x.contiguous()), torch.float32, backend)


@pytest.mark.parametrize("lengths", [[2, 4], (3, 1), torch.tensor([4, 1], dtype=torch.int32), torch.tensor([1, 3], dtype=torch.uint8)],
                         ids=["list", "tuple", "int32", "uint8"])
def test_lengths_in_any_integer_form_work(lengths, backend):
    model = _model(backend)
    x = _good()["input"]
    want = run_layer(model, x, lengths=torch.tensor(list(lengths), dtype=torch.long))
    _close(run_layer(model, x, lengths=lengths), want, torch.float32, backend)


def test_unsorted_packed_sequence_equals_nn_lstm(backend):
    for dtype in backend_dtypes(backend):
        model = _model(backend, dtype=dtype)
        ref = torch.nn.LSTM(I, H, L, bidirectional=True, dtype=dtype)
        ref.load_state_dict(model.state_dict())
        g = torch.Generator().manual_seed(3)
        lengths = torch.tensor([2, 5, 1, 4])  # unsorted on purpose
        padded = torch.randn(5, 4, I, generator=g, dtype=torch.float64).to(dtype)
        hx = tuple(torch.randn(LD, 4, H, generator=g, dtype=torch.float64).to(dtype) for _ in range(2))
        results = []
        for m in (model, ref):
            x = padded.clone().requires_grad_(True)
            state = tuple(s.clone().requires_grad_(True) for s in hx)
            packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
            out, (h, c) = m(packed, state)
            out_padded, out_lengths = pad_packed_sequence(out)
            assert torch.equal(out_lengths, lengths)
            (out_padded.sin().sum() + h.square().sum() + c.sum()).backward()
            results.append({"output": out_padded.detach(), "h_n": h.detach(), "c_n": c.detach(), "grad input": x.grad,
                            "grad h0": state[0].grad, "grad c0": state[1].grad,
                            **{f"grad {n}": p.grad for n, p in m.named_parameters()}})
        _close(results[0], results[1], dtype, f"{backend} {dtype} PackedSequence(enforce_sorted=False) vs nn.LSTM")

