"""Fetching one file: streamed, hashed on the way, written atomically."""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

from ..errors import ScratchError

_CHUNK = 1 << 16
TIMEOUT_S = 30


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _progress_bar(total, label, enabled):
    from tqdm import tqdm
    return tqdm(total=total, unit="B", unit_scale=True, desc=label, disable=not enabled, leave=False)


def download(url: str, dest, sha256: str, *, progress: bool = True) -> Path:
    """Fetch ``url`` to ``dest`` if its sha256 matches; never leaves a partial file.

    Network errors surface as OSError (urllib's URLError is one) for the
    caller to turn into an offline message.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # The temporary file sits next to the target so the final rename is atomic.
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
            size = resp.headers.get("Content-Length")
            with _progress_bar(int(size) if size else None, dest.name, progress) as bar:
                for chunk in iter(lambda: resp.read(_CHUNK), b""):
                    out.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
        if h.hexdigest() != sha256:
            raise ScratchError(f"download of {url} has sha256 {h.hexdigest()[:12]}…, expected "
                               f"{sha256[:12]}…: the server sent a different file; nothing was saved")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest
