"""Dataset registry: local resolution, sha256 checks, offline errors, downloads."""
import dataclasses
import hashlib
import urllib.error

import pytest

from scratchllm.cli import main
from scratchllm.data import registry
from scratchllm.data.registry import DATASETS, RemoteFile, resolve
from scratchllm.errors import ScratchError


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No outside data dir, an empty cache in tmp, and no real network."""
    monkeypatch.delenv("SCRATCHLLM_DATA_DIR", raising=False)
    monkeypatch.delenv("SCRATCHLLM_OFFLINE", raising=False)
    monkeypatch.setenv("SCRATCHLLM_CACHE", str(tmp_path / "cache"))


def no_network(monkeypatch):
    def refuse(url, *args, **kwargs):
        raise urllib.error.URLError("no network in tests")
    monkeypatch.setattr(registry, "download", refuse)


def test_sums_match_shared_checksum_file(shared_data):
    listed = dict(line.split()[::-1] for line in (shared_data / "SHA256SUMS").read_text().splitlines())
    for ds in DATASETS.values():
        for f in ds.files:
            assert listed[f"{ds.name}/{f.name}"] == f.sha256


def test_resolves_every_dataset_from_data_dir(shared_data, monkeypatch):
    no_network(monkeypatch)
    for name, ds in DATASETS.items():
        paths = resolve(name, shared_data)
        assert list(paths) == [f.name for f in ds.files]
        assert all(p == shared_data / name / f for f, p in paths.items())


def test_env_data_dir_and_dataset_folder_itself(shared_data, monkeypatch):
    no_network(monkeypatch)
    monkeypatch.setenv("SCRATCHLLM_DATA_DIR", str(shared_data))
    assert resolve("gpt2")["vocab.bpe"] == shared_data / "gpt2" / "vocab.bpe"
    # A folder that holds the files directly is accepted too.
    monkeypatch.delenv("SCRATCHLLM_DATA_DIR")
    assert resolve("gpt2", shared_data / "gpt2")["vocab.bpe"] == shared_data / "gpt2" / "vocab.bpe"


def test_corrupted_copy_is_caught(shared_data, tmp_path):
    bad = tmp_path / "mine" / "tinyshakespeare" / "input.txt"
    bad.parent.mkdir(parents=True)
    data = bytearray((shared_data / "tinyshakespeare" / "input.txt").read_bytes())
    data[100] ^= 1
    bad.write_bytes(bytes(data))
    with pytest.raises(ScratchError, match="sha256.*expected 86c4e6aa9db7"):
        resolve("tinyshakespeare", tmp_path / "mine")


def test_offline_error_says_what_to_put_where(tmp_path, monkeypatch):
    no_network(monkeypatch)
    with pytest.raises(ScratchError) as e:
        resolve("multi30k")
    msg = str(e.value)
    assert "\n" not in msg and "no network in tests" in msg
    assert str(tmp_path / "cache" / "multi30k") in msg and "train.de.gz" in msg
    assert "raw.githubusercontent.com/multi30k/dataset" in msg and "SCRATCHLLM_DATA_DIR" in msg


def test_downloads_turned_off(monkeypatch):
    monkeypatch.setenv("SCRATCHLLM_OFFLINE", "1")
    with pytest.raises(ScratchError, match="downloads are turned off.*encoder.json, vocab.bpe"):
        resolve("gpt2")


def test_download_from_file_url_into_cache(shared_data, tmp_path, monkeypatch):
    src = shared_data / "tinyshakespeare" / "input.txt"
    ds = DATASETS["tinyshakespeare"]
    local = dataclasses.replace(ds.files[0], url=src.as_uri())
    monkeypatch.setitem(DATASETS, "tinyshakespeare", dataclasses.replace(ds, files=(local,)))
    path = resolve("tinyshakespeare", progress=False)["input.txt"]
    assert path == tmp_path / "cache" / "tinyshakespeare" / "input.txt"
    assert path.read_bytes() == src.read_bytes()
    assert list(path.parent.iterdir()) == [path]          # no partial files left
    no_network(monkeypatch)                                 # second time: from the cache
    assert resolve("tinyshakespeare")["input.txt"] == path


def test_download_with_wrong_sum_saves_nothing(tmp_path, monkeypatch):
    src = tmp_path / "remote.txt"
    src.write_text("hello\n")
    wrong = hashlib.sha256(b"something else").hexdigest()
    ds = registry.Dataset("fake", "test", (RemoteFile("remote.txt", src.as_uri(), wrong),))
    monkeypatch.setitem(DATASETS, "fake", ds)
    with pytest.raises(ScratchError, match="different file; nothing was saved"):
        resolve("fake", progress=False)
    assert not any((tmp_path / "cache" / "fake").iterdir())


def test_unknown_names():
    with pytest.raises(ScratchError, match="unknown dataset 'nope'; registered: gpt2, multi30k"):
        resolve("nope")
    with pytest.raises(ScratchError, match="has no file"):
        resolve("gpt2", files=["merges.txt"])


def test_cli_path_and_errors(shared_data, capsys, monkeypatch):
    no_network(monkeypatch)
    assert main(["data", "path", "gpt2", "--data-dir", str(shared_data)]) == 0
    assert capsys.readouterr().out.split() == [str(shared_data / "gpt2" / f) for f in ("encoder.json", "vocab.bpe")]
    assert main(["data", "path", "gpt2"]) == 2
    assert "not available locally" in capsys.readouterr().err
    assert main(["data", "list", "--data-dir", str(shared_data)]) == 0
    out = capsys.readouterr().out
    assert "multi30k" in out and "not fetched" not in out
