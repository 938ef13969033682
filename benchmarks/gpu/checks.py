"""GPU-side checks of the cuda (and triton) backend for benchmarks/gpu/run.sh.

    python benchmarks/gpu/checks.py ceilings OUT.json   # GPU, versions, copy bandwidth, GEMM rates
    python benchmarks/gpu/checks.py conformance         # cuda + triton vs the float64 reference
    python benchmarks/gpu/checks.py sanitize            # small forward+backward, every strategy/dtype
                                                        # (run under compute-sanitizer)
    python benchmarks/gpu/checks.py roofline CEILINGS.json BENCH.json...  # Markdown: cuda vs ceilings
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import torch

from ecgkern import testing
from ecgkern.backends import available_backends, cuda


def _events_ms(fn, repeats: int) -> float:
    """Median milliseconds of fn() over CUDA events, after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def ceilings(path: str) -> None:
    """The two ceilings of METHOD.md, measured here: device copy bandwidth and GEMM rate."""
    props = torch.cuda.get_device_properties(0)
    nbytes = 2 << 30
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy_ms = _events_ms(lambda: dst.copy_(src), 10)
    del src, dst
    gemm = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        a = torch.randn(8192, 8192, device="cuda", dtype=dtype)
        ms = _events_ms(lambda: a @ a, 10)
        gemm[name] = 2 * 8192 ** 3 / (ms / 1e3) / 1e12
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.mem", "--format=csv,noheader"],
                         capture_output=True, text=True)
    record = {
        "gpu": props.name, "capability": f"{props.major}.{props.minor}", "sms": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2 ** 30, 1), "nvidia_smi": smi.stdout.strip(),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "copy_tb_per_s": 2 * nbytes / (copy_ms / 1e3) / 1e12,  # bytes read + bytes written
        "gemm_tflops": gemm,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda_extension_build_s": _build_seconds(),
    }
    with open(path, "w") as handle:
        json.dump(record, handle, indent=1)
    print(json.dumps(record, indent=1))


def _build_seconds():
    from ecgkern import _build

    start = time.perf_counter()
    reason = cuda.unavailable_reason("cuda")  # builds (or loads from the cache) here
    if reason is not None:
        raise SystemExit(f"cuda backend unavailable: {reason}")
    return _build.BUILD_SECONDS.get(cuda.EXTENSION, f"cached ({time.perf_counter() - start:.1f} s to load)")


def conformance() -> None:
    """Every GPU backend that is available, both cuda strategies, against the reference."""
    status = available_backends("cuda")
    failures = 0
    runs = [("cuda", s) for s in ("persistent", "fused")] + [("triton", None)]
    for name, strategy in runs:
        if not status[name].available:
            print(f"SKIP {name}: {status[name].reason}")
            continue
        if strategy:
            os.environ["ECGKERN_CUDA_STRATEGY"] = strategy
        module = __import__(f"ecgkern.backends.{name}", fromlist=["recurrence"])
        shapes = testing.DEFAULT_SHAPES + (() if strategy == "persistent" else ((7, 3, 96), (4, 5, 130)))
        label = f"{name}" + (f" ({strategy})" if strategy else "")
        for what, check in (
            ("float32/float64", lambda: testing.check_recurrence(module.recurrence, shapes=shapes, device="cuda")),
            ("bf16/fp16", lambda: testing.check_recurrence(
                module.recurrence, shapes=((1, 1, 1), (6, 3, 17), (12, 4, 64)), device="cuda",
                dtypes=(torch.bfloat16, torch.float16))),
            ("gradcheck float64", lambda: testing.gradcheck_recurrence(module.recurrence, device="cuda")),
        ):
            try:
                check()
                print(f"PASS {label}: {what}")
            except Exception as exc:  # noqa: BLE001 - report every failure, then fail at the end
                failures += 1
                print(f"FAIL {label}: {what}: {exc}")
        os.environ.pop("ECGKERN_CUDA_STRATEGY", None)
    sys.exit(1 if failures else 0)


def sanitize() -> None:
    """A small forward+backward for every strategy and dtype; compute-sanitizer watches."""
    for strategy, shapes in (("persistent", ((3, 2, 5), (4, 3, 64))), ("fused", ((3, 2, 5), (3, 2, 70)))):
        os.environ["ECGKERN_CUDA_STRATEGY"] = strategy
        for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
            for T, B, H in shapes:
                inputs = [t.requires_grad_(True) for t in testing.random_recurrence_inputs(T, B, H, dtype=dtype, device="cuda")]
                hs, cs = cuda.recurrence(*inputs)
                (hs.float().sum() + cs.float().square().sum()).backward()
                torch.cuda.synchronize()
                print(f"ran {strategy} {dtype} T={T} B={B} H={H}")


def roofline(ceilings_path: str, *bench_paths: str) -> None:
    """The cuda backend's timings against the measured ceilings, as a Markdown table.

    Bytes are the fewest the recurrence must move per (step, batch row), in units of H elements:
    forward reads xg (4) and writes hs, cs, gates (6); backward reads dhs, dcs, gates, cs, hs (8)
    and writes dxg (4). The recurrence is sequential over T, so time per step is the figure
    that matters most; the fractions show how far it is from being bandwidth- or FLOP-bound.
    """
    ceil = json.load(open(ceilings_path))
    rows = ["| run | shape | dtype | mode | cuda median | per step | vs nn.LSTM | vs reference | GB/s (% copy ceiling) | GFLOP/s (% GEMM ceiling) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for path in bench_paths:
        for case in json.load(open(path))["cases"]:
            rec = case["backends"].get("cuda", {})
            if not rec.get("median_s"):
                continue
            sh, t = case["shape"], rec["median_s"]
            size = 2 if case["dtype"] in ("bfloat16", "float16") else 4 if case["dtype"] == "float32" else 8
            units = 10 if case["mode"] == "fwd" else 22
            gbs = units * sh["hidden"] * sh["seq"] * sh["batch"] * size / t / 1e9
            gemm = ceil["gemm_tflops"].get(case["dtype"], ceil["gemm_tflops"]["float32"]) * 1e3
            x = lambda v: "–" if v is None else f"{v:.2f}x"  # noqa: E731
            rows.append(
                f"| {os.path.basename(path).removesuffix('.json')} | B{sh['batch']} T{sh['seq']} I{sh['input']} H{sh['hidden']} | {case['dtype']} | {case['mode']} | "
                f"{t * 1e3:.3f} ms | {t / sh['seq'] * 1e6:.2f} us | {x(rec.get('speedup_vs_nn_lstm'))} | "
                f"{x(rec.get('speedup_vs_reference'))} | {gbs:.1f} ({100 * gbs / (ceil['copy_tb_per_s'] * 1e3):.2f}%) | "
                f"{rec['gflops']:.1f} ({100 * rec['gflops'] / gemm:.3f}%) |")
    print(f"Ceilings measured on {ceil['gpu']}: copy {ceil['copy_tb_per_s']:.2f} TB/s (read+write), GEMM "
          + ", ".join(f"{k} {v:.0f} TFLOP/s" for k, v in ceil["gemm_tflops"].items()) + f"; torch {ceil['torch']}, "
          f"CUDA {ceil['torch_cuda']}, cuDNN {ceil['cudnn']}\n")
    print("\n".join(rows))


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "ceilings" and len(sys.argv) == 3:
        ceilings(sys.argv[2])
    elif command == "conformance":
        conformance()
    elif command == "sanitize":
        sanitize()
    elif command == "roofline" and len(sys.argv) >= 4:
        roofline(*sys.argv[2:])
    else:
        raise SystemExit(__doc__)
