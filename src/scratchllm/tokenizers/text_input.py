"""Training text as a stream of chunks: a str, a file or folder, or an iterable."""
from __future__ import annotations

import codecs
import os
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from ..errors import ScratchError

CHUNK = 1 << 20


def iter_text(data, progress: bool = False) -> Iterator[str]:
    """The text in consecutive chunks, with a progress bar if asked.

    data: a str (the text itself), a pathlib.Path to a file or to a folder
    (its files in sorted order, read one after the other), or any iterable of
    str, such as an open text file, read as consecutive parts of one text.
    """
    if isinstance(data, str):
        bar = tqdm(total=len(data), desc="reading", unit="char", unit_scale=True, disable=not progress, leave=False)
        for i in range(0, len(data), CHUNK):
            bar.update(min(CHUNK, len(data) - i))
            yield data[i:i + CHUNK]
        bar.close()
    elif isinstance(data, os.PathLike):
        yield from _read_path(Path(data), progress)
    else:
        bar = tqdm(desc="reading", unit="char", unit_scale=True, disable=not progress, leave=False)
        for item in data:
            if not isinstance(item, str):
                raise ScratchError(f"training data must be text; got an item of type {type(item).__name__}")
            bar.update(len(item))
            yield item
        bar.close()


def text_files(path: Path) -> list[Path]:
    """The file itself, or a folder's files (recursively, sorted, hidden ones skipped)."""
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*")
                       if p.is_file() and not any(s.startswith(".") for s in p.relative_to(path).parts))
        if not files:
            raise ScratchError(f"folder {path} has no files to read")
        return files
    raise ScratchError(f"{path} does not exist; give a text file or a folder of text files")


def _read_path(path: Path, progress: bool) -> Iterator[str]:
    files = text_files(path)
    total = sum(f.stat().st_size for f in files)
    bar = tqdm(total=total, desc=f"reading {path.name}", unit="B", unit_scale=True, disable=not progress, leave=False)
    for f in files:
        # An incremental decoder, so a character split between two reads is whole.
        decoder = codecs.getincrementaldecoder("utf-8")()
        try:
            with open(f, "rb") as fh:
                while block := fh.read(CHUNK):
                    bar.update(len(block))
                    yield decoder.decode(block)
                yield decoder.decode(b"", final=True)
        except UnicodeDecodeError as e:
            raise ScratchError(f"{f} is not UTF-8 text (byte {e.start} of a block: {e.reason})") from None
    bar.close()
