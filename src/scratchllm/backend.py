"""The one place that names the array library.

Everything else writes ``from .backend import xp`` so that switching to a
NumPy-compatible library (CuPy) later touches only this file.
"""
import numpy as xp  # noqa: F401

DEFAULT_DTYPE = xp.float32


def to_numpy(a):
    """A host NumPy array for any backend array."""
    return a.get() if hasattr(a, "get") else xp.asarray(a)


MALLOC_TUNED = False  # whether retain_freed_memory() has changed malloc in this process


def retain_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning
    it to the OS; True if the setting is in force.

    By default glibc serves blocks over 128 KiB by mmap and hands them back to
    the OS when freed (and trims the heap's top likewise), so every step's
    activations and gradients come back as fresh pages, each one a page fault
    on first touch. A training step allocates and frees the same sizes over and
    over: in some processes (glibc adapts its thresholds to what ran before)
    those faults took 40% of a benchmark GPT step (bench/RESULTS.md). Blocks up
    to 32 MiB then come from the heap, and up to 128 MiB of free heap is kept.

    It changes malloc for the whole process (any other library in it too), so
    ``import scratchllm`` never does it: the ``scratchllm`` command calls it,
    as it owns its process; a program or notebook that trains may call it.
    Linux with glibc only; SCRATCHLLM_MALLOC=default turns it off.
    """
    import ctypes
    import os
    import sys

    global MALLOC_TUNED
    if MALLOC_TUNED:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("SCRATCHLLM_MALLOC") == "default":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
        MALLOC_TUNED = bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 128 << 20))
    except (OSError, AttributeError):  # not glibc
        return False
    return MALLOC_TUNED
