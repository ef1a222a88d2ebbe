"""The translation verbs: translate-train, translate, translate-eval."""
import re

import numpy as np
import pytest

import scratchllm as sl
from scratchllm import translation_train as TT
from scratchllm.cli import main

from test_translation_train import synthetic_pairs, tiny_config

try:
    import sacrebleu
except ImportError:  # a test extra: the tests that do not score with it still run
    sacrebleu = None
needs_sacrebleu = pytest.mark.skipif(sacrebleu is None, reason="sacrebleu (test extra) is not installed")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A small model that has learned the made-up language (trained once for this file)."""
    d = tmp_path_factory.mktemp("translation")
    TT.train_translation(tiny_config(d, epochs=15), echo=lambda *a: None)
    return d / "run"


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, message):
    err = err.strip()
    assert code == 2 and message in err and "Traceback" not in err and len(err.splitlines()) == 1, err


def test_translate_a_sentence(ckpt, capsys):
    code, out, _ = run(capsys, "translate", "--ckpt", ckpt, "--text", "ka ri te lo", "--text", "ne mo su")
    assert code == 0 and out.splitlines() == ["dog runs big small", "the cat sleeps"]


@pytest.mark.parametrize("verb_like", ["translate", "translate-eval", "train", "eval"])
def test_a_sentence_that_looks_like_a_verb_is_translated(ckpt, capsys, verb_like):
    code, out, _ = run(capsys, "translate", "--ckpt", ckpt, "--text", verb_like, "--beam", "1")
    assert code == 0 and len(out.splitlines()) == 1


def test_a_sentence_without_text_flag_is_an_error(ckpt, capsys):
    code, _, err = run(capsys, "translate", "--ckpt", ckpt, "train", "ka")
    one_line_error(code, err, "unexpected words 'train ka': give the sentence with --text")


@needs_sacrebleu
def test_translate_a_file(ckpt, tmp_path, capsys):
    src, ref = synthetic_pairs(40, seed=2)
    lines = src[:20] + [""] + src[20:]  # an empty line stays an empty line
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    code, _, err = run(capsys, "translate", "--ckpt", ckpt, "--input", tmp_path / "in.txt",
                       "--output", tmp_path / "out.txt", "--batch-size", "7")
    out = (tmp_path / "out.txt").read_text().split("\n")[:-1]
    assert code == 0 and len(out) == 41 and out[20] == ""
    assert sacrebleu.corpus_bleu(out[:20] + out[21:], [ref]).score > 80
    # the same without --output goes to standard output, and batching changes nothing
    code, stdout, _ = run(capsys, "translate", "--ckpt", ckpt, "--input", tmp_path / "in.txt", "--no-progress")
    assert stdout.split("\n")[:-1] == out


@needs_sacrebleu
def test_eval_prints_sacrebleu_score(ckpt, tmp_path, capsys):
    src, ref = synthetic_pairs(50, seed=3)
    ref[0] = "a dog runs"  # not every reference matches, so the score is not 100
    ref[1] = "cat"
    (tmp_path / "src").write_text("\n".join(src) + "\n")
    (tmp_path / "ref").write_text("\n".join(ref) + "\n")
    code, out, _ = run(capsys, "translate-eval", "--ckpt", ckpt, "--src", tmp_path / "src", "--ref", tmp_path / "ref",
                       "--output", tmp_path / "hyp", "--no-progress", "--beam", "2")
    hyps = (tmp_path / "hyp").read_text().splitlines()
    expected = sacrebleu.corpus_bleu(hyps, [ref])
    shown = re.search(r"BLEU = ([\d.]+) ([\d./]+)", out)
    assert code == 0 and shown and float(shown.group(1)) == pytest.approx(expected.score, abs=0.005)
    assert [float(p) for p in shown.group(2).split("/")] == pytest.approx(expected.precisions, abs=0.05)
    assert 0 < expected.score < 100


def test_eval_on_multi30k_split(ckpt, shared_data, capsys):
    """The split is read from the shared data. The made-up language's tokenizer spells German out byte by
    byte, so some sentences are longer than the model's 128 positions: they are cut, with a note."""
    code, out, err = run(capsys, "translate-eval", "--ckpt", ckpt, "--split", "val", "--data-dir", shared_data,
                         "--beam", "1", "--no-progress", "--batch-size", "256")
    assert code == 0 and "val: 1014 sentences" in out and "BLEU = " in out
    assert "longer than 128 tokens were cut to fit (line " in err
    from scratchllm.translate import translate_texts

    de, _ = sl.data.multi30k("val", shared_data)
    with pytest.raises(sl.ScratchError, match="has [0-9]+ tokens; the model reads at most 128"):
        translate_texts(sl.load(ckpt), sl.checkpoint.load_tokenizer(ckpt), de)


def test_train_then_resume_from_the_command_line(tmp_path, capsys):
    src, tgt = synthetic_pairs(200)
    (tmp_path / "s").write_text("\n".join(src) + "\n")
    (tmp_path / "t").write_text("\n".join(tgt) + "\n")
    common = ["translate-train", "--src", tmp_path / "s", "--tgt", tmp_path / "t", "--out", tmp_path / "run",
              "--vocab-size", "280", "--d-model", "16", "--n-head", "2", "--n-layers", "1", "--d-ff", "32",
              "--max-tokens", "128", "--bleu-sentences", "5", "--no-progress"]
    code, out, _ = run(capsys, *common, "--epochs", "2", "--max-steps", "5")
    assert code == 0 and "stopped at --max-steps 5" in out and "checkpoint:" in out
    code, out, _ = run(capsys, *common, "--epochs", "1", "--resume")
    assert code == 0 and "epoch 1 (step" in out and "model:" in out
    code, out, _ = run(capsys, "translate", "--ckpt", tmp_path / "run", "--text", "ka")
    assert code == 0 and out.strip()


@pytest.mark.parametrize("args, message", [
    (["translate", "--ckpt", "NOPE", "--text", "ka"], "does not exist"),
    (["translate-eval", "--ckpt", "NOPE", "--src", "S", "--ref", "R"], "does not exist"),
    (["translate", "--ckpt", "CKPT"], "either --text"),
    (["translate", "--ckpt", "CKPT", "--text", "ka", "--input", "S"], "either --text"),
    (["translate", "--ckpt", "CKPT", "--input", "NOPE"], "is not a file"),
    (["translate", "--ckpt", "CKPT", "--text", "ka", "--beam", "0"], "--beam must be at least 1"),
    (["translate", "--ckpt", "GPT", "--text", "ka"], "not a translation model"),
    (["translate-eval", "--ckpt", "CKPT", "--src", "S", "--ref", "SHORT"], "has 3 lines but"),
    (["translate-eval", "--ckpt", "CKPT", "--src", "S"], "both --src and --ref"),
    (["translate-eval", "--ckpt", "CKPT", "--src", "HOLE", "--ref", "S"], "line 2 of"),
    (["translate-train", "--src", "S", "--tgt", "SHORT", "--out", "OUT"], "has 3 lines but"),
    (["translate-train", "--src", "HOLE", "--tgt", "S", "--out", "OUT"], "line 2 of"),
    (["translate-train", "--src", "S", "--out", "OUT"], "both --src and --tgt"),
    (["translate-train", "--out", "NOPE", "--resume"], "does not exist"),
    (["translate-train", "--data", "wmt14", "--out", "OUT"], "unknown parallel dataset"),
    (["translate-train", "--src", "S", "--tgt", "S", "--out", "OUT", "--dropout", "1.5"], "--dropout"),
])
def test_bad_input_is_one_line(ckpt, tmp_path, capsys, args, message):
    files = {"S": "ka ri\nmo su\nne vi\n", "SHORT": "a\nb\n", "HOLE": "ka\n\nmo\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    gpt = sl.models.GPT(sl.models.GPTConfig(vocab_size=10, block_size=4, n_layer=1, n_head=1, n_embd=4))
    sl.save(gpt, tmp_path / "gpt")
    subst = {"CKPT": str(ckpt), "NOPE": str(tmp_path / "nope"), "GPT": str(tmp_path / "gpt"),
             "OUT": str(tmp_path / "out"), **{k: str(tmp_path / k) for k in files}}
    code, _, err = run(capsys, *[subst.get(a, a) for a in args])
    one_line_error(code, err, message)


@pytest.mark.parametrize("verb", ["translate-train", "translate", "translate-eval"])
def test_help(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0 and "--" in capsys.readouterr().out


def test_library_matches_cli(ckpt, capsys):
    from scratchllm.translate import translate_texts

    model, tok = sl.load(ckpt), sl.checkpoint.load_tokenizer(ckpt)
    code, out, _ = run(capsys, "translate", "--ckpt", ckpt, "--text", "te ka bo gi", "--beam", "3")
    assert out.strip() == translate_texts(model, tok, ["te ka bo gi"], beam_size=3)[0]
    assert np.isfinite(model.loss([[1, 2]], [[3]], [[4]]).item())
