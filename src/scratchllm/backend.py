"""The one place that names the array library.

Everything else writes ``from .backend import xp`` so that switching to a
NumPy-compatible library (CuPy) later touches only this file.
"""
import numpy as xp  # noqa: F401

DEFAULT_DTYPE = xp.float32


def to_numpy(a):
    """A host NumPy array for any backend array."""
    return a.get() if hasattr(a, "get") else xp.asarray(a)


def _retain_freed_memory():
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it.

    By default glibc serves blocks over 128 KiB by mmap and hands them back to
    the OS when freed (and trims the heap's top likewise), so every step's
    activations and gradients come back as fresh pages, each one a page fault
    on first touch. A training step allocates and frees the same sizes over and
    over: in some processes (glibc adapts its thresholds to what ran before)
    those faults took 40% of a benchmark GPT step
    (bench/RESULTS.md). Blocks up to 32 MiB now come from the heap, and up to
    128 MiB of free heap is kept. Linux with glibc only; set
    SCRATCHLLM_MALLOC=default to leave malloc alone. It affects the whole
    process (in the benchmarks, PyTorch too).
    """
    import ctypes
    import os
    import sys

    if not sys.platform.startswith("linux") or os.environ.get("SCRATCHLLM_MALLOC") == "default":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 128 << 20))
    except (OSError, AttributeError):  # not glibc
        return False


MALLOC_TUNED = _retain_freed_memory()
