"""How much a layer call pays for what ran just before it: the bench's runners of one case, in its
carry-over-balanced round order, each call's time filed under the backend that preceded it.

    python benchmarks/bench_predecessors.py                     # ECG shape, bf16 autocast, no_grad
    python benchmarks/bench_predecessors.py --dtype float32 --mode fwdbwd --rounds 96

Why ``ecgkern bench`` orders its rounds by ``round_order`` (a Williams design) rather than a
rotation: under a rotation each backend always follows the same one, and the column of this
table that it would always have had is the only one it would be measured in.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections import defaultdict

import torch

from ecgkern.bench import runners as R
from ecgkern.bench.cases import Case, parse_dtype, parse_shape
from ecgkern.bench.env import cpu_model
from ecgkern.bench.measure import round_order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="B64,T140,H64")
    parser.add_argument("--dtype", default="bfloat16", help="float32, or bfloat16/float16 (CPU autocast)")
    parser.add_argument("--mode", default="fwd", choices=("fwd", "fwdbwd"))
    parser.add_argument("--backends", default=f"nn.LSTM,reference,cpp,{R.CPP_FLOAT32}")
    parser.add_argument("--rounds", type=int, default=96)
    args = parser.parse_args()
    case = Case(device="cpu", dtype=parse_dtype(args.dtype), mode=args.mode, shape=parse_shape(args.shape))
    names = args.backends.split(",")
    inputs = R.make_inputs(case)
    runners = {name: R.make_runner(name, case, inputs) for name in names}
    for run in runners.values():  # first use and warm-up
        run()
        run()
    times, previous = defaultdict(list), None
    gc.disable()
    for rnd in range(args.rounds):
        for name in round_order(names, rnd):
            start = time.perf_counter()
            runners[name]()
            times[name, previous].append(time.perf_counter() - start)
            previous = name
    gc.enable()
    print(f"{cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads, {case.key}; "
          f"median ms by the backend that ran just before ({args.rounds} rounds)")
    print(f"{'':14s}" + "".join(f"{'after ' + p:>22s}" for p in names) + f"{'all':>10s}")
    for name in names:
        cells = [statistics.median(times[name, p]) * 1e3 if times.get((name, p)) else None for p in names]
        every = [t for (n, _), ts in times.items() if n == name for t in ts]
        print(f"{name:14s}" + "".join(f"{c:22.3f}" if c is not None else f"{'-':>22s}" for c in cells)
              + f"{statistics.median(every) * 1e3:10.3f}")


if __name__ == "__main__":
    main()
