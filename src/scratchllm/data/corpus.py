"""Text corpora: the built-in one, a registered name, a file, or a folder.

A file or folder is read by one reader (:func:`text_chunks`), whole here for a
model's training and in chunks for a tokenizer's, so both see the same text: a
folder's text files (by suffix, hidden ones skipped) in sorted order, a newline
between files, UTF-8 with any BOM dropped.
"""
from __future__ import annotations

import codecs
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from ..errors import ScratchError
from .registry import DATASETS, dataset_file

BUILTIN = "builtin"

# Files taken from a folder: plain-text suffixes, or no suffix at all.
TEXT_SUFFIXES = {".txt", ".text", ".md", ".rst", ""}
CHUNK = 1 << 20  # bytes read at a time


def builtin_text() -> str:
    """English text of Python's own documentation topics, in sorted topic order.

    Ships with every CPython install, so training works with no network.
    """
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise ScratchError("the built-in corpus needs Python's pydoc_data module, which this Python "
                           "lacks; pass a text file or folder with --data instead") from None
    return "\n".join(topics[k] for k in sorted(topics))


def read_text_file(path) -> str:
    """One UTF-8 text file; clear errors for missing, binary or empty files."""
    path = Path(path)
    if not path.is_file():
        raise ScratchError(f"{path} is not a file")
    return "".join(_file_chunks(path))


def text_files(folder) -> list[Path]:
    """Text files under a folder, recursively, sorted; hidden ones skipped."""
    folder = Path(folder)
    files = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).parts
        if p.is_file() and not any(part.startswith(".") for part in rel) \
                and p.suffix.lower() in TEXT_SUFFIXES:
            files.append(p)
    return files


def read_text_folder(folder) -> str:
    return "".join(text_chunks(Path(folder)))


def text_chunks(path, progress: bool = False, allow_nul: bool = False) -> Iterator[str]:
    """The text of a file, or of a folder's text files, in consecutive chunks:
    the same text :func:`load_text` gives, without holding it whole (tokenizers
    learn from large corpora this way). A NUL byte is refused as the mark of a
    binary file given by mistake, unless ``allow_nul`` (a tokenizer takes any
    text: byte-level BPE has a token for every byte)."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = text_files(path)
        if not files:
            raise ScratchError(f"{path} has no text files (looked for {', '.join(sorted(TEXT_SUFFIXES - {''}))} "
                               "or files without a suffix)")
    else:
        raise ScratchError(f"{path} does not exist; give a text file or a folder of text files")
    bar = tqdm(total=sum(f.stat().st_size for f in files), desc=f"reading {path.name}", unit="B",
               unit_scale=True, disable=not progress, leave=False)
    for f in files:
        last = ""
        for chunk in _file_chunks(f, bar, allow_nul):
            last = chunk
            yield chunk
        # Between a folder's files a newline, so one file's last word does not join the next one's first.
        if f is not path and not last.endswith("\n"):
            yield "\n"
    bar.close()


def _file_chunks(path: Path, bar=None, allow_nul: bool = False) -> Iterator[str]:
    """A UTF-8 file's text in chunks, its BOM dropped; a file that is not UTF-8,
    holds NUL bytes or has no text is an error naming it."""
    # An incremental decoder, so a character split between two reads is whole.
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, seen_text, first = 0, False, True  # offset: bytes given to the decoder so far
    with open(path, "rb") as fh:
        while True:
            block = fh.read(CHUNK)
            pending = decoder.getstate()[0]  # the start of a character cut by the last read
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                at = offset - len(pending) + e.start
                raise ScratchError(f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                                   f"{at}); convert it to UTF-8 first") from None
            offset += len(block)
            if bar is not None:
                bar.update(len(block))
            if not allow_nul and "\x00" in text:
                raise ScratchError(f"{path} looks binary (it contains NUL bytes), not text")
            if first and text:
                text, first = text.removeprefix("\ufeff"), False  # a BOM is an encoding mark, not text
            seen_text = seen_text or bool(text.strip())
            if text:
                yield text
            if not block:
                break
    if not seen_text:
        raise ScratchError(f"{path} is empty: it has no text to train on")


def load_text(spec, data_dir=None) -> str:
    """The training text named by ``spec``.

    ``spec`` is ``"builtin"``, an existing file or folder (a path wins over a
    registered name), or a registered text dataset such as ``tinyshakespeare``.
    """
    spec_str = str(spec)
    if spec_str == BUILTIN:
        return builtin_text()
    path = Path(spec_str).expanduser()
    if path.is_dir():
        return read_text_folder(path)
    if path.exists():
        return read_text_file(path)
    if spec_str in DATASETS:
        ds = DATASETS[spec_str]
        if ds.text_file is None:
            raise ScratchError(f"dataset {spec_str!r} is not a text corpus; text datasets: "
                               f"{', '.join(n for n, d in sorted(DATASETS.items()) if d.text_file)}")
        return read_text_file(dataset_file(spec_str, ds.text_file, data_dir))
    raise ScratchError(f"{spec_str} not found: give a text file, a folder of .txt files, "
                       f"'{BUILTIN}', or a dataset name ({', '.join(sorted(DATASETS))})")
