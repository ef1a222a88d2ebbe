"""Writing a file whole or not at all.

Everything scratchllm writes as one file (a tokenizer, token ids, a
translation) goes through :func:`write_atomic`: the bytes go to a temporary
file beside the target, which is renamed over it only when complete. A crash
or a refusal (a full disk, a folder where the file should be) leaves the
target as it was and no temporary file behind. Checkpoints, which are
folders, do the same with a temporary folder (``checkpoint.py``).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

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
