"""Timing done one way for every backend: first call apart, warm-up, interleaved repeats.

One call is timed and its memory measured by ``ecgkern.timing``. Runners of one case are measured interleaved,
one call each per round, so that drift of a shared machine (other processes, clocks) hits every
backend alike and cancels in the ratios. The rounds' orders follow a Williams design (see
``round_order``), so that every runner also comes right after every other equally often: a call
pays for what ran just before it (caches, the heap, idle cores), and a plain rotation keeps each
runner's predecessor fixed.
"""
from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..timing import CPU_MEMORY_METHOD, CUDA_MEMORY_METHOD, peak_memory, sync, time_call

__all__ = ["CPU_MEMORY_METHOD", "CUDA_MEMORY_METHOD", "Outcome", "is_oom", "matmul_peak", "measure_case",
           "peak_memory", "round_order", "time_call"]

_OOM_TYPES = (MemoryError, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError))


def is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, _OOM_TYPES) or "out of memory" in text or "can't allocate memory" in text


@dataclass
class Outcome:
    """Everything measured for one backend on one case (``status``: ok, skipped, oom, error)."""

    status: str
    reason: str | None = None
    first_call_s: float | None = None  # the first call: includes compile / JIT build / lazy init
    times_s: list[float] = field(default_factory=list)
    peak_mem_bytes: int | None = None

    @classmethod
    def failed(cls, exc: BaseException, **kw) -> Outcome:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return cls("oom" if is_oom(exc) else "error", f"{type(exc).__name__}: {first_line}"[:300], **kw)

    def stats(self) -> dict:
        """median, quartiles and IQR of the timed repeats (seconds)."""
        if not self.times_s:
            return {}
        q1, med, q3 = np.percentile(np.asarray(self.times_s), [25, 50, 75])
        return {"median_s": float(med), "q1_s": float(q1), "q3_s": float(q3), "iqr_s": float(q3 - q1)}


def measure_case(
    runners: dict[str, Callable[[], object]],
    device: str,
    *,
    repeats: int,
    min_repeats: int,
    budget_s: float,
    memory: bool = True,
    on_call: Callable[[str], None] | None = None,
) -> dict[str, Outcome]:
    """Time every runner of one case; a runner that fails (OOM, error) is recorded and dropped.

    Per runner: one first call (timed on its own: compile, JIT build and lazy set-up land here),
    one warm-up call (which also measures peak memory, unless ``memory`` is False), then timed
    repeats in interleaved rounds. A runner stops after ``repeats`` calls, or earlier once its
    timed calls add up to ``budget_s`` and it has at least ``min_repeats`` of them, which caps
    slow backends (the reference loop at large shapes) while fast ones get many repeats.
    """
    outcomes: dict[str, Outcome] = {}
    tick = on_call or (lambda name: None)
    for name, fn in runners.items():
        try:
            first = time_call(fn, device)
            tick(name)
            mem = None
            if memory:
                mem = peak_memory(fn, device)
            else:
                fn()
                sync(device)
            tick(name)
            outcomes[name] = Outcome("ok", first_call_s=first, peak_mem_bytes=mem)
        except Exception as exc:  # noqa: BLE001 - recorded in the table, the run goes on
            outcomes[name] = Outcome.failed(exc)
            _after_failure(device)
    active = [n for n in runners if outcomes[n].status == "ok"]
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection landing in one backend's timing would bias its ratio
    try:
        rnd = 0
        while active:
            for name in round_order(active, rnd):
                out = outcomes[name]
                try:
                    out.times_s.append(time_call(runners[name], device))
                except Exception as exc:  # noqa: BLE001
                    outcomes[name] = Outcome.failed(exc, first_call_s=out.first_call_s)
                    _after_failure(device)
                tick(name)
            active = [n for n in active if outcomes[n].status == "ok" and not _done(outcomes[n], repeats, min_repeats, budget_s)]
            rnd += 1
    finally:
        if gc_was_enabled:
            gc.enable()
    return outcomes


def round_order(names: list, rnd: int) -> list:
    """``names`` in the order of round ``rnd``: the rows of a Williams design, taken in turn.

    Every name comes once per round and right after every other name equally often over the
    design's rows (n of them for n names, 2n for odd n): a Latin square balanced for first-order
    carry-over. Why: a call pays for what ran just before it, and under a rotation the cpp layer
    always ran right after the reference loop (``python benchmarks/bench_predecessors.py``;
    ECG shape, bf16 autocast, Zen 5: 0.957 ms there against 0.840-0.859 ms after the others).
    """
    n = len(names)
    first, low, high = [0], 1, n - 1  # 0, 1, n-1, 2, n-2, ...
    while len(first) < n:
        first.append(low)
        low += 1
        if len(first) < n:
            first.append(high)
            high -= 1
    rows = [[(i + shift) % n for i in first] for shift in range(n)]
    if n % 2:
        rows += [row[::-1] for row in rows]
    return [names[i] for i in rows[rnd % len(rows)]] if n else []


def _done(out: Outcome, repeats: int, min_repeats: int, budget_s: float) -> bool:
    n = len(out.times_s)
    return n >= repeats or (n >= min_repeats and sum(out.times_s) >= budget_s)


def _after_failure(device: str) -> None:
    gc.collect()
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()


def matmul_peak(device: str, dtype: torch.dtype, size: int | None = None, repeats: int = 5) -> dict:
    """The machine's achievable GEMM rate: a square ``torch.mm`` timed like the cases (GFLOP/s)."""
    n = size or (8192 if device.startswith("cuda") else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    fn = lambda: torch.mm(a, b)  # noqa: E731
    fn()
    sync(device)
    times = [time_call(fn, device) for _ in range(repeats)]
    flops = 2 * n ** 3
    return {
        "size": n,
        "times_s": times,
        "gflops_best": flops / min(times) / 1e9,
        "gflops_median": flops / float(np.median(times)) / 1e9,
    }
