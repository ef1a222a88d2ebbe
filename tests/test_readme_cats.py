"""The README's sub-word row, as a learner types it: a BPE learned from Multi30k's English captions
(vocabulary 1000) cuts "two cats" into ... ' cat' 's', the same ' cat' as in "a cat", and `explain bpe`
shows the merges that build ' cat'. """
import pytest

from scratchllm.cli import main


@pytest.fixture(scope="module")
def multi30k_tok(tmp_path_factory):
    from conftest import shared_data_dir

    d = shared_data_dir()
    if d is None or not (d / "multi30k" / "train.en.gz").exists():
        pytest.skip("Multi30k not found in the shared data folder")
    out = tmp_path_factory.mktemp("cats") / "tok.json"
    assert main(["tokenize", "train", "--data", "multi30k.en", "--data-dir", str(d), "--vocab-size", "1000",
                 "--out", str(out), "--no-progress"]) == 0
    return out


def run(capsys, argv):
    assert main(argv) == 0
    return capsys.readouterr().out


def test_cats_is_cat_plus_s(multi30k_tok, capsys):
    out = run(capsys, ["tokenize", "encode", "--tokenizer", str(multi30k_tok), "A cat and two cats"])
    assert out.splitlines()[0] == "pieces: 'A' ' cat' ' and' ' two' ' cat' 's'"
    ids = out.splitlines()[1].split()[1:]
    assert ids[1] == ids[4]  # the same token for the cat alone and for the cats


def test_explain_bpe_shows_the_merges_that_build_cat(multi30k_tok, capsys):
    out = run(capsys, ["explain", "bpe", "--tokenizer", str(multi30k_tok), "two cats"])
    steps = [line.split("merge ", 1)[1].split(" rank")[0].strip() for line in out.splitlines() if ". merge " in line]
    assert "' c' + 'at'" in steps or "' ' + 'cat'" in steps or "' ca' + 't'" in steps, steps
    assert "→  ' cat' 's'" in out
    assert out.splitlines()[-3] == "tokens: 't' 'wo' ' cat' 's'"
    # "cats" alone starts the text without its space: the printout says why, and what to type
    out = run(capsys, ["explain", "bpe", "--tokenizer", str(multi30k_tok), "cats"])
    assert "' cats' → ' cat' 's'" in out and 'Try "two cats"' in out
