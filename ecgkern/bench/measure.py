"""Timing done one way for every backend: first call apart, warm-up, interleaved repeats.

CPU work is synchronous, so ``time.perf_counter`` around the call measures it; CUDA work is
timed with CUDA events on the current stream. Runners of one case are measured interleaved,
one call each per round with the order rotating every round, so that drift of a shared machine
(other processes, clocks) hits every backend alike and cancels in the ratios.
"""
from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

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
    def failed(cls, exc: BaseException, **kw) -> "Outcome":
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return cls("oom" if is_oom(exc) else "error", f"{type(exc).__name__}: {first_line}"[:300], **kw)

    def stats(self) -> dict:
        """median, quartiles and IQR of the timed repeats (seconds)."""
        if not self.times_s:
            return {}
        q1, med, q3 = np.percentile(np.asarray(self.times_s), [25, 50, 75])
        return {"median_s": float(med), "q1_s": float(q1), "q3_s": float(q3), "iqr_s": float(q3 - q1)}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], device: str) -> float:
    """Seconds one call of ``fn`` takes on ``device``."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


CPU_MEMORY_METHOD = "torch profiler: peak of live CPU tensor allocations made during one call"
CUDA_MEMORY_METHOD = "torch.cuda.max_memory_allocated growth over one call"


def peak_memory(fn: Callable[[], object], device: str) -> int | None:
    """Peak extra bytes that one call of ``fn`` holds at once (see *_MEMORY_METHOD)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - base)
    return _cpu_peak_memory(fn)


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (C++ logging bypasses sys.stderr) for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_peak_memory(fn) -> int | None:
    # tracemalloc does not see torch's allocator and peak RSS never goes down, so we replay the
    # profiler's allocation/free events in time order (the allocator reports every CPU tensor).
    deltas = cpu_allocation_deltas(fn)
    if deltas is None:
        return None
    live = peak = 0
    for nbytes in deltas:
        live += nbytes
        peak = max(peak, live)
    return int(peak)


def cpu_allocation_deltas(fn) -> list[int] | None:
    """Bytes of every CPU tensor allocation (+) and free (-) during one call of ``fn``, in time
    order, from torch's profiler; None where its (private) event API is not available."""
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr():  # kineto prints a line on every start and stop
        prof.start()
    try:
        fn()
    finally:
        with _quiet_stderr():
            prof.stop()
    try:
        events = prof.profiler.kineto_results.events()
        deltas = sorted(
            (e.start_ns(), e.nbytes()) for e in events
            if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
        )
    except (AttributeError, RuntimeError):  # private API moved: report unknown, not a guess
        return None
    return [nbytes for _, nbytes in deltas]


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
                _sync(device)
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
            order = active[rnd % len(active):] + active[: rnd % len(active)]
            for name in order:
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
    _sync(device)
    times = [time_call(fn, device) for _ in range(repeats)]
    flops = 2 * n ** 3
    return {
        "size": n,
        "times_s": times,
        "gflops_best": flops / min(times) / 1e9,
        "gflops_median": flops / float(np.median(times)) / 1e9,
    }
