"""Where the compile backend's time goes, per time step, against the reference loop.

    python -m benchmarks.bench_compile_profile            # ECG shape: T=140, B=64, H=64

The compile backend runs a Python loop over time steps; each step is an eager GEMM plus one
compiled cell call (forward and backward alike). This prints, interleaved in one process: the
training step of both recurrences (layer only: no projection, no head) divided by T, and the
parts of one compile step: a compiled call that does almost nothing (the floor any compiled
call pays), the forward and backward cells, and the step's GEMM.
"""
from __future__ import annotations

import argparse

import torch

from benchmarks.bench_cpp_profile import interleaved
from ecgkern.backends import compiled, reference
from ecgkern.testing import random_recurrence_inputs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--T", type=int, default=140)
    parser.add_argument("--B", type=int, default=64)
    parser.add_argument("--H", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    T, B, H = args.T, args.B, args.H
    leaves = [t.requires_grad_(True) for t in random_recurrence_inputs(T, B, H)]

    def training_step(recurrence):
        hs, cs = recurrence(*leaves)
        torch.autograd.grad(hs.sum() + cs.sum(), leaves)

    steps = interleaved({name: (lambda r=r: training_step(r)) for name, r in
                         (("reference", reference.recurrence), ("compile", compiled.recurrence))}, args.rounds)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; T={T} B={B} H={H}")
    for name, t in steps.items():
        print(f"  {name:9} training step {t * 1e3:7.2f} ms = {t / T * 1e6:6.1f} us per time step")
    print(f"  compile vs reference: {steps['reference'] / steps['compile']:.2f}x")

    forward_cell, backward_cell = compiled._cells(torch.device("cpu"), torch.float32)
    trivial = torch.compile(lambda x: x + 1, dynamic=True)
    gates, c, h, act = torch.randn(B, 4 * H), torch.randn(B, H), torch.randn(B, H), torch.rand(B, 4 * H)
    w_t = leaves[1].detach().t()
    with torch.no_grad():
        parts = interleaved({
            "compiled call doing x + 1 (the floor)": lambda: trivial(c),
            "forward cell (compiled)": lambda: forward_cell(gates, c),
            "backward cell (compiled)": lambda: backward_cell(h, c, act, c, c),
            "step GEMM addmm(xg[t], h, W_hh^T)": lambda: torch.addmm(gates, h, w_t),
        }, args.rounds, inner=200)
    for name, t in parts.items():
        print(f"  {name:38} {t * 1e6:6.1f} us")


if __name__ == "__main__":
    main()
