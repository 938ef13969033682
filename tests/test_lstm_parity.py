"""ecgkern.LSTM against torch.nn.LSTM itself, with the same weights (load_state_dict both ways)."""
import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import ecgkern
from ecgkern.testing import assert_close

TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-5, 1e-5)}
GRAD_TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-4, 1e-5)}

GRID = [
    dict(num_layers=L, bidirectional=bi, batch_first=bf, bias=bias, with_state=st)
    for L, bi, bf, bias, st in itertools.product((1, 2, 3), (False, True), (False, True), (True, False), (False, True))
    if not (L == 3 and not bias)  # keep the grid's size sane; bias=False is covered at 1 and 2 layers
]


def _pair(dtype, input_size=3, hidden=5, from_nn=True, **cfg):
    torch.manual_seed(0)
    kw = {k: cfg[k] for k in ("num_layers", "bidirectional", "batch_first", "bias")}
    ref = nn.LSTM(input_size, hidden, **kw).to(dtype)
    ours = ecgkern.LSTM(input_size, hidden, **kw, backend="reference").to(dtype)
    if from_nn:
        ours.load_state_dict(ref.state_dict())
    else:
        ref.load_state_dict(ours.state_dict())
    return ref, ours


def _grads(module, x, hx, out, h, c):
    g = torch.Generator().manual_seed(1)
    data = out.data if hasattr(out, "batch_sizes") else out
    loss = (data * torch.randn(data.shape, generator=g, dtype=data.dtype)).sum() + h.sum() * 0.5 + (c * c).sum()
    wanted = [x] + ([*hx] if hx is not None else []) + list(module.parameters())
    return torch.autograd.grad(loss, wanted)


def _compare(dtype, ref_out, our_out, ref_grads, our_grads, names):
    rtol, atol = TOL[dtype]
    for name, a, b in zip(("output", "h_n", "c_n"), our_out, ref_out):
        a = a.data if hasattr(a, "batch_sizes") else a
        b = b.data if hasattr(b, "batch_sizes") else b
        assert_close(name, a, b, rtol, atol)
    rtol, atol = GRAD_TOL[dtype]
    for name, a, b in zip(names, our_grads, ref_grads):
        assert_close(f"grad {name}", a, b, rtol, atol)


def _run(module, x, hx):
    out, (h, c) = module(x, hx)
    return (out, h, c), _grads(module, x, hx, out, h, c)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cfg", GRID, ids=lambda c: "-".join(f"{k}={int(v)}" for k, v in c.items()))
def test_matches_nn_lstm(cfg, dtype):
    ref, ours = _pair(dtype, from_nn=cfg["num_layers"] != 2, **cfg)
    assert [n for n, _ in ref.named_parameters()] == [n for n, _ in ours.named_parameters()]
    B, T, D = 4, 7, 2 if cfg["bidirectional"] else 1
    x = torch.randn((B, T, 3) if cfg["batch_first"] else (T, B, 3), dtype=dtype, requires_grad=True)
    hx = None
    if cfg["with_state"]:
        hx = tuple(torch.randn(cfg["num_layers"] * D, B, 5, dtype=dtype, requires_grad=True) for _ in range(2))
    names = ["input"] + (["h0", "c0"] if hx else []) + [n for n, _ in ours.named_parameters()]
    ref_out, ref_grads = _run(ref, x, hx)
    our_out, our_grads = _run(ours, x, hx)
    _compare(dtype, ref_out, our_out, ref_grads, our_grads, names)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_unbatched_input(dtype, bidirectional):
    ref, ours = _pair(dtype, num_layers=2, bidirectional=bidirectional, batch_first=False, bias=True)
    D = 2 if bidirectional else 1
    x = torch.randn(6, 3, dtype=dtype, requires_grad=True)
    hx = tuple(torch.randn(2 * D, 5, dtype=dtype, requires_grad=True) for _ in range(2))
    names = ["input", "h0", "c0"] + [n for n, _ in ours.named_parameters()]
    ref_out, ref_grads = _run(ref, x, hx)
    our_out, our_grads = _run(ours, x, hx)
    assert our_out[0].shape == (6, 5 * D) and our_out[1].shape == (2 * D, 5)
    _compare(dtype, ref_out, our_out, ref_grads, our_grads, names)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("enforce_sorted", [False, True])
def test_packed_sequence(dtype, bidirectional, enforce_sorted):
    ref, ours = _pair(dtype, num_layers=2, bidirectional=bidirectional, batch_first=False, bias=True)
    lengths = torch.tensor([7, 5, 5, 2, 1]) if enforce_sorted else torch.tensor([3, 7, 1, 5, 2])
    padded = torch.randn(7, 5, 3, dtype=dtype, requires_grad=True)
    D = 2 if bidirectional else 1
    hx = tuple(torch.randn(2 * D, 5, 5, dtype=dtype, requires_grad=True) for _ in range(2))
    outs, grads = [], []
    for module in (ref, ours):
        packed = pack_padded_sequence(padded, lengths, enforce_sorted=enforce_sorted)
        out, (h, c) = module(packed, hx)
        assert isinstance(out, torch.nn.utils.rnn.PackedSequence)
        outs.append((out, h, c))
        grads.append(_grads(module, padded, hx, out, h, c))
    assert torch.equal(outs[0][0].batch_sizes, outs[1][0].batch_sizes)
    names = ["input", "h0", "c0"] + [n for n, _ in ours.named_parameters()]
    _compare(dtype, outs[0], outs[1], grads[0], grads[1], names)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_lengths_keyword_equals_packed(batch_first, bidirectional):
    dtype = torch.float64
    ref, ours = _pair(dtype, num_layers=2, bidirectional=bidirectional, batch_first=batch_first, bias=True)
    lengths = torch.tensor([3, 7, 1, 5])
    x = torch.randn((4, 7, 3) if batch_first else (7, 4, 3), dtype=dtype)
    packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    ref_out, (rh, rc) = ref(packed)
    ref_padded, _ = pad_packed_sequence(ref_out, batch_first=batch_first, total_length=7)
    out, (h, c) = ours(x, lengths=lengths)
    assert_close("output", out, ref_padded, *TOL[dtype])
    assert_close("h_n", h, rh, *TOL[dtype])
    assert_close("c_n", c, rc, *TOL[dtype])
    pad = (torch.arange(7).unsqueeze(0) >= lengths.unsqueeze(1))  # [B, T]
    if not batch_first:
        pad = pad.t()
    assert out[pad].abs().max() == 0, "padded positions of the output must be zero"


def test_dropout_between_layers_only_in_training():
    torch.manual_seed(0)
    m = ecgkern.LSTM(3, 5, num_layers=2, dropout=0.5)
    x = torch.randn(6, 2, 3)
    m.eval()
    a, b = m(x)[0], m(x)[0]
    assert torch.equal(a, b)
    m.train()
    torch.manual_seed(1)
    c = m(x)[0]
    torch.manual_seed(2)
    d = m(x)[0]
    assert not torch.equal(c, d), "training-mode dropout must change the output between seeds"


def test_initialisation_matches_nn_lstm_distribution():
    m = ecgkern.LSTM(4, 50, num_layers=2, bidirectional=True)
    ref = nn.LSTM(4, 50, num_layers=2, bidirectional=True)
    assert {n: p.shape for n, p in m.named_parameters()} == {n: p.shape for n, p in ref.named_parameters()}
    bound = 1 / 50 ** 0.5
    for p in m.parameters():
        assert p.abs().max() <= bound and p.abs().max() > 0.9 * bound


def test_reference_gradcheck_float64_layer():
    torch.manual_seed(0)
    m = ecgkern.LSTM(2, 3, num_layers=2, bidirectional=True, backend="reference").double()
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: m(a, (b, c))[0], (x, h0, c0))
