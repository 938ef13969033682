"""ONNX export: ecgkern.LSTM becomes ONNX's LSTM operator with dynamic batch and time.

Each case exports with one shape and runs the ONNX model in onnxruntime at other batch sizes and
lengths, against the eager model. Both exporters: dynamo (``dynamo=True``) and the legacy one.
"""
from __future__ import annotations

import warnings
from collections import Counter

import pytest
import torch

import ecgkern

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

EXPORTERS = [pytest.param(True, id="dynamo"), pytest.param(False, id="legacy")]
# (batch, time) at export, then the shapes the ONNX model is run at.
EXPORT_SHAPE = (3, 7)
RUN_SHAPES = [(1, 1), (5, 12), (2, 4)]


class Model(torch.nn.Module):
    """The LSTM between two linear layers, returning the output and both final states."""

    def __init__(self, *, input_size=2, hidden=6, backend="reference", with_state=False, **cfg):
        super().__init__()
        self.lstm = ecgkern.LSTM(input_size, hidden, backend=backend, **cfg)
        self.head = torch.nn.Linear(hidden * (2 if self.lstm.bidirectional else 1), 1)
        self.with_state = with_state

    def forward(self, x, h0=None, c0=None):
        out, (h, c) = self.lstm(x, (h0, c0) if self.with_state else None)
        return self.head(out), h, c


def _inputs(model: Model, batch: int, time: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lstm = model.lstm
    shape = (batch, time) if lstm.batch_first else (time, batch)
    x = torch.randn(*shape, lstm.input_size, generator=g)
    if not model.with_state:
        return (x,)
    state = (lstm.num_layers * (2 if lstm.bidirectional else 1), batch, lstm.hidden_size)
    return x, torch.randn(*state, generator=g), torch.randn(*state, generator=g)


def export(model: Model, path, dynamo: bool):
    args = _inputs(model, *EXPORT_SHAPE)
    names = ["x", "h0", "c0"][: len(args)]
    batch_axis, time_axis = (0, 1) if model.lstm.batch_first else (1, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            b, t = torch.export.Dim("batch"), torch.export.Dim("time")
            shapes = [{batch_axis: b, time_axis: t}] + [{1: b}] * (len(args) - 1)
            torch.onnx.export(model, args, path, dynamo=True, input_names=names,
                              dynamic_shapes=tuple(shapes), verbose=False)
        else:
            axes = {"x": {batch_axis: "batch", time_axis: "time"}}
            axes.update({n: {1: "batch"} for n in names[1:]})
            torch.onnx.export(model, args, path, dynamo=False, input_names=names,
                              output_names=["y", "h_n", "c_n"], dynamic_axes=axes)
    return names


def check_matches_eager(model: Model, path, names):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for seed, (batch, time) in enumerate(RUN_SHAPES, start=1):
        args = _inputs(model, batch, time, seed)
        with torch.no_grad():
            expected = model(*args)
        got = session.run(None, {n: a.numpy() for n, a in zip(names, args)})
        assert len(got) == 3
        for name, e, o in zip(("output", "h_n", "c_n"), expected, got):
            where = f"{name} at batch={batch}, time={time}"
            torch.testing.assert_close(torch.from_numpy(o), e, rtol=1e-4, atol=1e-5,
                                       msg=lambda m, where=where: f"{where}: {m}")


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_every_backend_exports_bidirectional_two_layers(backend, dynamo, tmp_path):
    torch.manual_seed(0)
    model = Model(backend=backend, num_layers=2, bidirectional=True, batch_first=True, with_state=True).eval()
    path = tmp_path / "m.onnx"
    names = export(model, path, dynamo)
    assert "LSTM" in {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not any(n.domain == "ecgkern" for n in onnx.load(str(path)).graph.node)
    check_matches_eager(model, path, names)


CONFIGS = {
    "1layer": {"num_layers": 1},
    "1layer-state-batch_first": {"num_layers": 1, "with_state": True, "batch_first": True},
    "3layers-bidirectional": {"num_layers": 3, "bidirectional": True},
    "2layers-no_bias-state": {"num_layers": 2, "bias": False, "with_state": True},
}


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("cfg", CONFIGS.values(), ids=CONFIGS.keys())
def test_configurations(cfg, dynamo, tmp_path):
    torch.manual_seed(1)
    model = Model(backend="auto", **cfg).eval()
    path = tmp_path / "m.onnx"
    check_matches_eager(model, path, export(model, path, dynamo))


def test_ecg_shape_graph_is_one_lstm_op(tmp_path):
    """I=1, H=64, one layer, batch_first (the ECG model's LSTM): one ONNX LSTM, a few reshapes."""
    model = Model(input_size=1, hidden=64, backend="auto", batch_first=True).eval()
    path = tmp_path / "m.onnx"
    check_matches_eager(model, path, export(model, path, dynamo=True))
    ops = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    assert ops["LSTM"] == 1
    assert not {"Loop", "Scan", "Sigmoid", "Tanh"} & set(ops), ops


def test_plain_torch_export_keeps_ecgkern_op():
    """Only ONNX export switches to torch's LSTM op; a .pt2 keeps the chosen backend's op."""
    if ecgkern.available_backends("cpu")["cpp"].reason:
        pytest.skip("the cpp backend is unavailable here")
    lstm = ecgkern.LSTM(2, 4, backend="cpp")
    program = torch.export.export(lstm, (torch.randn(5, 3, 2),))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert any("ecgkern" in t for t in targets), targets
    assert not any("lstm.input" in t for t in targets), targets


def test_lengths_is_a_clear_error(tmp_path):
    class WithLengths(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = ecgkern.LSTM(2, 3)

        def forward(self, x):
            return self.lstm(x, lengths=torch.tensor([4, 2]))[0]

    with pytest.raises(Exception, match="lengths or a PackedSequence is not supported"):
        torch.onnx.export(WithLengths(), (torch.randn(4, 2, 2),), tmp_path / "m.onnx", dynamo=False)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_bare_module_exports(dynamo, tmp_path):
    """The layer itself as the exported model (its forward's signature, its tuple output)."""
    lstm = ecgkern.LSTM(2, 3, num_layers=2).eval()
    x = torch.randn(4, 2, 2)
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(lstm, (x,), path, dynamo=dynamo)
    out, (h, c) = lstm(x)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
    for e, o in zip((out, h, c), got):
        torch.testing.assert_close(torch.from_numpy(o), e.detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_unbatched_input_dynamic_time(dynamo, tmp_path):
    lstm = ecgkern.LSTM(2, 3, bidirectional=True).eval()
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(lstm, (torch.randn(5, 2),), path, dynamo=True,
                              dynamic_shapes=({0: torch.export.Dim("time")},))
        else:
            torch.onnx.export(lstm, (torch.randn(5, 2),), path, dynamo=False, input_names=["input"],
                              dynamic_axes={"input": {0: "time"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for time in (1, 9):
        x = torch.randn(time, 2)
        out, (h, c) = lstm(x)
        for e, o in zip((out, h, c), session.run(None, {"input": x.numpy()})):
            torch.testing.assert_close(torch.from_numpy(o), e.detach(), rtol=1e-4, atol=1e-5)


def test_dynamo_training_dropout_is_a_clear_error(tmp_path):
    lstm = ecgkern.LSTM(2, 3, num_layers=2, dropout=0.5).train()
    with pytest.raises(Exception, match="dropout in training mode is not supported; call model.eval"):
        torch.onnx.export(lstm, (torch.randn(4, 2, 2),), tmp_path / "m.onnx", dynamo=True)


def test_strict_fallback_of_the_dynamo_exporter_is_a_clear_error(monkeypatch):
    """When non-strict torch.export fails the dynamo exporter retries with dynamo (strict), which
    folds is_in_onnx_export() to False; the layer still knows it is exporting and says what to fix,
    instead of leaving ecgkern's op in the graph for the exporter to fail on."""
    from ecgkern import _onnx

    if _onnx._dynamo_exporter_flags is None:
        pytest.skip("this torch has no dynamo exporter flag")
    monkeypatch.setattr(_onnx._dynamo_exporter_flags, "_is_onnx_exporting", True)
    with pytest.raises(Exception, match="runs through torch.export's non-strict mode"):
        torch.export.export(ecgkern.LSTM(2, 3), (torch.randn(4, 2, 2),), strict=True)
