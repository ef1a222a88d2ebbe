"""Parallel corpora: line-aligned files, gzip, Multi30k, and errors."""
import gzip

import pytest

from scratchllm.data import load_parallel, multi30k, read_lines
from scratchllm.errors import ScratchError


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    monkeypatch.delenv("SCRATCHLLM_DATA_DIR", raising=False)
    monkeypatch.setenv("SCRATCHLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SCRATCHLLM_OFFLINE", "1")


def write(path, text, gz=False):
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_plain_and_gzip(tmp_path):
    src = write(tmp_path / "s.de.gz", "Ein Hund läuft.\r\nZwei Katzen \u2028 schlafen.\n", gz=True)
    tgt = write(tmp_path / "t.en", "A dog runs.\nTwo cats sleep.")
    de, en = load_parallel(src, tgt)
    # \r\n is handled, and U+2028 inside a sentence does not split it.
    assert de == ["Ein Hund läuft.", "Zwei Katzen \u2028 schlafen."]
    assert en == ["A dog runs.", "Two cats sleep."]


def test_mismatched_counts(tmp_path):
    src = write(tmp_path / "s", "a\nb\nc\n")
    tgt = write(tmp_path / "t", "a\nb\n")
    with pytest.raises(ScratchError, match="has 3 lines but .* has 2"):
        load_parallel(src, tgt)


def test_empty_line_is_named(tmp_path):
    src = write(tmp_path / "s", "a\nb\nc\n")
    tgt = write(tmp_path / "t", "a\n  \nc\n")
    with pytest.raises(ScratchError, match=r"line 2 of .*t is empty"):
        load_parallel(src, tgt)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ScratchError, match="is not a file"):
        read_lines(tmp_path / "nope.gz")
    with pytest.raises(ScratchError, match="are empty"):
        load_parallel(write(tmp_path / "s", ""), write(tmp_path / "t", ""))


def test_damaged_gzip(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(b"hello\n" * 100)[:20])
    with pytest.raises(ScratchError, match="damaged gzip"):
        read_lines(path)


@pytest.mark.parametrize("split, n", [("train", 29000), ("val", 1014), ("test2016", 1000)])
def test_multi30k(shared_data, split, n):
    de, en = multi30k(split, data_dir=shared_data)
    assert len(de) == len(en) == n
    assert all(de) and all(en)


def test_multi30k_first_test_pair(shared_data):
    de, en = multi30k("test_2016_flickr", data_dir=shared_data)
    assert en[0] == "A man in an orange hat starring at something."
    assert de[0].startswith("Ein Mann mit einem orangefarbenen Hut")


def test_multi30k_errors():
    with pytest.raises(ScratchError, match="unknown Multi30k split"):
        multi30k("dev")
    with pytest.raises(ScratchError, match="put test_2016_flickr.de.gz, test_2016_flickr.en.gz in"):
        multi30k("test2016")
