"""Measuring one call: wall time (CUDA events on a GPU), peak memory, CPU allocation events.

A leaf module (imports only torch), shared by the benchmarks, the harness and ``ecgkern.testing``.
CPU work is synchronous, so ``time.perf_counter`` around the call measures it; CUDA work is
timed with CUDA events on the current stream.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator

import torch

CPU_MEMORY_METHOD = "torch profiler: peak of live CPU tensor allocations made during one call"
CUDA_MEMORY_METHOD = "torch.cuda.max_memory_allocated growth over one call"


class Stopwatch:
    """Wall time (perf_counter) since it was made or entered: ``sw = Stopwatch(); ...; sw.seconds``, or
    ``with Stopwatch() as sw: ...`` (the time stops at the end of the block)."""

    def __init__(self) -> None:
        self._start = time.perf_counter()
        self._stop: float | None = None

    def __enter__(self) -> Stopwatch:
        self._start, self._stop = time.perf_counter(), None
        return self

    def __exit__(self, *exc) -> None:
        self._stop = time.perf_counter()

    @property
    def seconds(self) -> float:
        return (self._stop if self._stop is not None else time.perf_counter()) - self._start


def sync(device: str) -> None:
    """Wait for queued work on ``device`` (a no-op on the CPU)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], device: str) -> float:
    """Seconds one call of ``fn`` takes on ``device``."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    with Stopwatch() as sw:
        fn()
    return sw.seconds


def peak_memory(fn: Callable[[], object], device: str) -> int | None:
    """Peak extra bytes that one call of ``fn`` holds at once (see *_MEMORY_METHOD)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - base)
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


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
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


def cpu_allocation_deltas(fn: Callable[[], object]) -> list[int] | None:
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
