"""Text corpora: the built-in one, a registered name, a file, or a folder."""
from __future__ import annotations

from pathlib import Path

from ..errors import ScratchError
from .registry import DATASETS, dataset_file

BUILTIN = "builtin"

# Files taken from a folder: plain-text suffixes, or no suffix at all.
TEXT_SUFFIXES = {".txt", ".text", ".md", ".rst", ""}


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
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ScratchError(f"{path} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset "
                           f"{e.start}); convert it to UTF-8 first") from None
    if "\x00" in text:
        raise ScratchError(f"{path} looks binary (it contains NUL bytes), not text")
    text = text.removeprefix("\ufeff")   # a BOM is an encoding mark, not text
    if not text.strip():
        raise ScratchError(f"{path} is empty: it has no text to train on")
    return text


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
    files = text_files(folder)
    if not files:
        raise ScratchError(f"{folder} has no text files (looked for {', '.join(sorted(TEXT_SUFFIXES - {''}))} "
                           "or files without a suffix)")
    parts = [read_text_file(p) for p in files]
    # A newline between files, so one file's last word does not join the next one's first.
    return "".join(t if t.endswith("\n") else t + "\n" for t in parts)


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
