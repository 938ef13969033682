"""The PyTorch paths around the layer, on every CPU backend, against the reference.

Higher-order autograd, forward-mode AD, torch.func (grad, jacrev, per-sample gradients with
vmap), models traced or exported under no_grad and then trained, ``torch.jit.trace``'s own
check, ``torch.compile(fullgraph=True)`` on a fresh process's first call, a ``.pt2`` loaded in a
fresh process after ``import ecgkern``, and availability checks without side effects.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call, grad, jacrev, jvp, vmap

import ecgkern
from ecgkern import _build, backends
from ecgkern.backends import BackendUnavailableError, get_backend
from ecgkern.testing import (
    check_jvp,
    gradgradcheck_recurrence,
    random_recurrence_inputs,
)

F64 = {"rtol": 1e-9, "atol": 1e-10}
REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def _recurrence(name):
    return get_backend(name, CPU, torch.float64).recurrence


def _models(backend, **kwargs):
    """(model on ``backend``, the same weights on ``reference``), float64."""
    torch.manual_seed(0)
    model = ecgkern.LSTM(3, 4, backend=backend, **kwargs).double()
    twin = ecgkern.LSTM(3, 4, backend="reference", **kwargs).double()
    twin.load_state_dict(model.state_dict())
    return model, twin


def _assert_same_grads(model, twin):
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert p.grad is not None, f"no gradient reached {name}"
        torch.testing.assert_close(p.grad, q.grad, **F64, msg=lambda m, name=name: f"{name}: {m}")


# ---- second order --------------------------------------------------------------------------------

def test_gradgradcheck_float64(backend):
    gradgradcheck_recurrence(_recurrence(backend))


def test_gradgradcheck_catches_a_backward_that_is_not_differentiable():
    class OnceDifferentiable(torch.autograd.Function):  # right gradient, constant second order
        @staticmethod
        def forward(ctx, *inputs):
            ctx.save_for_backward(*inputs)
            return _recurrence("reference")(*inputs)

        @staticmethod
        def backward(ctx, dhs, dcs):
            inputs = [t.detach().requires_grad_() for t in ctx.saved_tensors]
            with torch.enable_grad():
                return torch.autograd.grad(_recurrence("reference")(*inputs), inputs, (dhs, dcs))

    with pytest.raises(RuntimeError):  # GradcheckError is a RuntimeError
        gradgradcheck_recurrence(OnceDifferentiable.apply, shapes=((3, 2, 3),))


def test_gradient_penalty_matches_reference(backend):
    model, twin = _models(backend, num_layers=2)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    for m in (model, twin):
        xr = x.clone().requires_grad_()
        out, (_, c) = m(xr)
        (g,) = torch.autograd.grad(out.pow(2).sum() + c.sum(), xr, create_graph=True)
        g.pow(2).sum().backward()
    _assert_same_grads(model, twin)


# ---- forward mode --------------------------------------------------------------------------------

def test_jvp_matches_finite_differences_and_reference(backend):
    model, twin = _models(backend, bidirectional=True)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    v = torch.randn_like(x)
    with torch.no_grad():
        f = lambda m, z: m(z)[0]
        eps = 1e-6
        finite = (f(model, x + eps * v) - f(model, x - eps * v)) / (2 * eps)
        _, tangent = jvp(lambda z: f(model, z), (x,), (v,))
        _, want = jvp(lambda z: f(twin, z), (x,), (v,))
    assert tangent.abs().max() > 1e-3  # never an all-zero tangent
    torch.testing.assert_close(tangent, finite, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(tangent, want, **F64)


def test_jvp_of_the_recurrence_matches_finite_differences(backend):
    check_jvp(_recurrence(backend))


def test_forward_ad_matches_reference(backend):
    xg, w_hh, h0, c0 = random_recurrence_inputs(4, 2, 3, dtype=torch.float64)
    tangents = [torch.randn_like(t) for t in (xg, w_hh, h0, c0)]
    results = []
    for name in (backend, "reference"):
        with fwAD.dual_level():
            duals = [fwAD.make_dual(t, d) for t, d in zip((xg, w_hh, h0, c0), tangents)]
            results.append([fwAD.unpack_dual(o).tangent for o in _recurrence(name)(*duals)])
    for got, want in zip(*results):
        assert got is not None and got.abs().max() > 1e-3
        torch.testing.assert_close(got, want, **F64)


# ---- torch.func ----------------------------------------------------------------------------------

def test_func_grad_and_jacrev(backend):
    model, twin = _models(backend)
    x = torch.randn(4, 2, 3, dtype=torch.float64)

    def loss(m):
        return lambda params, z: functional_call(m, params, (z,))[0].pow(2).sum()

    params = {k: v.detach() for k, v in model.named_parameters()}
    got, want = grad(loss(model))(params, x), grad(loss(twin))(params, x)
    for k in params:
        torch.testing.assert_close(got[k], want[k], **F64)
    jac = jacrev(lambda z: model(z)[0])(x)
    torch.testing.assert_close(jac, jacrev(lambda z: twin(z)[0])(x), **F64)


def test_per_sample_gradients_with_vmap(backend):
    model, twin = _models(backend)
    N, T = 3, 4
    xs, ys = torch.randn(N, T, 3, dtype=torch.float64), torch.randn(N, 4, dtype=torch.float64)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(params, x, y):  # one sample: x [T, I], y [H]
        out, _ = functional_call(model, params, (x.unsqueeze(1),))
        return (out[-1, 0] - y).pow(2).sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, xs, ys)
    for n in range(N):  # the truth: plain autograd through the reference, one sample at a time
        twin.zero_grad()
        out, _ = twin(xs[n].unsqueeze(1))
        (out[-1, 0] - ys[n]).pow(2).sum().backward()
        for name, p in twin.named_parameters():
            torch.testing.assert_close(per_sample[name][n], p.grad, **F64)


def test_vmap_over_weights_loops_and_matches_reference(backend):
    xg, w_hh, h0, c0 = random_recurrence_inputs(3, 2, 3, dtype=torch.float64)
    ws = torch.stack([w_hh, 2 * w_hh])
    got = vmap(_recurrence(backend), in_dims=(None, 0, None, None))(xg, ws, h0, c0)
    for k in range(2):
        for g, want in zip(got, _recurrence("reference")(xg, ws[k], h0, c0)):
            torch.testing.assert_close(g[k], want, **F64)


# ---- graphs recorded under no_grad, trained later ----------------------------------------------

def test_traced_under_no_grad_then_trained(backend):
    model, twin = _models(backend)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, (x,))  # check_trace=True: reruns under no_grad and compares
    traced(x)[0].pow(2).sum().backward()
    twin(x)[0].pow(2).sum().backward()
    _assert_same_grads(model, twin)


def test_exported_under_no_grad_then_trained(backend):
    model, twin = _models(backend)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    with torch.no_grad():
        exported = torch.export.export(model, (x,)).module()
    exported(x)[0].pow(2).sum().backward()
    twin(x)[0].pow(2).sum().backward()
    for (name, p), q in zip(exported.named_parameters(), twin.parameters()):
        assert p.grad is not None, f"no gradient reached {name}"
        torch.testing.assert_close(p.grad, q.grad, **F64)


def test_inference_op_refuses_to_be_differentiated():
    xg, w_hh, h0, c0 = (t.requires_grad_() for t in random_recurrence_inputs(2, 2, 3))
    if backends.cpp.unavailable_reason() is not None:
        pytest.skip(f"the cpp backend is unavailable: {backends.cpp.unavailable_reason()}")
    get_backend("cpp", CPU, torch.float32)  # builds/loads the extension
    hs, _ = torch.ops.ecgkern.lstm_recurrence_inference(xg, w_hh, h0, c0)
    with pytest.raises(RuntimeError, match="has no gradient"):
        hs.sum().backward()


# ---- fresh processes -----------------------------------------------------------------------------

def _run(script: str, *args: str, cache: Path | None = None) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    if cache is not None:
        env["ECGKERN_CACHE_DIR"] = str(cache)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], env=env, capture_output=True,
                            text=True, timeout=600, check=False)
    assert result.returncode == 0, f"subprocess failed:\n{result.stderr[-3000:]}"
    return result.stdout.strip().splitlines()[-1]


_FULLGRAPH = """
    import sys, torch, ecgkern
    torch.manual_seed(0)
    model = ecgkern.LSTM(3, 5, backend=sys.argv[1])
    twin = ecgkern.LSTM(3, 5, backend="reference"); twin.load_state_dict(model.state_dict())
    x = torch.randn(4, 2, 3)
    compiled = torch.compile(model, fullgraph=True, backend=sys.argv[2])
    out, _ = compiled(x)  # the first call of this process
    torch.testing.assert_close(out, twin(x)[0], rtol=1e-5, atol=1e-6)
    print("OK")
"""


@pytest.mark.slow
def test_fullgraph_compile_first_call_in_a_fresh_process(backend):
    # Dynamo's tracing is what a first call can trip on; inductor (slow to start) once, for auto's choice.
    assert _run(_FULLGRAPH, backend, "inductor" if backend == "cpp" else "aot_eager") == "OK"


_LOAD_PT2 = """
    import sys, torch, ecgkern
    program = torch.export.load(sys.argv[1])
    x, want = torch.load(sys.argv[2])
    torch.testing.assert_close(program.module()(x)[0], want, rtol=0, atol=0)
    print("OK")
"""


@pytest.mark.slow
def test_exported_pt2_loads_in_a_fresh_process_after_import_ecgkern(backend, tmp_path):
    torch.manual_seed(0)
    model = ecgkern.LSTM(3, 5, backend=backend)
    x = torch.randn(4, 2, 3)
    program = torch.export.export(model, (x,))
    torch.export.save(program, tmp_path / "model.pt2")
    with torch.no_grad():
        torch.save((x, model(x)[0]), tmp_path / "io.pt")
    assert _run(_LOAD_PT2, str(tmp_path / "model.pt2"), str(tmp_path / "io.pt")) == "OK"


_PROBE = """
    import json, os
    before = dict(os.environ)
    import ecgkern
    from ecgkern import _build
    statuses = [str(s) for s in ecgkern.available_backends().values()]
    statuses += [str(s) for s in ecgkern.available_backends("cpu").values()]
    changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))
    print(json.dumps({"changed": changed, "built": sorted(_build.BUILD_SECONDS), "loaded": _build.CPU_EXTENSION.loaded}))
"""


def test_available_backends_builds_nothing_and_leaves_the_environment(tmp_path):
    result = json.loads(_run(_PROBE, cache=tmp_path))
    assert result == {"changed": [], "built": [], "loaded": False}
    assert not any(tmp_path.rglob("*.so")), "available_backends() built an extension"


# ---- auto's fallback -----------------------------------------------------------------------------

def test_auto_warns_once_when_its_first_choice_fails_to_build(monkeypatch):
    def failing_build(arch_list=None):
        raise _build.ExtensionBuildError("building the 'ecgkern_cpu' extension failed: an error")

    monkeypatch.setattr(_build.CPU_EXTENSION, "_state", {})
    monkeypatch.setattr(_build.CPU_EXTENSION, "build", failing_build)
    monkeypatch.setattr(backends, "_WARNED", set())
    with pytest.warns(RuntimeWarning, match=r"'cpp'.*an error.*falling back to 'reference'"):
        assert backends.resolve_backend_name("auto") == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.resolve_backend_name("auto") == "reference"  # once only
    with pytest.raises(BackendUnavailableError, match="an error"):
        get_backend("cpp", CPU, torch.float32)


def test_auto_warns_when_no_compiler_is_found(monkeypatch):
    monkeypatch.setattr(_build.CPU_EXTENSION, "_state", {})
    monkeypatch.setenv("CXX", "no-such-compiler-ecgkern")
    monkeypatch.setattr(backends, "_WARNED", set())
    with pytest.warns(RuntimeWarning, match="no C.. compiler 'no-such-compiler-ecgkern'"):
        assert backends.resolve_backend_name("auto") == "reference"
