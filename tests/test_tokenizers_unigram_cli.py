"""`scratchllm tokenize ... --kind unigram`, `scratchllm explain unigram`, and the explain trace."""
import itertools
import math
import random

import pytest

from scratchllm.cli import main
from scratchllm.explain.unigram import unigram_trace
from scratchllm.tokenizers import BPETokenizer, UnigramTokenizer, load


@pytest.fixture
def corpus(tmp_path):
    r = random.Random(0)
    words = "the a cat cats sat on mat mats dog dogs ran to house houses big small red sits catalog".split()
    f = tmp_path / "corpus.txt"
    f.write_text("\n".join(" ".join(r.choice(words) for _ in range(8)) for _ in range(2000)), encoding="utf-8")
    return f


def test_train_encode_decode(corpus, tmp_path, capsys):
    out = tmp_path / "tok.json"
    assert main(["tokenize", "train", "--kind", "unigram", "--data", str(corpus), "--vocab-size", "40",
                 "--out", str(out), "--no-progress"]) == 0
    tok = load(out)
    assert isinstance(tok, UnigramTokenizer) and tok.vocab_size == 40
    capsys.readouterr()
    assert main(["tokenize", "encode", "--tokenizer", str(out), "cats"]) == 0
    shown = capsys.readouterr().out
    ids = tok.encode("cats")
    assert "pieces: " + " ".join(tok.pieces(ids)) in shown
    assert tok.pieces(ids)[0].startswith("▁")
    assert main(["tokenize", "decode", "--tokenizer", str(out), " ".join(map(str, ids))]) == 0
    assert capsys.readouterr().out == "cats\n"


def test_model_files_in_the_cli(corpus, tmp_path, capsys):
    tok = UnigramTokenizer().train(corpus, 40)
    tok.save_sentencepiece(tmp_path / "m.model")
    assert main(["tokenize", "encode", "--tokenizer", str(tmp_path / "m.model"), "--ids", "the cats"]) == 0
    assert capsys.readouterr().out.split() == [str(i) for i in tok.encode("the cats")]


def test_too_large_vocabulary_is_one_clear_error(corpus, tmp_path, capsys):
    assert main(["tokenize", "train", "--kind", "unigram", "--data", str(corpus), "--vocab-size", "5000",
                 "--out", str(tmp_path / "t.json"), "--no-progress"]) == 2
    assert "fewer than vocab_size 5000" in capsys.readouterr().err
    assert not (tmp_path / "t.json").exists()


def test_cli_errors(tmp_path, capsys):
    (tmp_path / "bad.model").write_bytes(b"\xff\xff\xff\xff")
    assert main(["tokenize", "encode", "--tokenizer", str(tmp_path / "bad.model"), "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert "bad.model" in err and "\n" not in err and "Traceback" not in err
    BPETokenizer().train("the cat sat " * 50, 260).save(tmp_path / "bpe.json")
    assert main(["explain", "unigram", "--tokenizer", str(tmp_path / "bpe.json"), "cats"]) == 2
    assert "not a unigram tokenizer" in capsys.readouterr().err


def test_explain_against_brute_force(corpus, tmp_path, capsys):
    tok = UnigramTokenizer().train(corpus, 40)
    trace = unigram_trace(tok, "cats", top=1000)
    s = trace["normalized"]
    assert s == "▁cats"
    # every way to cut s into pieces (a character no piece covers may stand alone as <unk>)
    brute = []
    for cuts in itertools.product([0, 1], repeat=len(s) - 1):
        b = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [len(s)]
        parts = [s[x:y] for x, y in zip(b, b[1:])]
        known = [p in tok._ids and tok.piece_type(tok.token_to_id(p)) == "normal" for p in parts]
        if all(k or len(p) == 1 for k, p in zip(known, parts)):
            brute.append(sum(tok.score(tok.token_to_id(p)) if k else tok.unk_score for k, p in zip(known, parts)))
    assert trace["count"] == len(brute) == len(trace["segmentations"])
    assert [sc for _, sc in trace["segmentations"]] == pytest.approx(sorted(brute, reverse=True))
    assert trace["best"][-1] == pytest.approx(max(brute))
    assert [pid for _i, _j, pid in trace["viterbi"]] == tok.encode("cats")
    tok.save(tmp_path / "tok.json")
    assert main(["explain", "unigram", "--tokenizer", str(tmp_path / "tok.json"), "cats"]) == 0
    out = capsys.readouterr().out
    assert f"{len(brute)} in all" in out
    assert f"= {max(brute):.2f}" in out
    best_pieces = " + ".join(tok.pieces(tok.encode("cats")))
    assert f"Back from the end along the chosen pieces: {best_pieces}" in out
    if len(brute) > 1:
        gap = sorted(brute)[-1] - sorted(brute)[-2]
        assert f"{math.exp(gap):.3g} times as probable" in out
