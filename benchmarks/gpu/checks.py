"""GPU-side checks of the cuda and triton backends, one subcommand per stage of run.sh.

    python benchmarks/gpu/checks.py env RESULT.json          # versions, TF32 flags, runtime (no GPU needed)
    python benchmarks/gpu/checks.py build RESULT.json        # ceilings, extension build time, 20 s smoke
    python benchmarks/gpu/checks.py conform cuda|triton      # vs the float64 reference, every dtype
    python benchmarks/gpu/checks.py kernel RESULT.json       # kernel-only time (graph replay), cuDNN TF32 on/off, layer breakdown
    python benchmarks/gpu/checks.py sanitize [STRATEGY:DTYPE] # small fwd+bwd per strategy/dtype, under compute-sanitizer
    python benchmarks/gpu/checks.py cases                    # the STRATEGY:DTYPE cases of sanitize
    python benchmarks/gpu/checks.py offsets                  # a recurrence whose offsets pass 2^31 elements
    python benchmarks/gpu/checks.py roofline RESULT.json BENCH.json...  # Markdown: cuda/triton vs the ceilings

RESULT.json (``ceilings.json`` in run.sh) collects one section per subcommand, so a stage that
dies still leaves what the earlier ones measured. Exit status: 0 pass, 1 a check failed,
3 not run here (no CUDA GPU), with the reason on the last line.
"""
from __future__ import annotations

import functools
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

NOT_RUN = 3
ECG = (140, 64, 64)  # T, B, H of the ECG5000 model
BENCH_SHAPES = ((140, 64, 64), (140, 256, 256), (1024, 16, 768))


def _update(path: str, section: str, value) -> None:
    """Set one top-level section of the result file, keeping the others."""
    p = Path(path)
    record = json.loads(p.read_text()) if p.exists() and p.stat().st_size else {}
    record[section] = value
    p.write_text(json.dumps(record, indent=1, default=str) + "\n")


def _require_gpu() -> None:
    if not torch.cuda.is_available():
        print(f"NOT RUN: no CUDA GPU is visible (torch {torch.__version__}, CUDA runtime {torch.version.cuda})")
        sys.exit(NOT_RUN)


def _events_ms(fn, repeats: int, warmup: int = 2, device: str = "cuda") -> float:
    """Median milliseconds of fn() over CUDA events (a host clock on the CPU), after warm-up calls."""
    from ecgkern.timing import time_call

    for _ in range(warmup):
        fn()
    times = sorted(time_call(fn, device) * 1e3 for _ in range(repeats))
    return times[len(times) // 2]


def _run(*cmd: str) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
        return (done.stdout or done.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc.__class__.__name__})"


def runtime() -> str:
    """The device machine's sandbox, from its kernel: gVisor reports 4.4.0; Firecracker
    guests of this workplace carry '-fc-' in the release."""
    release = platform.release()
    if release.startswith("4.4.0"):
        return f"gvisor (kernel {release})"
    if "-fc-" in release:
        return f"firecracker (kernel {release})"
    return f"unknown (kernel {release})"


# ---- env ---------------------------------------------------------------------------------------

def env(path: str) -> None:
    import ecgkern
    from ecgkern.backends import cuda

    try:
        import triton
        triton_version = triton.__version__
    except ImportError as exc:
        triton_version = f"not importable ({exc})"
    nvcc = cuda.find_nvcc()
    sanitizer = os.environ.get("ECGKERN_SANITIZER") or shutil.which("compute-sanitizer")
    record = {
        "python": sys.version.split()[0], "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "triton": triton_version, "ecgkern": ecgkern.__version__,
        "nvcc": _run(nvcc, "--version").splitlines()[-2:] if nvcc else None,
        "cuda_home": os.environ.get("CUDA_HOME"),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "runtime": runtime(), "cpus": os.cpu_count(),
        "compute_sanitizer": (_run(sanitizer, "--version").splitlines() or ["?"])[-1] if sanitizer else None,
        "nvidia_smi": _run("nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem",
                           "--format=csv,noheader"),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        record.update(gpu=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                      memory_gib=round(props.total_memory / 2 ** 30, 1))
    _update(path, "env", record)
    for key, value in record.items():
        print(f"{key}: {value}")


# ---- build: ceilings first (they survive a failed build), then the build, then a smoke test ----

def build(path: str) -> None:
    _require_gpu()
    try:
        copy = _copy_tb_per_s()
        gemm = {name: _gemm_tflops(dtype) for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16))}
        _update(path, "ceilings", {"copy_tb_per_s": copy, "gemm_tflops": gemm,
                                   "float32_matmul_precision": torch.get_float32_matmul_precision()})
        print(f"ceilings: copy {copy:.2f} TB/s, GEMM " + ", ".join(f"{k} {v:.0f} TFLOP/s" for k, v in gemm.items()))
    except Exception as exc:  # noqa: BLE001 - the build and the smoke test still run
        print(f"FAIL ceilings: {type(exc).__name__}: {exc}")
        _update(path, "ceilings_error", f"{type(exc).__name__}: {exc}")
        torch.cuda.empty_cache()

    from ecgkern import _build
    from ecgkern.backends import cuda

    start = time.perf_counter()
    reason = cuda.unavailable_reason("cuda")  # builds (or loads from the cache) here
    seconds = time.perf_counter() - start
    _update(path, "build", {"error": reason, "seconds": seconds,
                            "compiled": _build.CUDA_EXTENSION.name in _build.BUILD_SECONDS})
    if reason is not None:
        print(f"FAIL: the cuda extension did not build: {reason}")
        sys.exit(1)
    print(f"cuda extension ready in {seconds:.1f} s ({'built' if _build.CUDA_EXTENSION.name in _build.BUILD_SECONDS else 'cached'})")
    smoke = _smoke(cuda)
    _update(path, "smoke", smoke)
    sys.exit(1 if any(v != "pass" for v in smoke.values()) else 0)


def _copy_tb_per_s(nbytes: int = 2 << 30) -> float:
    """Device-to-device copy bandwidth, bytes read plus bytes written."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    return 2 * nbytes / (_events_ms(lambda: dst.copy_(src), 10) / 1e3) / 1e12


def _gemm_tflops(dtype, n: int = 8192) -> float:
    a = torch.randn(n, n, device="cuda", dtype=dtype)  # random data: zeros run faster
    return 2 * n ** 3 / (_events_ms(lambda: a @ a, 10, warmup=3) / 1e3) / 1e12


def _smoke(cuda) -> dict:
    """Both strategies, float32 and bfloat16, forward and backward, against the reference."""
    from ecgkern import testing

    results = {}
    for strategy, shapes in (("persistent", ((5, 3, 16), (4, 2, 64))), ("fused", ((5, 3, 16), (4, 2, 96)))):
        for dtype in (torch.float32, torch.bfloat16):
            label = f"{strategy} {str(dtype).removeprefix('torch.')}"
            check = functools.partial(testing.check_recurrence, cuda.recurrence, shapes=shapes, dtypes=(dtype,), device="cuda")
            results[label] = _attempt(label, functools.partial(_with_strategy, strategy, check))
    return results


def _with_strategy(strategy: str | None, fn):
    """Run fn with ECGKERN_CUDA_STRATEGY set (the binding reads it at every call)."""
    old = os.environ.get("ECGKERN_CUDA_STRATEGY")
    if strategy:
        os.environ["ECGKERN_CUDA_STRATEGY"] = strategy
    try:
        return fn()
    finally:
        if old is None:
            os.environ.pop("ECGKERN_CUDA_STRATEGY", None)
        else:
            os.environ["ECGKERN_CUDA_STRATEGY"] = old


def _attempt(label: str, check) -> str:
    """Run one check; print PASS/FAIL with the reason; return 'pass' or the failure's first line."""
    start = time.perf_counter()
    try:
        check()
    except Exception as exc:  # noqa: BLE001 - every failure is reported, the stage fails at the end
        message = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        print(f"FAIL {label} ({time.perf_counter() - start:.1f} s): {message}")
        traceback.print_exc(limit=3)
        return message
    print(f"PASS {label} ({time.perf_counter() - start:.1f} s)")
    return "pass"


# ---- conformance -------------------------------------------------------------------------------

HALF = (torch.bfloat16, torch.float16)
HALF_SHAPES = ((1, 1, 1), (6, 3, 17), (12, 4, 64))


def conform(which: str) -> None:
    _require_gpu()
    from ecgkern import testing
    from ecgkern.backends import available_backends

    status = available_backends("cuda")[which]
    if not status.available:
        print(f"FAIL: the {which} backend is unavailable on this GPU: {status.reason}")
        sys.exit(1)
    results = {}
    if which == "cuda":
        from ecgkern.backends import cuda

        for strategy in ("persistent", "fused"):
            large = () if strategy == "persistent" else ((7, 3, 96), (4, 5, 130))
            checks = _recurrence_checks(cuda.recurrence, testing.DEFAULT_SHAPES + large,
                                        HALF_SHAPES + (() if strategy == "persistent" else ((5, 3, 80),)),
                                        ((1, 1, 1), (3, 2, 3), (4, 3, 5)) + (() if strategy == "persistent" else ((3, 2, 66),)))
            for what, check in checks:
                label = f"cuda {strategy}: {what}"
                results[label] = _attempt(label, functools.partial(_with_strategy, strategy, check))
        for dtype in HALF:
            label = f"cuda: persistent == fused, {str(dtype).removeprefix('torch.')}"
            results[label] = _attempt(label, functools.partial(_strategies_agree, cuda.recurrence, dtype))
        results["cuda: module, 2 layers, bidirectional, lengths"] = _attempt(
            "cuda: module, 2 layers, bidirectional, lengths", lambda: _module_check("cuda"))
    else:
        from ecgkern.backends import triton as tb

        # float64 only through the step path, which is what the backend picks on a GPU (the
        # persistent float64 backward at BH=64 needs 312 KB of shared memory: more than sm_90 has).
        for persistent in (True, False):
            path = "persistent" if persistent else "step"
            fn = functools.partial(tb.recurrence, persistent=persistent)
            shapes = testing.DEFAULT_SHAPES + (() if persistent else ((7, 3, 96), (4, 5, 130)))
            checks = _recurrence_checks(fn, shapes, HALF_SHAPES, None if persistent else ((1, 1, 1), (3, 2, 3)),
                                        float64=not persistent)
            for what, check in checks:
                label = f"triton {path}: {what}"
                results[label] = _attempt(label, check)
        results["triton: module, 2 layers, bidirectional, lengths"] = _attempt(
            "triton: module, 2 layers, bidirectional, lengths", lambda: _module_check("triton"))
    for dtype in HALF:
        label = f"{which}: autocast {str(dtype).removeprefix('torch.')} vs nn.LSTM"
        results[label] = _attempt(label, functools.partial(_autocast_check, which, dtype))
    failed = [k for k, v in results.items() if v != "pass"]
    print(f"{len(results) - len(failed)}/{len(results)} passed" + (": failed " + "; ".join(failed) if failed else ""))
    sys.exit(1 if failed else 0)


def _recurrence_checks(fn, shapes, half_shapes, gradcheck_shapes, float64: bool = True):
    from ecgkern import testing

    full = (torch.float32, torch.float64) if float64 else (torch.float32,)
    checks = [
        (", ".join(str(d).removeprefix("torch.") for d in full),
         lambda: testing.check_recurrence(fn, shapes=shapes, device="cuda", dtypes=full)),
        ("bfloat16, float16", lambda: testing.check_recurrence(fn, shapes=half_shapes, device="cuda", dtypes=HALF)),
        ("saturated gates (scale 1e4)", lambda: testing.check_recurrence(
            fn, shapes=((5, 2, 8),), device="cuda", scale=1e4, dtypes=(torch.float32,))),
    ]
    if gradcheck_shapes:
        checks.append(("gradcheck float64", lambda: testing.gradcheck_recurrence(fn, shapes=gradcheck_shapes, device="cuda")))
    return checks


def _strategies_agree(recurrence, dtype) -> None:
    """Both cuda strategies carry the recurrence in float32: in half precision they agree to
    about an ulp of the storage dtype, far closer than either is to the float64 truth."""
    from ecgkern import testing

    T, B, H = 40, 3, 24
    inputs = testing.random_recurrence_inputs(T, B, H, dtype=dtype, device="cuda", seed=7)
    outs = [_with_strategy(s, lambda: recurrence(*inputs)) for s in ("persistent", "fused")]
    tol = 2 ** -9 if dtype == torch.bfloat16 else 2 ** -11
    for name, a, b in zip(("hs", "cs"), *outs):
        testing.assert_close(name, a.double(), b.double(), tol, tol, f"persistent vs fused, {dtype}, T={T} B={B} H={H}")


def _module_check(backend: str) -> None:
    import ecgkern
    from ecgkern import testing

    model = ecgkern.LSTM(3, 20, num_layers=2, bidirectional=True, backend=backend).cuda()
    testing.check_module(model, lengths=[6, 2, 4])


def _autocast_check(backend: str, dtype) -> None:
    """ecgkern.LSTM under torch.autocast against nn.LSTM under the same autocast, same weights.
    A clear error saying autocast is unsupported counts as a pass (a documented limitation);
    a result of another dtype, or one further from nn.LSTM than the dtype allows, fails."""
    import ecgkern
    from ecgkern import testing

    torch.manual_seed(0)
    ref = torch.nn.LSTM(5, 32, num_layers=2, batch_first=True).cuda()
    model = ecgkern.LSTM(5, 32, num_layers=2, batch_first=True, backend=backend).cuda()
    model.load_state_dict(ref.state_dict())
    x = torch.randn(4, 30, 5, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        want, (wh, wc) = ref(x)
        try:
            got, (gh, gc) = model(x)
        except (RuntimeError, NotImplementedError, ValueError, TypeError) as exc:
            if "autocast" in str(exc).lower():
                print(f"  autocast not supported by ecgkern.LSTM({backend!r}), with a clear error: {str(exc).splitlines()[0]}")
                return
            raise
    # torch's cuDNN LSTM casts to float16 under CUDA autocast whatever dtype is asked
    # (_cudnn_rnn_cast_reflatten); ecgkern computes in the dtype asked for, as on the CPU.
    if got.dtype != dtype:
        raise AssertionError(f"under autocast({dtype}) ecgkern.LSTM returns {got.dtype}")
    if want.dtype != dtype:
        print(f"  nn.LSTM returns {want.dtype} under autocast({dtype}); ecgkern.LSTM returns {got.dtype}")
    for name, a, b in (("output", got, want), ("h_n", gh, wh), ("c_n", gc, wc)):
        rtol, atol = testing.tolerance(dtype, x.shape[1], b.double())  # both sides carry the rounding: twice the rule
        testing.assert_close(name, a.double(), b.double(), 2 * rtol, 2 * atol, f"autocast {dtype} vs nn.LSTM")


# ---- kernel-only time at the ECG shape; cuDNN with and without TF32 -----------------------------

def kernel(path: str) -> None:
    """At the ECG shape, per call: the GPU's busy time (profiler: the sum of kernel durations,
    no host overhead), a CUDA-graph replay (forward) and the eager time, for the cuda
    backend's recurrence and for cuDNN's whole nn.LSTM layer (its I=1 input projection included)."""
    _require_gpu()
    from ecgkern import testing
    from ecgkern.backends import cuda

    if cuda.unavailable_reason("cuda") is not None:
        print(f"FAIL: cuda backend unavailable: {cuda.unavailable_reason('cuda')}")
        sys.exit(1)
    T, B, H = ECG
    record = {"shape": {"seq": T, "batch": B, "hidden": H, "input": 1}, "unit": "microseconds per call",
              "device_us": "profiler, sum of kernel durations over 10 calls / 10",
              "graph_us": "replay of a CUDA graph of 10 calls / 10", "eager_us": "CUDA events, median of 30"}
    for dtype in (torch.float32, torch.bfloat16):
        inputs = testing.random_recurrence_inputs(T, B, H, dtype=dtype, device="cuda")
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        lstm = torch.nn.LSTM(1, H, device="cuda", dtype=dtype)
        x = torch.randn(T, B, 1, device="cuda", dtype=dtype, requires_grad=True)

        def ours_fwd():
            with torch.no_grad():
                return cuda.recurrence(*inputs)

        def ours_fwdbwd():
            hs, cs = cuda.recurrence(*leaves)
            (hs.sum() + cs.sum()).backward()

        def cudnn_fwd():
            with torch.no_grad():
                return lstm(x)

        def cudnn_fwdbwd():
            lstm(x)[0].sum().backward()

        rows = {}
        for label, fn, graph in (("ecgkern cuda recurrence fwd", ours_fwd, True),
                                 ("ecgkern cuda recurrence fwd+bwd", ours_fwdbwd, False),
                                 ("cuDNN nn.LSTM fwd", cudnn_fwd, True),
                                 ("cuDNN nn.LSTM fwd+bwd", cudnn_fwdbwd, False)):
            row = {"device_us": _device_us(label, fn), "eager_us": _events_ms(fn, 30, warmup=5) * 1e3}
            if graph:
                row["graph_us"] = _graph_us(label, fn)
            print(f"  {dtype} {label}: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
            rows[label] = row
        record[str(dtype).removeprefix("torch.")] = rows
    record["cudnn_tf32"] = _cudnn_tf32()
    _update(path, "kernel", record)  # kept if the compiles below run out of time
    record["layer_breakdown"] = {mode: layer_breakdown("cuda", "cuda", mode) for mode in ("fwd", "fwd+bwd")}
    _update(path, "kernel", record)


def layer_breakdown(device: str, backend: str, mode: str, top: int = 12) -> dict:
    """Where a whole layer call at the ECG shape spends its time, against nn.LSTM's: wall time
    per call, kernels launched, device busy time, and the host ops with the most self time.
    The first H200 run found the ecgkern layer at 499 us around a 98 us op."""
    from torch.profiler import ProfilerActivity, profile

    import ecgkern

    T, B, H = ECG
    torch.manual_seed(0)
    ref = torch.nn.LSTM(1, H, device=device)
    ours = ecgkern.LSTM(1, H, backend=backend).to(device)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, 1, device=device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    out = {"shape": {"seq": T, "batch": B, "hidden": H, "input": 1}, "mode": mode}
    for name, model in (("ecgkern " + backend, ours), ("nn.LSTM", ref)):
        def call(model=model):
            if mode == "fwd":
                with torch.no_grad():
                    model(x)
            else:
                model(x)[0].sum().backward()
        wall_us = _events_ms(call, 30, warmup=5, device=device) * 1e3
        with profile(activities=activities) as prof:
            for _ in range(10):
                call()
            if device == "cuda":
                torch.cuda.synchronize()
        events = prof.key_averages()
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        host = sorted((e for e in events if e.key.startswith(("aten::", "ecgkern", "cuda", "autograd"))),
                      key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
        row = {"wall_us": wall_us, "kernels_per_call": len(kernels) / 10,
               "device_us": sum(e.time_range.elapsed_us() for e in kernels) / 10,
               "top_host_ops_us_per_call": {e.key: round(e.self_cpu_time_total / 10, 1) for e in host}}
        print(f"  {name} {mode}: {wall_us:.0f} us per call, {row['kernels_per_call']:.0f} kernels, "
              f"{row['device_us']:.0f} us device; top host ops (self us per call): "
              + ", ".join(f"{k} {v}" for k, v in list(row["top_host_ops_us_per_call"].items())[:6]))
        out[name] = row
    if device == "cuda" and mode == "fwd":
        # The host time a CUDA graph removes: both layers under torch.compile's CUDA graphs.
        for name, model in (("ecgkern " + backend, ours), ("nn.LSTM", ref)):
            try:
                compiled = torch.compile(model, mode="reduce-overhead")
                with torch.no_grad():
                    wall_us = _events_ms(lambda: compiled(x), 30, warmup=5) * 1e3
                out[f"{name}, compile reduce-overhead"] = {"wall_us": wall_us}
                print(f"  {name} fwd under torch.compile(mode='reduce-overhead'): {wall_us:.0f} us per call")
            except Exception as exc:  # noqa: BLE001 - a failed compile is a result, not a crash
                out[f"{name}, compile reduce-overhead"] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
                print(f"  {name} under torch.compile(mode='reduce-overhead') failed: {exc}")
    return out


def _device_us(label: str, fn) -> float | str:
    """GPU busy time per call: kernel durations summed over 10 profiled calls."""
    from torch.profiler import ProfilerActivity, profile

    try:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                fn()
            torch.cuda.synchronize()
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        return sum(e.time_range.elapsed_us() for e in kernels) / 10
    except Exception as exc:  # noqa: BLE001 - a profiler failure is a result, not a crash
        print(f"  {label}: profiler failed: {exc}")
        return f"profiler failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"


def _graph_us(label: str, fn) -> float | str:
    """Microseconds per call from replaying a CUDA graph of 10 calls (no host overhead)."""
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(10):
                fn()
        us = _events_ms(graph.replay, 20, warmup=3) * 1e3 / 10
    except Exception as exc:  # noqa: BLE001 - a capture failure is a result, not a crash
        print(f"  {label}: graph capture failed: {exc}")
        return f"capture failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return us


def _cudnn_tf32() -> dict:
    """nn.LSTM float32, fwd and fwd+bwd, at the bench shapes, with cuDNN's TF32 on (the
    default) and off: which baseline the bench's float32 ratios are against."""
    out = {}
    default = torch.backends.cudnn.allow_tf32
    try:
        for T, B, H in BENCH_SHAPES:
            lstm = torch.nn.LSTM(1, H, device="cuda")
            x = torch.randn(T, B, 1, device="cuda", requires_grad=True)
            for allow in (True, False):
                torch.backends.cudnn.allow_tf32 = allow
                with torch.no_grad():
                    fwd = _events_ms(lambda: lstm(x), 10, warmup=3)
                fb = _events_ms(lambda: lstm(x)[0].sum().backward(), 10, warmup=3)
                key = f"B{B} T{T} H{H} allow_tf32={allow}"
                out[key] = {"fwd_ms": fwd, "fwdbwd_ms": fb}
                print(f"  nn.LSTM float32 {key}: fwd {fwd:.3f} ms, fwd+bwd {fb:.3f} ms")
    finally:
        torch.backends.cudnn.allow_tf32 = default
    return out


# ---- sanitize, offsets -------------------------------------------------------------------------

SANITIZE_CASES = [f"{strategy}:{dtype}" for strategy in ("persistent", "fused")
                  for dtype in ("float32", "float64", "bfloat16", "float16")]


def sanitize(only: str | None = None) -> None:
    """A small forward+backward for every strategy and dtype (or only STRATEGY:DTYPE, one of
    SANITIZE_CASES); compute-sanitizer watches."""
    if only is not None and only not in SANITIZE_CASES:
        raise SystemExit(f"sanitize: unknown case {only!r}; one of {', '.join(SANITIZE_CASES)}")
    _require_gpu()
    from ecgkern import testing
    from ecgkern.backends import cuda

    for strategy, shapes in (("persistent", ((3, 2, 5), (4, 3, 64))), ("fused", ((3, 2, 5), (3, 2, 70)))):
        for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
            if only not in (None, f"{strategy}:{str(dtype).removeprefix('torch.')}"):
                continue
            for T, B, H in shapes:
                inputs = [t.requires_grad_(True) for t in testing.random_recurrence_inputs(T, B, H, dtype=dtype, device="cuda")]
                hs, cs = _with_strategy(strategy, lambda: cuda.recurrence(*inputs))
                _with_strategy(strategy, lambda: (hs.float().sum() + cs.float().square().sum()).backward())
                torch.cuda.synchronize()
                print(f"ran {strategy} {dtype} T={T} B={B} H={H}")


def offsets() -> None:
    """T*B*4H past 2^31 elements (float32, ~30 GB per backend): the last steps must equal a
    short run started from the state just before them (int32 offsets would wrap and read or
    write elsewhere). float32, so that the stored state is exactly the carried one."""
    _require_gpu()
    from ecgkern import testing
    from ecgkern.backends import available_backends, cuda
    from ecgkern.backends import triton as tb

    T, B, H, tail = (2 ** 31) // (64 * 4 * 64) + 3, 64, 64, 3
    _, w_hh, h0, c0 = testing.random_recurrence_inputs(1, B, H, device="cuda")
    xg = torch.randn(T, B, 4 * H, device="cuda")
    status = available_backends("cuda")
    results = {}
    for name, fn in (("cuda", cuda.recurrence), ("triton", functools.partial(tb.recurrence, persistent=True))):
        if not status[name].available:
            results[name] = f"unavailable: {status[name].reason}"
            continue

        def check():
            with torch.no_grad():
                hs, cs = fn(xg, w_hh, h0, c0)
                start = T - tail
                want_h, want_c = fn(xg[start:].contiguous(), w_hh, hs[start - 1].contiguous(), cs[start - 1].contiguous())
            torch.testing.assert_close(hs[start:], want_h, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(cs[start:], want_c, rtol=1e-6, atol=1e-6)

        results[name] = _attempt(f"{name}: T*B*4H = {T * B * 4 * H} > 2^31", check)
        gc.collect()
        torch.cuda.empty_cache()
    sys.exit(1 if any(v != "pass" and not v.startswith("unavailable") for v in results.values()) else 0)


# ---- roofline ----------------------------------------------------------------------------------

def roofline(result_path: str, *bench_paths: str) -> None:
    """The cuda and triton timings against the measured ceilings, as a Markdown table.

    Bytes are the fewest the recurrence must move per (step, batch row), in units of H elements:
    forward reads xg (4) and writes hs, cs, gates (6); backward reads dhs, dcs, gates, cs, hs (8)
    and writes dxg (4). The recurrence is sequential over T, so time per step is the figure
    that matters most; the fractions show how far it is from being bandwidth- or FLOP-bound.
    """
    ceil = json.loads(Path(result_path).read_text()).get("ceilings")
    if not ceil:
        print("No ceilings were measured (the build stage did not get that far).")
        return
    rows = ["| run | backend | shape | dtype | mode | median | per step | vs nn.LSTM | vs reference | "
            "GB/s (% copy ceiling) | GFLOP/s (% GEMM ceiling) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in bench_paths:
        if not os.path.exists(path):
            continue
        for case in json.loads(Path(path).read_text())["cases"]:
            for backend in ("cuda", "triton"):
                rec = case["backends"].get(backend, {})
                if not rec.get("median_s"):
                    continue
                sh, t = case["shape"], rec["median_s"]
                size = {"bfloat16": 2, "float16": 2, "float32": 4}.get(case["dtype"], 8)
                units = 10 if case["mode"] == "fwd" else 22
                gbs = units * sh["hidden"] * sh["seq"] * sh["batch"] * size / t / 1e9
                gemm = ceil["gemm_tflops"].get(case["dtype"], ceil["gemm_tflops"]["float32"]) * 1e3
                rows.append(
                    f"| {os.path.basename(path).removesuffix('.json')} | {backend} | B{sh['batch']} T{sh['seq']} I{sh['input']} H{sh['hidden']} | "
                    f"{case['dtype']} | {case['mode']} | {t * 1e3:.3f} ms | {t / sh['seq'] * 1e6:.2f} us | "
                    f"{_ratio(rec.get('speedup_vs_nn_lstm'))} | {_ratio(rec.get('speedup_vs_reference'))} | "
                    f"{gbs:.1f} ({100 * gbs / (ceil['copy_tb_per_s'] * 1e3):.2f}%) | "
                    f"{rec.get('gflops') or 0:.1f} ({100 * (rec.get('gflops') or 0) / gemm:.3f}%) |")
    print(f"Ceilings measured in this run: copy {ceil['copy_tb_per_s']:.2f} TB/s (read+write), GEMM "
          + ", ".join(f"{k} {v:.0f} TFLOP/s" for k, v in ceil["gemm_tflops"].items()) + "\n")
    print("\n".join(rows))


def _ratio(value) -> str:
    return "–" if value is None else f"{value:.2f}x"


COMMANDS = {"env": (env, {1}), "build": (build, {1}), "conform": (conform, {1}), "kernel": (kernel, {1}),
            "sanitize": (sanitize, {0, 1}), "offsets": (offsets, {0}), "cases": (lambda: print(*SANITIZE_CASES), {0})}

if __name__ == "__main__":
    command, args = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if command == "roofline" and len(args) >= 1:
        roofline(*args)
    elif command in COMMANDS and len(args) in COMMANDS[command][1] and (command != "conform" or args[0] in ("cuda", "triton")):
        COMMANDS[command][0](*args)
    else:
        raise SystemExit(__doc__)
