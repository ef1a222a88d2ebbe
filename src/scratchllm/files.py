"""Writing a file or a folder whole or not at all; reading and writing safetensors.

Everything scratchllm writes as one file (a tokenizer, token ids, a
translation) goes through :func:`write_atomic`: the bytes go to a temporary
file beside the target, which is renamed over it only when complete. A crash
or a refusal (a full disk, a folder where the file should be) leaves the
target as it was and no temporary file behind. Folders (checkpoints, GPT-2
exports) do the same: they are filled in :func:`staged_dir` and put in place
by :func:`replace_dir`.

Weights are safetensors files, never pickle: :func:`read_safetensors` is the
one reader (our checkpoints and Hugging Face's files alike).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import ScratchError


def write_atomic(path, data: bytes | str, encoding: str = "utf-8") -> Path:
    """Write ``data`` (bytes, or text in ``encoding``) to ``path``, making its
    folder if needed; return the path."""
    path = Path(path)
    if path.is_dir():
        raise ScratchError(f"{path} is a folder: give the path of a file to write")
    if isinstance(data, str):
        data = data.encode(encoding)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of this process and thread: two writers never share a temporary file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# ---- folders ---------------------------------------------------------------------------
@contextmanager
def staged_dir(target):
    """``with staged_dir(target) as d:`` a new temporary folder beside ``target``
    (so a rename can move it there); it is removed on the way out, whether or
    not :func:`replace_dir` has moved it into place."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staged
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def replace_dir(staged: Path, target: Path):
    """Put a complete ``staged`` directory at ``target``; the old one is
    kept as ``target.old`` until the new one is in place."""
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(staged, target)
    shutil.rmtree(old, ignore_errors=True)


# ---- safetensors -----------------------------------------------------------------------
def read_safetensors(path, missing: str = "is missing") -> dict:
    """name -> array of a safetensors file. bfloat16 tensors (common in Hugging
    Face files; NumPy has no such type) are widened to float32. A missing or
    unreadable file is a one-line error (``missing`` says what its absence means)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise ScratchError(f"{path} {missing}")
    try:
        return load_file(str(path))
    except TypeError as e:  # NumPy has no bfloat16
        if "bfloat16" not in str(e):
            raise
        return _read_with_bf16(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ScratchError(f"{path} is corrupt: not a readable safetensors file ({e})") from None


def _read_with_bf16(path: Path) -> dict:
    """A safetensors file with bfloat16 tensors, widened to float32 (bf16 is the top half of a float32)."""
    from safetensors import safe_open

    raw = np.memmap(path, dtype=np.uint8, mode="r")
    header_len = int(raw[:8].view("<u8")[0])
    header = json.loads(bytes(raw[8:8 + header_len]))
    out = {}
    with safe_open(str(path), framework="np") as f:
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["dtype"] != "BF16":
                out[name] = f.get_tensor(name)
                continue
            lo, hi = info["data_offsets"]
            half = raw[8 + header_len + lo:8 + header_len + hi].view("<u2")
            out[name] = (half.astype(np.uint32) << 16).view(np.float32).reshape(info["shape"])
    return out


def write_safetensors(arrays: dict, path, metadata: dict | None = None) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path), metadata=metadata)
