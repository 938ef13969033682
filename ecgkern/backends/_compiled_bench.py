"""CPU timing of the ``compile`` backend against the reference loop and ``torch.nn.LSTM``.

    python -m ecgkern.backends._compiled_bench [--batch 64 --steps 140 --input 1 --hidden 64]

Whole layers (input projection included), forward and forward+backward, median and minimum over
interleaved rounds in one process so that all three see the same machine load. Also prints the first-call
time of the compile backend (its compile time, as warm or cold as the inductor cache is:
set TORCHINDUCTOR_CACHE_DIR to an empty folder for a cold one).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import ecgkern


def _models(I: int, H: int):
    torch.manual_seed(0)
    base = torch.nn.LSTM(I, H)
    models = {"nn.LSTM": base}
    for backend in ("reference", "compile"):
        m = ecgkern.LSTM(I, H, backend=backend)
        m.load_state_dict(base.state_dict())
        models[backend] = m
    return models


def _time(fn, repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=140)
    p.add_argument("--input", type=int, default=1)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args(argv)
    x = torch.randn(args.steps, args.batch, args.input)
    models = _models(args.input, args.hidden)

    def fwd(m):
        with torch.no_grad():
            m(x)

    def fwd_bwd(m):
        out, _ = m(x)
        out.sum().backward()

    start = time.perf_counter()
    fwd_bwd(models["compile"])
    print(f"compile backend first call (forward+backward, compiles both cells): {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    fwd(models["compile"])
    print(f"then first no_grad call (no recompilation expected): {time.perf_counter() - start:.3f} s")

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, B={args.batch} T={args.steps} "
          f"I={args.input} H={args.hidden}, float32, CPU")
    for label, fn in (("forward", fwd), ("forward+backward", fwd_bwd)):
        for m in models.values():
            fn(m)  # warm-up
        times = {name: [] for name in models}
        for _ in range(args.rounds):
            for name, m in models.items():
                times[name].append(_time(lambda: fn(m), args.repeat))
        for stat in (statistics.median, min):  # min: the least disturbed round of each
            t = {name: stat(v) for name, v in times.items()}
            print(f"{label} ({stat.__name__}): " + ", ".join(f"{n} {1e3 * v:.2f} ms" for n, v in t.items())
                  + f" | compile is {t['reference'] / t['compile']:.2f}x reference, "
                    f"{t['nn.LSTM'] / t['compile']:.2f}x nn.LSTM (>1 = faster)")


if __name__ == "__main__":
    main()
