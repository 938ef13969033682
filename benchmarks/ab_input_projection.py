"""The cpp layer with its input projection inside the kernels against the same layer projecting first.

    python benchmarks/ab_input_projection.py float32 1,64,256,512
    python benchmarks/ab_input_projection.py bfloat16 1,16,64,128 --hidden 256

For each input size I, the whole ecgkern.LSTM layer (bf16/f16: under torch.autocast of that
dtype, as nn.LSTM's mixed precision) is timed no_grad and as a training step (a Linear head on
the last output, backward), once with ``cpp.FUSED_INPUT_MAX`` forcing the kernels'
step-by-step projection (``ecgkern::lstm_input_recurrence``) and once forcing one GEMM into xg
first; all calls interleaved in one process (the order reversed every other round), medians.
How the thresholds in ``ecgkern/backends/cpp.py`` were chosen.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import ecgkern
from ecgkern.backends import cpp
from ecgkern.bench.env import cpu_isa, cpu_model


def runner(dtype: torch.dtype, I: int, H: int, B: int, T: int, fused: bool, mode: str):
    torch.manual_seed(0)
    amp = dtype in (torch.bfloat16, torch.float16)
    storage = torch.float32 if amp else dtype  # autocast keeps float32 parameters
    lstm = ecgkern.LSTM(I, H, backend="cpp", dtype=storage)
    head, x = torch.nn.Linear(H, 5, dtype=storage), torch.randn(T, B, I, dtype=storage)

    def run():
        cpp.FUSED_INPUT_MAX[dtype] = 1 << 30 if fused else 0
        with torch.autocast("cpu", dtype=dtype, enabled=amp):
            if mode == "no_grad":
                with torch.no_grad():
                    lstm(x)
                return
            out, _ = lstm(x)
            loss = head(out[-1]).float().square().sum()
        loss.backward()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dtype", choices=("float32", "float64", "bfloat16", "float16"))
    parser.add_argument("input_sizes", help="comma-separated I")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq", type=int, default=140)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    sizes = [int(v) for v in args.input_sizes.split(",")]
    rule = dict(cpp.FUSED_INPUT_MAX)
    fns = {(I, mode, fused): runner(dtype, I, args.hidden, args.batch, args.seq, fused, mode)
           for I in sizes for mode in ("no_grad", "train") for fused in (False, True)}
    try:
        for fn in fns.values():  # warm-up (and the first-use build)
            fn()
        times = {key: [] for key in fns}
        keys = list(fns)
        for r in range(args.rounds):
            for key in keys if r % 2 == 0 else keys[::-1]:  # no side always runs first
                start = time.perf_counter()
                fns[key]()
                times[key].append(time.perf_counter() - start)
    finally:
        cpp.FUSED_INPUT_MAX.update(rule)
    print(f"{cpu_model()} {cpu_isa()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"B={args.batch} T={args.seq} H={args.hidden}, {args.dtype}")
    for I in sizes:
        for mode in ("no_grad", "train"):
            split, fused = (statistics.median(times[(I, mode, f)]) for f in (False, True))
            print(f"I={I:<5d} {mode:8s} projection first {split * 1e3:.3f} ms, inside the kernels "
                  f"{fused * 1e3:.3f} ms: {split / fused:.2f}x")


if __name__ == "__main__":
    main()
