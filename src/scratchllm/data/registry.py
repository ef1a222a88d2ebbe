"""Named public datasets: where to find them locally, or fetch them once.

A dataset is a few files, each with a public URL and a sha256 sum. A file
``F`` of dataset ``NAME`` is looked for, in order, at ``DIR/NAME/F`` (or
``DIR/F``) for DIR in: the explicit ``data_dir`` argument (``--data-dir``),
``$SCRATCHLLM_DATA_DIR``, the cache (``$SCRATCHLLM_CACHE`` or
``~/.cache/scratchllm``); failing that it is downloaded into the cache.
Every file is checked against its sha256 before use.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ScratchError
from .download import download, file_sha256


@dataclass(frozen=True)
class RemoteFile:
    name: str      # file name inside the dataset folder
    url: str
    sha256: str


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    files: tuple[RemoteFile, ...]
    text_file: str | None = None   # the file load_text() reads, for text corpora

    def file(self, name: str) -> RemoteFile:
        for f in self.files:
            if f.name == name:
                return f
        raise ScratchError(f"dataset {self.name!r} has no file {name!r}; "
                           f"its files are {', '.join(f.name for f in self.files)}")


_M30K = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/"
_GPT2 = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
_M30K_SUMS = {
    "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
    "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
}

DATASETS: dict[str, Dataset] = {
    "tinyshakespeare": Dataset(
        "tinyshakespeare", "1.1 MB of Shakespeare's plays, the usual char-level benchmark",
        (RemoteFile("input.txt",
                    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
                    "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),),
        text_file="input.txt"),
    "multi30k": Dataset(
        "multi30k", "Multi30k task 1: German-English image captions (29k train, 1k val, 1k test2016)",
        tuple(RemoteFile(name, _M30K + name, sha) for name, sha in _M30K_SUMS.items())),
    "gpt2": Dataset(
        "gpt2", "GPT-2 byte-level BPE vocabulary (encoder.json) and merges (vocab.bpe)",
        (RemoteFile("encoder.json", _GPT2 + "encoder.json",
                    "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
         RemoteFile("vocab.bpe", _GPT2 + "vocab.bpe",
                    "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"))),
}


def get_dataset(name: str) -> Dataset:
    try:
        return DATASETS[name]
    except KeyError:
        raise ScratchError(f"unknown dataset {name!r}; registered: {', '.join(sorted(DATASETS))}") from None


def cache_dir() -> Path:
    """Where downloaded datasets live: $SCRATCHLLM_CACHE or ~/.cache/scratchllm."""
    env = os.environ.get("SCRATCHLLM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "scratchllm"


def search_dirs(data_dir=None) -> list[Path]:
    """The local folders searched, first match wins."""
    dirs = [Path(data_dir).expanduser()] if data_dir else []
    env = os.environ.get("SCRATCHLLM_DATA_DIR")
    if env:
        dirs.append(Path(env).expanduser())
    return dirs + [cache_dir()]


def _find_local(ds: Dataset, f: RemoteFile, dirs: list[Path]) -> Path | None:
    for d in dirs:
        for cand in (d / ds.name / f.name, d / f.name):
            if cand.is_file():
                return cand
    return None


# Paths already hashed in this process, keyed by (path, size, mtime), so that
# resolving a dataset twice does not read it twice.
_VERIFIED: set[tuple[str, int, int]] = set()


def verify(path: Path, f: RemoteFile) -> Path:
    """Check a local copy against its sha256; a clear error if it differs."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _VERIFIED:
        return path
    digest = file_sha256(path)
    if digest != f.sha256:
        raise ScratchError(f"{path} has sha256 {digest[:12]}…, expected {f.sha256[:12]}…: the file is "
                           f"damaged or a different version; delete it, or replace it with {f.url}")
    _VERIFIED.add(key)
    return path


def _offline() -> bool:
    return os.environ.get("SCRATCHLLM_OFFLINE", "") not in ("", "0")


def _missing_error(ds: Dataset, missing: list[RemoteFile], why: str | None) -> ScratchError:
    names = ", ".join(f.name for f in missing)
    urls = " ".join(f.url for f in missing)
    failed = f" and could not be downloaded ({why})" if why else " and downloads are turned off"
    return ScratchError(
        f"dataset {ds.name!r} is not available locally{failed}: put {names} in {cache_dir() / ds.name} "
        f"(or in DIR/{ds.name}/ with --data-dir DIR or SCRATCHLLM_DATA_DIR=DIR); "
        f"they are at {urls}")


def resolve(name: str, data_dir=None, *, files=None, download_ok: bool = True,
            progress: bool = True) -> dict[str, Path]:
    """Paths of a dataset's files (all, or those named in ``files``), found
    locally or downloaded into the cache; returns {file name: path}."""
    ds = get_dataset(name)
    wanted = ds.files if files is None else tuple(ds.file(n) for n in files)
    dirs = search_dirs(data_dir)
    found, missing = {}, []
    for f in wanted:
        path = _find_local(ds, f, dirs)
        if path is None:
            missing.append(f)
        else:
            found[f.name] = verify(path, f)
    if missing:
        if not download_ok or _offline():
            raise _missing_error(ds, missing, None)
        target = cache_dir() / ds.name
        for f in missing:
            try:
                found[f.name] = download(f.url, target / f.name, f.sha256, progress=progress)
            except OSError as e:   # no network, DNS failure, HTTP error, unwritable cache
                raise _missing_error(ds, missing, str(e) or type(e).__name__) from None
    return {f.name: found[f.name] for f in wanted}


def dataset_file(name: str, file: str, data_dir=None, **kwargs) -> Path:
    """Path of one file of a dataset, found locally or downloaded."""
    return resolve(name, data_dir, files=[file], **kwargs)[file]
