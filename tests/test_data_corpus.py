"""Text corpora: built-in text, files, folders, registered names, and errors."""
import pytest

from scratchllm.data import builtin_text, load_text
from scratchllm.errors import ScratchError


def test_builtin_is_python_docs_in_english():
    from pydoc_data.topics import topics
    text = builtin_text()
    assert len(text) > 100_000
    assert text.startswith(topics[sorted(topics)[0]])
    for word in (" the ", "statement", "function", "class"):
        assert word in text
    assert load_text("builtin") == text


def test_file_and_folder(tmp_path):
    (tmp_path / "b.txt").write_text("second\n")
    (tmp_path / "a.txt").write_text("first")          # no final newline: one is added
    (tmp_path / "notes.md").write_text("third\n")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\x00")  # skipped: not a text suffix
    (tmp_path / ".hidden.txt").write_text("secret\n")     # skipped: hidden
    assert load_text(tmp_path / "b.txt") == "second\n"
    assert load_text(tmp_path) == "first\nsecond\nthird\n"
    assert load_text(str(tmp_path)) == "first\nsecond\nthird\n"


def test_registered_name(shared_data):
    text = load_text("tinyshakespeare", data_dir=shared_data)
    assert len(text) == 1_115_394 and text.startswith("First Citizen:")


def test_registered_name_that_is_not_text(shared_data):
    with pytest.raises(ScratchError, match="not a text corpus"):
        load_text("multi30k", data_dir=shared_data)


@pytest.mark.parametrize("content, match", [
    (None, "not found: give a text file"),
    (b"", "is empty"),
    (b" \n\t\n", "is empty"),
    ("caf\xe9".encode("latin-1"), r"not UTF-8 text \(byte 0xe9 at offset 3\)"),
    (b"ab\x00cd", "looks binary"),
])
def test_file_errors(tmp_path, content, match):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ScratchError, match=match):
        load_text(path)


def test_folder_without_text(tmp_path):
    (tmp_path / "data.bin").write_bytes(b"\x01\x02")
    with pytest.raises(ScratchError, match="has no text files"):
        load_text(tmp_path)


def test_folder_with_a_bad_file_names_it(tmp_path):
    (tmp_path / "ok.txt").write_text("fine\n")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(ScratchError, match="bad.txt is not UTF-8"):
        load_text(tmp_path)


def _folder(tmp_path):
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_bytes("\ufeffcafé au lait".encode())  # a BOM, and no final newline
    (d / "sub" / "b.md").write_text("naïve\n", encoding="utf-8")
    (d / "image.png").write_bytes(b"\x89PNG\x00\xff")               # not text: skipped
    (d / ".cache").write_text("hidden\n")                            # hidden: skipped
    return d


@pytest.mark.parametrize("chunk", [1, 2, 3, 1 << 20])  # reads that cut a character or the BOM in two
def test_a_tokenizer_sees_a_folder_as_training_does(tmp_path, monkeypatch, chunk):
    from scratchllm.data import corpus
    from scratchllm.tokenizers import CharTokenizer
    from scratchllm.tokenizers.text_input import iter_text

    monkeypatch.setattr(corpus, "CHUNK", chunk)
    d = _folder(tmp_path)
    expected = "café au lait\nnaïve\n"  # written out by hand
    assert load_text(d) == expected
    assert "".join(iter_text(d)) == expected
    assert "".join(iter_text(d / "a.txt")) == load_text(d / "a.txt") == "café au lait"
    assert CharTokenizer().train(d).chars == sorted(set(expected))


@pytest.mark.parametrize("chunk", [1, 2, 1 << 20])
def test_a_bad_byte_is_named_by_its_offset_however_the_file_is_read(tmp_path, monkeypatch, chunk):
    from scratchllm.data import corpus
    from scratchllm.tokenizers.text_input import iter_text

    monkeypatch.setattr(corpus, "CHUNK", chunk)
    path = tmp_path / "t.txt"
    path.write_bytes("né".encode() + b"\xffok")  # n, é (2 bytes), then a byte no UTF-8 text holds
    for read in (load_text, lambda p: "".join(iter_text(p))):
        with pytest.raises(ScratchError, match=r"not UTF-8 text \(byte 0xff at offset 3\)"):
            read(path)
