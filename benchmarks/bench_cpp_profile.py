"""Side-by-side timings of the cpp backend against torch.nn.LSTM and the reference loop.

    python benchmarks/bench_cpp_profile.py            # all cases
    python benchmarks/bench_cpp_profile.py --profile  # plus a per-phase profile of the cpp op
    python benchmarks/bench_cpp_profile.py --cpu-time # 1 thread, CPU time (for a busy machine)
    python benchmarks/bench_cpp_profile.py --amp      # cpp under bf16 autocast vs cpp float32 (and nn.LSTM)

Interleaved A/B: every round runs each implementation once (in the bench's carry-over-balanced orders), the
figure is the median over rounds; torch's default thread count. Not a pytest-benchmark file:
the suite under benchmarks/ owns the published numbers; this is the backend's own probe.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import ecgkern
from ecgkern.backends import cpp
from ecgkern.bench.measure import round_order


def make_models(I, H, classes=5, dtype=torch.float32):
    torch.manual_seed(0)
    ref_lstm = torch.nn.LSTM(I, H, dtype=dtype)
    head = torch.nn.Linear(H, classes, dtype=dtype)
    models = {"nn.LSTM": ref_lstm}
    for backend in ("cpp", "reference"):
        m = ecgkern.LSTM(I, H, backend=backend, dtype=dtype)
        m.load_state_dict(ref_lstm.state_dict())
        models[backend] = m
    return models, head


def train_step(lstm, head, x):
    out, _ = lstm(x)
    loss = head(out[-1]).square().sum()
    loss.backward()


def infer(lstm, head, x):
    with torch.no_grad():
        out, _ = lstm(x)
        head(out[-1])


CLOCK = time.perf_counter


def interleaved(fns: dict, rounds: int, inner: int = 1) -> dict:
    for fn in fns.values():  # warm-up (and first-use builds)
        fn()
    times = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for k in round_order(names, r):
            start = CLOCK()
            for _ in range(inner):
                fns[k]()
            times[k].append((CLOCK() - start) / inner)
    return {k: statistics.median(v) for k, v in times.items()}


def peak_bytes(fn) -> int:
    """Peak of live CPU tensor memory during fn (the bench's profiler-based measurement)."""
    from ecgkern.timing import peak_memory

    return peak_memory(fn, "cpu")


def matmul_peak_gflops(n=2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = interleaved({"mm": lambda: torch.mm(a, b)}, rounds=5)["mm"]
    return 2 * n ** 3 / t / 1e9


def report(title, times, flops=None, baseline="nn.LSTM"):
    line = [f"{title}:"]
    for k, t in times.items():
        line.append(f"{k} {t * 1e3:.2f} ms")
    line.append(f"| cpp vs nn.LSTM {times[baseline] / times['cpp']:.2f}x")
    if "reference" in times:
        line.append(f"| cpp vs reference {times['reference'] / times['cpp']:.2f}x")
    if flops:
        line.append(f"| cpp {flops / times['cpp'] / 1e9:.1f} GFLOP/s")
    print(" ".join(line), flush=True)


def recurrence_flops(T, B, H, backward):
    gemm = 2 * T * B * H * 4 * H
    return gemm * (3 if backward else 1)


def case(T, B, I, H, rounds, with_reference=True):
    models, head = make_models(I, H)
    if not with_reference:
        models.pop("reference")
    x = torch.randn(T, B, I)
    train = {k: (lambda m=m: train_step(m, head, x)) for k, m in models.items()}
    report(f"train  T={T} B={B} I={I} H={H}", interleaved(train, rounds), recurrence_flops(T, B, H, True))
    fwd = {k: (lambda m=m: infer(m, head, x)) for k, m in models.items()}
    report(f"no_grad T={T} B={B} I={I} H={H}", interleaved(fwd, rounds), recurrence_flops(T, B, H, False))
    for m in models.values():
        m.zero_grad(set_to_none=True)
    head.zero_grad(set_to_none=True)
    peaks = {k: peak_bytes(lambda m=models[k]: train_step(m, head, x)) for k in ("nn.LSTM", "cpp")}
    print(f"  peak tensor memory of a training step: nn.LSTM {peaks['nn.LSTM'] / 2**20:.1f} MiB, "
          f"cpp {peaks['cpp'] / 2**20:.1f} MiB ({peaks['cpp'] / peaks['nn.LSTM']:.2f}x)", flush=True)


def case_amp(T, B, I, H, rounds):
    """cpp under bf16 autocast against the same cpp layer in float32, and nn.LSTM under the same
    autocast; only these three, interleaved (the bench also times the reference in between)."""
    import contextlib

    models, head = make_models(I, H)
    x = torch.randn(T, B, I)
    runs = {"nn.LSTM bf16": (models["nn.LSTM"], True), "cpp bf16": (models["cpp"], True),
            "cpp float32": (models["cpp"], False)}

    def under(amp, fn):
        with torch.autocast("cpu", dtype=torch.bfloat16) if amp else contextlib.nullcontext():
            fn()

    for title, step in (("train ", train_step), ("no_grad", infer)):
        times = interleaved({k: (lambda m=m, amp=amp, step=step: under(amp, lambda: step(m, head, x)))
                             for k, (m, amp) in runs.items()}, rounds)
        print(f"{title} T={T} B={B} I={I} H={H}: " + " ".join(f"{k} {t * 1e3:.2f} ms" for k, t in times.items())
              + f" | cpp bf16 vs cpp float32 {times['cpp float32'] / times['cpp bf16']:.2f}x"
              + f" | cpp bf16 vs nn.LSTM bf16 {times['nn.LSTM bf16'] / times['cpp bf16']:.2f}x", flush=True)


def profile_op(T, B, H, rounds=20):
    """Where the cpp time goes: the ops alone (no autograd, no projection), and a torch.mm of dW_hh's size for scale."""
    from ecgkern.testing import random_recurrence_inputs

    xg, w, h0, c0 = random_recurrence_inputs(T, B, H)
    hs, cs, gates = torch.ops.ecgkern.lstm_recurrence(xg, w, h0, c0)
    dhs, dcs = torch.randn_like(hs), torch.randn_like(cs)
    fns = {
        "fwd op": lambda: torch.ops.ecgkern.lstm_recurrence(xg, w, h0, c0),
        "inference op (no gates)": lambda: torch.ops.ecgkern.lstm_recurrence_inference(xg, w, h0, c0),
        "bwd op": lambda: torch.ops.ecgkern.lstm_recurrence_backward(dhs, dcs, w, h0, c0, hs, cs, gates),
        "dW_hh-sized torch.mm (for scale)": lambda: torch.mm(gates.view(-1, 4 * H).t(), hs.view(-1, H)),
    }
    times = interleaved(fns, rounds)
    for k, t in times.items():
        flops = recurrence_flops(T, B, H, False) * (2 if k.startswith("bwd") else 1)
        print(f"  T={T} B={B} H={H} {k}: {t * 1e3:.3f} ms, {flops / t / 1e9:.1f} GFLOP/s")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast: cpp bf16 vs cpp float32 vs nn.LSTM bf16")
    parser.add_argument("--cpu-time", action="store_true",
                        help="one thread, timed by its CPU time: robust when other processes share the cores")
    args = parser.parse_args()
    if args.cpu_time:
        global CLOCK
        CLOCK = time.thread_time
        torch.set_num_threads(1)
    assert cpp.unavailable_reason() is None, cpp.unavailable_reason()
    clock = "thread CPU time" if args.cpu_time else "wall clock"
    from ecgkern.bench.env import cpu_isa, cpu_model

    print(f"{cpu_model()} ({cpu_isa()}), torch {torch.__version__}, threads {torch.get_num_threads()}, {clock}, "
          f"capability {torch.backends.cpu.get_cpu_capability()}, matmul peak {matmul_peak_gflops():.1f} GFLOP/s", flush=True)
    if args.amp:
        case_amp(140, 64, 1, 64, args.rounds)
        if not args.skip_large:
            case_amp(140, 256, 1, 256, max(3, args.rounds // 3))
        return
    case(140, 64, 1, 64, args.rounds)
    if args.profile:
        profile_op(140, 64, 64)
    if not args.skip_large:
        case(140, 256, 1, 256, max(3, args.rounds // 3), with_reference=False)
        if args.profile:
            profile_op(140, 256, 256, rounds=5)


if __name__ == "__main__":
    main()
