"""nn.LSTM's surface beyond forward: attributes user code reads, conversions both ways, and what
isinstance-based tools (dynamic quantization) and TorchScript do with the layer."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import ecgkern
from ecgkern import backends

CONFIGS = {
    "plain": {},
    "2layers-bidirectional-batch_first": {"num_layers": 2, "bidirectional": True, "batch_first": True},
    "no_bias-dropout": {"num_layers": 2, "bias": False, "dropout": 0.25},
    "proj": {"num_layers": 2, "bidirectional": True, "proj_size": 2},
}


def _nn(cfg, dtype=torch.float32):
    torch.manual_seed(0)
    return nn.LSTM(3, 5, dtype=dtype, **cfg)


def _runs_config(backend: str, cfg) -> bool:
    return not cfg.get("proj_size") or hasattr(backends.get_backend(backend, torch.device("cpu"), torch.float32),
                                               "supports_projections")


@pytest.mark.parametrize("cfg", CONFIGS.values(), ids=CONFIGS.keys())
def test_attributes_match_nn_lstm(cfg):
    ref, ours = _nn(cfg), ecgkern.LSTM(3, 5, **cfg)
    for attr in ("mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                 "bidirectional", "proj_size", "_all_weights", "_flat_weights_names"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    assert [[tuple(p.shape) for p in ws] for ws in ours.all_weights] == [[tuple(p.shape) for p in ws] for ws in ref.all_weights]
    # all_weights / _flat_weights are the module's own parameters, not copies.
    assert all(p is getattr(ours, n) for p, n in zip(ours._flat_weights, ours._flat_weights_names))
    assert ours.all_weights[0][0] is ours.weight_ih_l0


@pytest.mark.parametrize("cfg", CONFIGS.values(), ids=CONFIGS.keys())
def test_from_torch_copies_weights_and_matches(backend, cfg):
    if not _runs_config(backend, cfg):
        pytest.skip(f"backend {backend!r} does not implement proj_size")
    dtype = (torch.float64 if backends.get_backend(backend, torch.device("cpu"), torch.float64).supports("cpu", torch.float64) is None
             else torch.float32)
    ref = _nn(cfg, dtype).eval()
    ours = ecgkern.LSTM.from_torch(ref, backend=backend)
    assert ours.backend == backend and not ours.training
    for (name, p), (ref_name, q) in zip(ours.named_parameters(), ref.named_parameters(), strict=True):
        assert name == ref_name and p.dtype == dtype and torch.equal(p, q)
        assert p.data_ptr() != q.data_ptr()  # a copy: training one does not move the other
    x = torch.randn(4, 2, 3, dtype=dtype)
    if cfg.get("batch_first"):
        x = x.transpose(0, 1)
    with torch.no_grad():
        for a, b in zip((ours(x)[0], *ours(x)[1]), (ref(x)[0], *ref(x)[1])):
            torch.testing.assert_close(a, b)


def test_conversions_keep_training_mode_and_frozen_weights_and_reject_other_modules():
    ref = _nn({"num_layers": 2})
    ref.weight_hh_l0.requires_grad_(False)
    ours = ecgkern.LSTM.from_torch(ref)
    assert ours.training and not ours.weight_hh_l0.requires_grad and ours.weight_hh_l1.requires_grad
    back = ours.to_torch()
    assert back.training and not back.weight_hh_l0.requires_grad and back.weight_ih_l0.requires_grad
    with pytest.raises(TypeError, match="from_torch expects a torch.nn.LSTM, got GRU"):
        ecgkern.LSTM.from_torch(nn.GRU(3, 5))


@pytest.mark.parametrize("cfg", CONFIGS.values(), ids=CONFIGS.keys())
def test_to_torch_is_an_equal_nn_lstm(cfg):
    ours = ecgkern.LSTM(3, 5, dtype=torch.float64, **cfg).eval()
    ref = ours.to_torch()
    assert type(ref) is nn.LSTM and not ref.training
    assert ref.weight_ih_l0.dtype == torch.float64 and ref.weight_ih_l0.device == ours.weight_ih_l0.device
    for attr in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional", "proj_size"):
        assert getattr(ref, attr) == getattr(ours, attr), attr
    for (name, p), (ref_name, q) in zip(ours.named_parameters(), ref.named_parameters(), strict=True):
        assert name == ref_name and torch.equal(p, q) and p.data_ptr() != q.data_ptr()
    assert ours.train().to_torch().training
    round_trip = ecgkern.LSTM.from_torch(ref, backend="reference")
    assert all(torch.equal(a, b) for a, b in zip(round_trip.parameters(), ours.parameters()))


def test_dynamic_quantization_skips_the_layer_until_converted():
    """quantize_dynamic swaps modules by type: ecgkern.LSTM is not an nn.LSTM, so it stays as it is
    (still float, still ecgkern); after to_torch() it is quantized like any nn.LSTM."""
    torch.backends.quantized.engine = torch.backends.quantized.supported_engines[-1]
    model = nn.Sequential(ecgkern.LSTM(3, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(model, {nn.LSTM}, dtype=torch.qint8)
        assert isinstance(quantized[0], ecgkern.LSTM)
        converted = torch.ao.quantization.quantize_dynamic(nn.Sequential(model[0].to_torch()), {nn.LSTM}, dtype=torch.qint8)
        assert isinstance(converted[0], torch.ao.nn.quantized.dynamic.LSTM)
        x = torch.randn(6, 2, 3)
        torch.testing.assert_close(converted[0](x)[0], model[0](x)[0], atol=0.05, rtol=0)


def test_torchscript_script_is_a_clear_error():
    with pytest.raises(RuntimeError, match=r"ecgkern.LSTM does not support TorchScript \(torch.jit.script"):
        torch.jit.script(nn.Sequential(nn.Linear(3, 3), ecgkern.LSTM(3, 5)))
    torch.jit.script(ecgkern.LSTM(3, 5).to_torch())  # the documented way out works
