"""The cuda backend: availability reasons everywhere; kernel build checks where nvcc exists;
conformance, gradcheck, opcheck and torch.compile where a CUDA GPU is visible.

The compile-only checks for sm_80/sm_90 with the ptxas report live in .ci/check_cuda_build.sh;
here one architecture is compiled to assert that no kernel spills registers.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

import ecgkern
from ecgkern import _build, testing
from ecgkern.backends import BackendUnavailableError, available_backends, cuda, get_backend, reference

CSRC = Path(__file__).resolve().parent.parent / "csrc"
KERNELS = CSRC / "lstm_cuda_kernels.cu"


# ---- availability (every machine) ----------------------------------------------------------------

@pytest.fixture
def fresh_state(monkeypatch):
    """A cuda extension that has not tried to build yet in this process."""
    monkeypatch.setattr(_build.CUDA_EXTENSION, "_state", {})
    return cuda


def test_reason_on_cpu_only_torch():
    if torch.version.cuda is not None:
        pytest.skip(f"torch {torch.__version__} is a CUDA build")
    # available_backends("cuda") rather than (): the latter would also build the cpp extension.
    status = available_backends("cuda")["cuda"]
    assert not status.available
    assert status.reason.startswith("torch was built without CUDA")
    assert cuda.unavailable_reason() == status.reason
    with pytest.raises(BackendUnavailableError, match="torch was built without CUDA"):
        get_backend("cuda", torch.device("cuda"), torch.float32)


def test_reason_for_cpu_tensors():
    assert available_backends("cpu")["cuda"].reason == "the cuda backend runs on CUDA devices only, not on cpu"
    model = ecgkern.LSTM(2, 3, backend="cuda")
    with pytest.raises(BackendUnavailableError, match="runs on CUDA devices only, not on cpu"):
        model(torch.randn(4, 1, 2))


def test_reasons_come_in_order_and_never_build(fresh_state, monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("the availability checks must not build while a cheaper check fails")

    monkeypatch.setattr(_build.CUDA_EXTENSION, "build", no_build)
    monkeypatch.setattr(torch.version, "cuda", None)
    assert cuda.unavailable_reason().startswith("torch was built without CUDA")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(cuda, "find_nvcc", lambda: None)
    assert cuda.unavailable_reason("cuda").startswith("no nvcc found")
    monkeypatch.setattr(cuda, "find_nvcc", lambda: "/usr/bin/nvcc")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cuda.unavailable_reason("cuda") == "no CUDA GPU is visible"


def test_once_loaded_the_checks_are_not_repeated(fresh_state, monkeypatch):
    # recurrence() asks on every call; after a successful load that must cost nothing.
    monkeypatch.setitem(_build.CUDA_EXTENSION._state, "reason", None)
    monkeypatch.setattr(cuda, "find_nvcc", lambda: pytest.fail("find_nvcc called after a successful load"))
    assert cuda.unavailable_reason("cuda") is None
    assert cuda.unavailable_reason("cpu") == "the cuda backend runs on CUDA devices only, not on cpu"


def test_build_error_is_the_reason_and_is_tried_once(fresh_state, monkeypatch):
    from ecgkern._build import ExtensionBuildError

    calls = []

    def failing_build(arch_list=None):
        calls.append(arch_list)
        raise ExtensionBuildError("building the 'ecgkern_cuda' extension failed: something specific")

    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(cuda, "find_nvcc", lambda: "/usr/bin/nvcc")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_build.CUDA_EXTENSION, "build", failing_build)
    assert cuda.unavailable_reason("cuda") is None  # buildable: the build waits for first use
    assert calls == []
    for _ in range(2):
        with pytest.raises(BackendUnavailableError, match="something specific"):
            get_backend("cuda", torch.device("cuda"), torch.float32)
    assert len(calls) == 1
    assert cuda.unavailable_reason("cuda") == "building the 'ecgkern_cuda' extension failed: something specific"


def test_supports():
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        assert cuda.supports("cuda", dtype) is None
    assert "not torch.int32" in cuda.supports("cuda", torch.int32)
    assert "CUDA devices only" in cuda.supports("cpu", torch.float32)


def test_arch_flags():
    assert _build.arch_flags("8.0;9.0") == ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"]
    assert _build.arch_flags("9.0+PTX") == ["-gencode=arch=compute_90,code=sm_90", "-gencode=arch=compute_90,code=compute_90"]
    assert _build.arch_flags("9.0a") == ["-gencode=arch=compute_90a,code=sm_90a"]
    assert _build.arch_flags("10.0f+PTX") == ["-gencode=arch=compute_100f,code=sm_100f",
                                              "-gencode=arch=compute_100f,code=compute_100f"]
    for bad in ("hopper", "9.0b", "a9.0"):
        with pytest.raises(ValueError, match="cannot read CUDA architecture"):
            _build.arch_flags(bad)
    with pytest.raises(ValueError, match="no CUDA architecture"):
        _build.arch_flags(" ; ")


def test_find_nvcc_honours_cuda_home(monkeypatch, tmp_path):
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    assert cuda.find_nvcc() is None  # CUDA_HOME names the toolkit: no fallback to PATH
    (tmp_path / "bin" / "nvcc").write_text("#!/bin/sh\n")
    assert cuda.find_nvcc() == str(tmp_path / "bin" / "nvcc")


# ---- kernel translation unit (where nvcc exists; about 10 s) --------------------------------------

def _ptxas_report(arch: str) -> str:
    nvcc = cuda.find_nvcc()
    if nvcc is None:
        pytest.skip("no nvcc found")
    with tempfile.TemporaryDirectory() as scratch:
        result = subprocess.run(
            [nvcc, "-std=c++17", "-O3", f"-gencode=arch=compute_{arch},code=sm_{arch}", "-Xptxas", "-v",
             "-c", str(KERNELS), "-o", str(Path(scratch) / "k.o")],
            capture_output=True, text=True, timeout=300,
        )
    assert result.returncode == 0, f"nvcc failed on {KERNELS.name}:\n{result.stderr[-4000:]}"
    return result.stderr


def test_kernels_compile_without_spills():
    report = _ptxas_report("90")
    kernels = re.findall(r"Compiling entry function '(\S+)'", report)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    # 2 pointwise kernels x 4 dtypes + 2 persistent kernels x 4 dtypes x 2 padded widths
    assert len(kernels) == 24 and len(spills) == 24, report[-2000:]
    spilled = [name for name, (st, ld) in zip(kernels, spills) if int(st) or int(ld)]
    assert not spilled, f"kernels spilling registers: {spilled}"


# ---- the kernels themselves, run on the CPU (tests/cuda_emulation; about 15 s) ---------------------
# The real kernel code of both strategies, float32 and float64: block threads as std::threads,
# __syncthreads as a barrier (see emulate.cpp). Catches indexing and math errors without a GPU;
# it cannot see timing-dependent races (compute-sanitizer racecheck on a GPU does that).

EMULATOR = Path(__file__).resolve().parent / "cuda_emulation" / "emulate.cpp"


def _cuda_include() -> Path | None:
    roots = [os.environ.get("CUDA_HOME"), "/usr/local/cuda"]
    nvcc = cuda.find_nvcc()
    if nvcc:
        roots.append(str(Path(nvcc).resolve().parent.parent))
    for root in filter(None, roots):
        if (Path(root) / "include" / "cuda_runtime.h").is_file():
            return Path(root) / "include"
    return None


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    include = _cuda_include()
    if include is None:
        pytest.skip("no CUDA toolkit headers (cuda_runtime.h) found")
    binary = tmp_path_factory.mktemp("emulate") / "emulate"
    result = subprocess.run([os.environ.get("CXX", "c++"), "-std=c++20", "-O1", "-pthread", "-w", f"-I{include}",
                             str(EMULATOR), "-o", str(binary)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"building the kernel emulator failed:\n{result.stderr[-4000:]}"
    return binary


EMULATED_DTYPES = {torch.float32: "f32", torch.float64: "f64", torch.bfloat16: "bf16", torch.float16: "f16"}


def _emulate(binary, strategy, dtype, T, B, H, inputs, tmp_path):
    src, dst = tmp_path / "in.bin", tmp_path / "out.bin"
    src.write_bytes(b"".join(t.contiguous().view(torch.uint8).numpy().tobytes() for t in inputs))
    code = EMULATED_DTYPES[dtype]
    subprocess.run([str(binary), strategy, code, str(T), str(B), str(H), str(src), str(dst)], check=True, timeout=120)
    flat = torch.frombuffer(bytearray(dst.read_bytes()), dtype=dtype)
    hs, cs, gates, dxg, dh0, dc0 = flat.split([T * B * H, T * B * H, T * B * 4 * H, T * B * 4 * H, B * H, B * H])
    return hs.view(T, B, H), cs.view(T, B, H), gates.view(T, B, 4 * H), dxg.view(T, B, 4 * H), dh0.view(B, H), dc0.view(B, H)


@pytest.mark.parametrize("strategy,shapes", [
    ("persistent", ((1, 1, 1), (6, 1, 17), (5, 4, 8), (3, 2, 32), (9, 3, 33), (20, 5, 64))),
    ("fused", ((1, 1, 1), (5, 4, 8), (9, 3, 33), (4, 3, 70))),
])
@pytest.mark.parametrize("dtype", list(EMULATED_DTYPES), ids=lambda d: str(d).removeprefix("torch."))
def test_kernels_emulated_on_cpu(emulator, strategy, shapes, dtype, tmp_path):
    for k, (T, B, H) in enumerate(shapes):
        context = f"emulated {strategy} kernels, T={T} B={B} H={H} {dtype}"
        inputs = testing.random_recurrence_inputs(T, B, H, dtype=dtype, seed=k)
        g = torch.Generator().manual_seed(100 + k)
        dhs, dcs = (torch.randn(T, B, H, generator=g, dtype=torch.float64).to(dtype) for _ in range(2))
        hs, cs, gates, dxg, dh0, dc0 = _emulate(emulator, strategy, dtype, T, B, H, (*inputs, dhs, dcs), tmp_path)
        hs, cs, gates, dxg, dh0, dc0 = (t.double() for t in (hs, cs, gates, dxg, dh0, dc0))
        inputs = [t.double() for t in inputs]

        leaves = [t.double().requires_grad_(True) for t in inputs]
        ths, tcs = reference.recurrence(*leaves)
        loss = (ths * dhs.double()).sum() + (tcs * dcs.double()).sum()
        tdxg, tdw, tdh0, tdc0 = torch.autograd.grad(loss, leaves)
        h_prev = torch.cat([leaves[2].detach()[None], ths.detach()[:-1]])
        pre = leaves[0].detach() + h_prev @ leaves[1].detach().t()
        i, f, gg, o = pre.chunk(4, dim=2)
        tgates = torch.cat([i.sigmoid(), f.sigmoid(), gg.tanh(), o.sigmoid()], dim=2)
        for name, got, want in (("hs", hs, ths), ("cs", cs, tcs), ("gates", gates, tgates)):
            testing.assert_close(name, got, want, *testing.tolerance(dtype, T, want), context)
        for name, got, want in (("dxg", dxg, tdxg), ("dh0", dh0, tdh0), ("dc0", dc0, tdc0)):
            testing.assert_close(name, got, want, *testing.tolerance(dtype, T, want, grad=True), context)
        # dW_hh as the binding forms it: ONE GEMM of dxg with [h0, hs[:-1]].
        dw = dxg.reshape(T * B, 4 * H).t() @ torch.cat([inputs[2][None], hs[:-1]]).reshape(T * B, H)
        testing.assert_close("dw_hh", dw, tdw, *testing.tolerance(dtype, T, tdw, grad=True), context)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2 ** -9), (torch.float16, 2 ** -11)], ids=["bfloat16", "float16"])
def test_strategies_agree_in_half_precision(emulator, dtype, tol, tmp_path):
    # Both strategies carry h, c, hW and the gradients in float32 and round only what they store,
    # so they differ by the GEMMs' summation order: at most an ulp or so of the storage dtype.
    # A strategy that rounded hW or h to storage before the add drifts past these bounds
    # within these 40 steps (bfloat16: cs, gates, dxg, dc0; float16: dxg).
    T, B, H = 40, 3, 24
    inputs = testing.random_recurrence_inputs(T, B, H, dtype=dtype, seed=7)
    g = torch.Generator().manual_seed(8)
    grads = tuple(torch.randn(T, B, H, generator=g).to(dtype) for _ in range(2))
    fused = _emulate(emulator, "fused", dtype, T, B, H, (*inputs, *grads), tmp_path)
    persistent = _emulate(emulator, "persistent", dtype, T, B, H, (*inputs, *grads), tmp_path)
    for name, a, b in zip(("hs", "cs", "gates", "dxg", "dh0", "dc0"), fused, persistent):
        testing.assert_close(name, a.double(), b.double(), tol, tol, f"fused vs persistent, {dtype}, T={T} B={B} H={H}")


# ---- on a CUDA GPU ------------------------------------------------------------------------------

_REASON = cuda.unavailable_reason("cuda")  # builds the extension (once, cached) only where a GPU is visible
gpu = pytest.mark.skipif(_REASON is not None, reason=f"cuda backend unavailable: {_REASON}")
STRATEGIES = ("auto", "fused", "persistent")
# Shapes for both strategies: the persistent kernels take H <= 64 only.
SMALL_H = testing.DEFAULT_SHAPES                                    # H in 1..64
LARGE_H = ((1, 2, 65), (7, 3, 96), (4, 5, 130))


@pytest.fixture(params=STRATEGIES)
def strategy(request, monkeypatch):
    monkeypatch.setenv("ECGKERN_CUDA_STRATEGY", request.param)  # read by the binding at each call
    return request.param


@gpu
def test_conformance_float32_float64(strategy):
    shapes = SMALL_H if strategy == "persistent" else SMALL_H + LARGE_H
    testing.check_recurrence(cuda.recurrence, shapes=shapes, device="cuda")


@gpu
def test_conformance_half_precision(strategy):
    shapes = ((1, 1, 1), (6, 3, 17), (12, 4, 64)) + (() if strategy == "persistent" else ((5, 3, 80),))
    testing.check_recurrence(cuda.recurrence, shapes=shapes, dtypes=(torch.bfloat16, torch.float16), device="cuda")


@gpu
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2 ** -9), (torch.float16, 2 ** -11)], ids=["bfloat16", "float16"])
def test_strategies_agree_in_half_precision_on_gpu(dtype, tol, monkeypatch):
    # As test_strategies_agree_in_half_precision, with cuBLAS doing the fused strategy's GEMMs.
    T, B, H = 40, 3, 24
    inputs = [t.requires_grad_(True) for t in testing.random_recurrence_inputs(T, B, H, dtype=dtype, device="cuda", seed=7)]
    runs = []
    for strategy in ("persistent", "fused"):
        monkeypatch.setenv("ECGKERN_CUDA_STRATEGY", strategy)
        hs, cs = cuda.recurrence(*inputs)
        grads = torch.autograd.grad((hs.float() * hs.float().detach().cos()).sum() + cs.float().sum(), inputs)
        runs.append((hs, cs, *grads))
    for name, a, b in zip(("hs", "cs", "grad xg", "grad w_hh", "grad h0", "grad c0"), *runs):
        rel = tol * (16 if name == "grad w_hh" else 1)  # dW_hh sums T*B rounded products
        testing.assert_close(name, a.double(), b.double(), rel, rel, f"persistent vs fused, {dtype}")


@gpu
def test_gradcheck_float64(strategy):
    shapes = ((1, 1, 1), (3, 2, 3), (4, 3, 5)) + (() if strategy == "persistent" else ((3, 2, 66),))
    testing.gradcheck_recurrence(cuda.recurrence, shapes=shapes, device="cuda")


@gpu
def test_large_inputs_stay_finite(strategy):
    # Saturated gates: overflow-safe activations keep everything finite and correct.
    testing.check_recurrence(cuda.recurrence, shapes=((5, 2, 8), (5, 2, 70)) if strategy != "persistent" else ((5, 2, 8),),
                             device="cuda", scale=1e4, dtypes=(torch.float32,))


@gpu
def test_module_through_cuda_backend():
    model = ecgkern.LSTM(3, 20, num_layers=2, bidirectional=True, backend="cuda").cuda()
    testing.check_module(model, lengths=[6, 2, 4])


@gpu
def test_opcheck():
    from ecgkern.backends import _ops  # noqa: F401  (defines the ops)

    for T, B, H in ((3, 2, 5), (2, 3, 70)):
        xg, w_hh, h0, c0 = (t.requires_grad_(True) for t in testing.random_recurrence_inputs(T, B, H, device="cuda"))
        torch.library.opcheck(torch.ops.ecgkern.lstm_recurrence.default, (xg, w_hh, h0, c0))


@gpu
def test_torch_compile_fullgraph():
    inputs = testing.random_recurrence_inputs(5, 3, 16, device="cuda")
    compiled = torch.compile(cuda.recurrence, fullgraph=True)
    expected = cuda.recurrence(*inputs)
    for got, want in zip(compiled(*inputs), expected):
        torch.testing.assert_close(got, want)


@gpu
def test_bad_inputs_name_the_problem():
    xg, w_hh, h0, c0 = testing.random_recurrence_inputs(3, 2, 4, device="cuda")
    with pytest.raises(RuntimeError, match="h0 has shape"):
        torch.ops.ecgkern.lstm_recurrence(xg, w_hh, h0[:1].contiguous(), c0)
    with pytest.raises(RuntimeError, match="c0 must be a CUDA tensor"):
        torch.ops.ecgkern.lstm_recurrence(xg, w_hh, h0, c0.cpu())
    with pytest.raises(RuntimeError, match="w_hh has dtype"):
        torch.ops.ecgkern.lstm_recurrence(xg, w_hh.double(), h0, c0)
    with pytest.raises(RuntimeError, match="xg's last dimension"):
        torch.ops.ecgkern.lstm_recurrence(xg[..., :-1].contiguous(), w_hh, h0, c0)
