"""Side-by-side timings of variants of the cpp kernels (csrc/lstm_cpu.cpp) in one process.

    python benchmarks/ab_cpu_kernels.py now=csrc/lstm_cpu.cpp avx2=csrc/lstm_cpu.cpp:AVX2
    python benchmarks/ab_cpu_kernels.py old=/tmp/old.cpp new=csrc/lstm_cpu.cpp --shape 256,140,256

Each variant is NAME=SOURCE[:ISA] (ISA: AVX512, AVX2 or DEFAULT, default this CPU's, as torch
detects it); it is built with the cpp backend's flags under its own op namespace, and its
recurrence ops (no_grad forward, training forward, backward; no autograd, no input projection) are
timed interleaved with every other variant's: per round each op runs three times and keeps its
fastest call, the figure is the median over rounds. Variants that have the recurrence from the
layer input (``lstm_input_recurrence``, the input projection inside the kernels) also time it,
with ``--input-size`` features ("no_grad x", "forward x", and "backward x": the backward with
dW_ih and the bias gradient, for sources from before ``lstm_input_recurrence_backward`` the
recurrence backward followed by ATen's GEMM and sum); the xg ops exclude the projection.
The first variant is the baseline of the ratios. How this session's op-level figures in
benchmarks/README.md were measured, and the way to compare tilings or micro-kernels on a new
CPU family.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ecgkern import _build
from ecgkern.bench.env import cpu_isa, cpu_model

NAMESPACE = "TORCH_LIBRARY(ecgkern_cpu,"


def build(name: str, source: Path, capability: str | None):
    """The variant's private ops, registered as ``torch.ops.ecgkern_ab_<name>``."""
    text = source.read_text()
    if NAMESPACE not in text:
        raise SystemExit(f"{source}: no `{NAMESPACE}` to rename")
    folder = Path(tempfile.mkdtemp(prefix=f"ecgkern-ab-{name}-"))
    (folder / "kernels.cpp").write_text(text.replace(NAMESPACE, f"TORCH_LIBRARY(ecgkern_ab_{name},"))
    for header in _build.csrc_dir().glob("*.h"):
        (folder / header.name).write_text(header.read_text())
    _build.load_extension(f"ecgkern_ab_{name}", [folder / "kernels.cpp"], capability=capability,
                          extra_cflags=_build.CPU_EXTENSION.extra_cflags)
    return getattr(torch.ops, f"ecgkern_ab_{name}")


def calls(ops, T: int, B: int, H: int, I: int, dtype: torch.dtype) -> dict:
    g = torch.Generator().manual_seed(0)
    xg = (0.5 * torch.randn(T, B, 4 * H, generator=g)).to(dtype)
    w = (torch.randn(4 * H, H, generator=g) / H ** 0.5).to(dtype)
    h0 = c0 = torch.zeros(B, H, dtype=dtype)
    hs, cs, gates = ops.lstm_recurrence(xg, w, h0, c0)
    dhs, dcs = torch.randn(hs.shape, generator=g).to(dtype), torch.zeros_like(cs)
    fns = {"no_grad": lambda: ops.lstm_recurrence_inference(xg, w, h0, c0),
           "forward": lambda: ops.lstm_recurrence(xg, w, h0, c0),
           "backward": lambda: ops.lstm_recurrence_backward(dhs, dcs, w, h0, c0, hs, cs, gates)}
    if hasattr(ops, "lstm_input_recurrence"):
        x = torch.randn(T, B, I, generator=g).to(dtype)
        w_ih = (torch.randn(4 * H, I, generator=g) / I ** 0.5).to(dtype)
        bias = (0.1 * torch.randn(4 * H, generator=g)).to(dtype)
        fns["no_grad x"] = lambda: ops.lstm_input_recurrence_inference(x, w_ih, bias, w, h0, c0)
        fns["forward x"] = lambda: ops.lstm_input_recurrence(x, w_ih, bias, w, h0, c0)
        hs_x, cs_x, gates_x = ops.lstm_input_recurrence(x, w_ih, bias, w, h0, c0)
        if hasattr(ops, "lstm_input_recurrence_backward"):
            fns["backward x"] = lambda: ops.lstm_input_recurrence_backward(dhs, dcs, x, w, h0, c0, hs_x, cs_x, gates_x)
        else:  # sources from before that op: its backward, then dW_ih and the bias gradient in ATen
            def backward_x():
                dxg = ops.lstm_recurrence_backward(dhs, dcs, w, h0, c0, hs_x, cs_x, gates_x)[0].flatten(0, 1)
                return (x.flatten(0, 1).t() @ dxg).t(), dxg.sum(0)
            fns["backward x"] = backward_x
    return fns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", metavar="NAME=SOURCE[:ISA]")
    parser.add_argument("--shape", default="64,140,64", help="B,T,H (default: the ECG shape)")
    parser.add_argument("--input-size", type=int, default=1, help="I of the ops from the layer input (default 1)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    B, T, H = (int(v) for v in args.shape.split(","))
    variants = {}
    for spec in args.variants:
        name, _, rest = spec.partition("=")
        source, _, capability = rest.partition(":")
        variants[name] = build(name, Path(source), capability or None)
    fns = {(mode, dtype, name): fn for dtype in args.dtypes.split(",") for name, ops in variants.items()
           for mode, fn in calls(ops, T, B, H, args.input_size, getattr(torch, dtype)).items()}
    times = {key: [] for key in fns}
    for fn in fns.values():
        fn()
    keys = list(fns)
    for r in range(args.rounds):
        for key in keys if r % 2 == 0 else keys[::-1]:
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                fns[key]()
                best = min(best, time.perf_counter() - start)
            times[key].append(best)
    flops = 2 * T * B * 4 * H * H
    print(f"{cpu_model()} {cpu_isa()}, torch {torch.__version__}, {torch.get_num_threads()} threads, B={B} T={T} H={H}")
    for mode in ("no_grad", "forward", "backward", "no_grad x", "forward x", "backward x"):
        for dtype in args.dtypes.split(","):
            medians = {name: statistics.median(times[(mode, dtype, name)]) for name in variants
                       if (mode, dtype, name) in times}
            if not medians:
                continue
            base = next(iter(medians.values()))
            # the backward adds dW_hh; the ops from the input add the projection or dW_ih
            work = flops * ((2 if mode.startswith("backward") else 1) + (args.input_size / H if mode.endswith(" x") else 0))
            print(f"{mode:8s} {dtype:9s} " + "  ".join(
                f"{name} {m * 1e3:.3f} ms ({base / m:.2f}x, {work / m / 1e9:.0f} GFLOP/s)" for name, m in medians.items()))


if __name__ == "__main__":
    main()
