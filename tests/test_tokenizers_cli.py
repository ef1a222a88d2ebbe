"""`scratchllm tokenize train | encode | decode`."""
import json

import pytest

from scratchllm.cli import main
from scratchllm.tokenizers import BPETokenizer, load


@pytest.fixture
def corpus(tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text("the cat sat on the mat. the cats sat on the mats.\n" * 200, encoding="utf-8")
    return f


def test_train_encode_decode(corpus, tmp_path, capsys):
    out = tmp_path / "tok.json"
    assert main(["tokenize", "train", "--data", str(corpus), "--vocab-size", "270", "--out", str(out),
                 "--special", "<|endoftext|>"]) == 0
    tok = load(out)
    assert isinstance(tok, BPETokenizer) and tok.vocab_size == 270
    capsys.readouterr()

    assert main(["tokenize", "encode", "--tokenizer", str(out), "cats"]) == 0
    shown = capsys.readouterr().out
    ids = tok.encode("cats")
    assert "pieces: " + " ".join(tok.pieces(ids)) in shown
    assert "ids:    " + " ".join(map(str, ids)) in shown
    assert len(ids) == 2 and tok.decode(ids[:1]) == "cat"  # "cats" -> "cat" + "s"

    assert main(["tokenize", "encode", "--tokenizer", str(out), "--ids", "--allow-special", "a<|endoftext|>"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed[-1] == str(tok.special_tokens["<|endoftext|>"])

    assert main(["tokenize", "decode", "--tokenizer", str(out), f"[{', '.join(map(str, ids))}]"]) == 0
    assert capsys.readouterr().out == "cats\n"


def test_char_kind(corpus, tmp_path, capsys):
    out = tmp_path / "chars.json"
    assert main(["tokenize", "train", "--kind", "char", "--data", str(corpus), "--out", str(out)]) == 0
    assert json.loads(out.read_text(encoding="utf-8"))["type"] == "char"
    capsys.readouterr()
    assert main(["tokenize", "encode", "--tokenizer", str(out), "cat"]) == 0
    assert "pieces: 'c' 'a' 't'" in capsys.readouterr().out


def test_gpt2_files_folder(shared_data, capsys):
    assert main(["tokenize", "encode", "--tokenizer", str(shared_data / "gpt2"), "Hello world"]) == 0
    out = capsys.readouterr().out
    assert "pieces: 'Hello' ' world'" in out and "ids:    15496 995" in out


@pytest.mark.parametrize("argv, message", [
    (["tokenize", "decode", "--tokenizer", "{tok}", "1", "x"], "'x' is not a token id"),
    (["tokenize", "decode", "--tokenizer", "{tok}", "99999"], "out of range"),
    (["tokenize", "encode", "--tokenizer", "{missing}", "a"], "has no tokenizer|does not exist"),
    (["tokenize", "train", "--data", "{corpus}", "--out", "{tok}"], "--vocab-size is required"),
    (["tokenize", "train", "--data", "{corpus}", "--vocab-size", "100000", "--out", "{tok2}"], "allows at most"),
    (["tokenize", "train", "--data", "{corpus}", "--vocab-size", "300", "--pattern", "(", "--out", "{tok2}"],
     "not a valid regex"),
])
def test_user_mistakes_are_one_line_errors(argv, message, corpus, tmp_path, capsys):
    tok = tmp_path / "tok.json"
    BPETokenizer("gpt2").train(corpus, 260).save(tok)
    argv = [a.format(tok=tok, tok2=tmp_path / "t2.json", corpus=corpus, missing=tmp_path / "nothing") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("scratchllm tokenize: error:")
    import re
    assert re.search(message, err)
