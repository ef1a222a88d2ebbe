"""The one place that names the array library.

Everything else writes ``from .backend import xp`` so that switching to a
NumPy-compatible library (CuPy) later touches only this file.
"""
import numpy as xp  # noqa: F401

DEFAULT_DTYPE = xp.float32


def to_numpy(a):
    """A host NumPy array for any backend array."""
    return a.get() if hasattr(a, "get") else xp.asarray(a)
