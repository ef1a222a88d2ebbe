"""Token streams on disk: raw ids plus a small JSON sidecar, read back as a memmap.

A corpus is tokenised once; training then reads windows straight from disk.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import ScratchError
from ..files import write_atomic

FORMAT = "scratchllm-tokens"
VERSION = 1


def sidecar_path(path) -> Path:
    """``train.bin`` -> ``train.bin.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def token_dtype(vocab_size: int) -> np.dtype:
    # uint16 holds ids 0..65535, i.e. any vocabulary of up to 65536 tokens.
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def write_token_bin(ids, path, vocab_size: int | None = None) -> Path:
    """Store ids as uint16 (vocabulary ≤ 65536) or uint32, with a JSON sidecar."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ScratchError(f"token ids must be a 1-D integer sequence, got shape {ids.shape} dtype {ids.dtype}")
    lo, hi = (int(ids.min()), int(ids.max())) if ids.size else (0, -1)
    vocab_size = hi + 1 if vocab_size is None else int(vocab_size)
    if lo < 0 or hi >= vocab_size:
        raise ScratchError(f"token ids span {lo}..{hi}, outside the vocabulary 0..{vocab_size - 1}")
    dtype = token_dtype(vocab_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, ids.astype(dtype).tobytes())
    meta = {"format": FORMAT, "version": VERSION, "dtype": dtype.name,
            "count": int(ids.size), "vocab_size": vocab_size}
    # The sidecar is written last: its presence means the ids are complete.
    write_atomic(sidecar_path(path), json.dumps(meta, indent=1).encode())
    return path


def read_token_meta(path) -> dict:
    """The sidecar of a token file: dtype, count, vocab_size."""
    side = sidecar_path(path)
    if not side.is_file():
        raise ScratchError(f"{side} is missing: {path} is not a token file written by write_token_bin")
    try:
        meta = json.loads(side.read_text())
        ok = meta.get("format") == FORMAT and meta.get("dtype") in ("uint16", "uint32")
    except (ValueError, AttributeError):
        ok = False
    if not ok:
        raise ScratchError(f"{side} is not a valid token-file sidecar; write the tokens again")
    return meta


def read_token_bin(path) -> np.ndarray:
    """The ids of a token file as a read-only 1-D memmap (uint16 or uint32)."""
    path = Path(path)
    meta = read_token_meta(path)
    dtype = np.dtype(meta["dtype"])
    if not path.is_file():
        raise ScratchError(f"{path} is missing (its sidecar exists); write the tokens again")
    expected = meta["count"] * dtype.itemsize
    if path.stat().st_size != expected:
        raise ScratchError(f"{path} has {path.stat().st_size} bytes, its sidecar says {expected}: "
                           "the file is truncated or stale; write the tokens again")
    if meta["count"] == 0:
        return np.zeros(0, dtype)   # np.memmap cannot map an empty file
    return np.memmap(path, dtype=dtype, mode="r", shape=(meta["count"],))
