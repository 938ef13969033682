"""``--malloc``: how the C heap behaves while a benchmark runs (glibc only).

With glibc's defaults a large buffer (above the mmap threshold, which adapts up to 32 MB) is
mapped fresh for each call and unmapped when freed, and free memory at the top of the heap is
handed back to the kernel: every call then pays page faults for its big buffers. A backend
that allocates large workspaces each step (oneDNN's LSTM training step) loses most, so the
ratios depend on the allocator as much as on the kernels. ``steady`` keeps freed memory in the
process (what jemalloc or tcmalloc do, or ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...``
in the environment), so repeated calls reuse warm pages and the timings show the kernels.
"""
from __future__ import annotations

import ctypes
import os
import platform

MODES = ("default", "steady")

# mallopt parameters from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2 ** 31 - 1
_ENV_VARS = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX", "LD_PRELOAD")


def describe(mode: str) -> dict:
    """What the result file records about the allocator."""
    libc, version = platform.libc_ver()
    return {
        "mode": mode,
        "libc": f"{libc} {version}".strip() or None,
        "env": {k: os.environ[k] for k in _ENV_VARS if k in os.environ},
    }


def apply(mode: str) -> dict:
    """Put the process's C heap in ``mode`` (``default`` changes nothing) and describe it."""
    if mode not in MODES:
        raise ValueError(f"unknown --malloc mode {mode!r}; choose from {', '.join(MODES)}")
    if mode == "steady":
        if platform.libc_ver()[0] != "glibc":
            raise ValueError(f"--malloc steady needs glibc's mallopt; this Python runs on "
                             f"{platform.libc_ver()[0] or 'an unknown C library'} (use jemalloc/tcmalloc via LD_PRELOAD)")
        libc = ctypes.CDLL(None)
        # No mmap for any block (so none is unmapped when freed) and no trimming of the heap top.
        for param, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _INT_MAX)):
            if libc.mallopt(param, value) != 1:
                raise ValueError(f"glibc refused mallopt({param}, {value}) for --malloc steady")
    return describe(mode)
