"""Parallel corpora: two line-aligned files, one sentence per line."""
from __future__ import annotations

import gzip
from pathlib import Path

from ..errors import ScratchError
from .registry import resolve

_GZIP_MAGIC = b"\x1f\x8b"

# Names people use for the Multi30k splits -> the file stem on disk.
MULTI30K_SPLITS = {
    "train": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test2016": "test_2016_flickr", "test_2016_flickr": "test_2016_flickr", "test": "test_2016_flickr",
}


def read_lines(path) -> list[str]:
    """Lines of a UTF-8 text file, plain or gzip (told by its magic bytes), stripped."""
    path = Path(path)
    if not path.is_file():
        raise ScratchError(f"{path} is not a file")
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ScratchError(f"{path} is a damaged gzip file ({e})") from None
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise ScratchError(f"{path} is not UTF-8 text (bad byte at offset {e.start})") from None
    # Split on "\n" only: str.splitlines would also break at U+2028 and friends
    # inside a sentence and shift every following line out of alignment.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()   # the final newline ends the last line, it does not start a new one
    return [line.strip() for line in lines]


def load_parallel(src_path, tgt_path) -> tuple[list[str], list[str]]:
    """Sentence pairs from two line-aligned files; every line must be non-empty."""
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise ScratchError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}: "
                           "the files must be line-aligned, one sentence pair per line")
    if not src:
        raise ScratchError(f"{src_path} and {tgt_path} are empty: no sentence pairs")
    for path, lines in ((src_path, src), (tgt_path, tgt)):
        for i, line in enumerate(lines, start=1):
            if not line:
                raise ScratchError(f"line {i} of {path} is empty: every line must hold a sentence")
    return src, tgt


def multi30k(split: str = "train", data_dir=None, **kwargs) -> tuple[list[str], list[str]]:
    """(German lines, English lines) of a Multi30k split: train, val or test2016."""
    try:
        stem = MULTI30K_SPLITS[split]
    except KeyError:
        raise ScratchError(f"unknown Multi30k split {split!r}; use train, val or test2016") from None
    de, en = f"{stem}.de.gz", f"{stem}.en.gz"
    paths = resolve("multi30k", data_dir, files=[de, en], **kwargs)
    return load_parallel(paths[de], paths[en])
