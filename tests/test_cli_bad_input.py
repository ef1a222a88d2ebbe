"""Every verb, given bad input, answers in one line on stderr with exit status 2.

The verbs are enumerated from the parser itself, so a new verb is walked too,
and a verb with no cases here fails :func:`test_every_verb_has_cases`. Each
case runs in an empty folder holding only the fixtures below; afterwards the
folder must hold exactly what it held before (no partial file, no ``.tmp``, no
half-made folder). Unwritable paths are paths *under a regular file*
(``file.txt/sub``): the tests run as root in CI, and root may write into a
read-only folder, but no one can make a folder inside a file.

Most cases run in-process through ``scratchllm.cli.main`` (fast); a few run the
real command in a subprocess, where the whole of stderr is seen.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import scratchllm as sl
from scratchllm.cli import build_parser, main
from scratchllm.models import GPT, GPTConfig, Transformer, TransformerConfig
from scratchllm.models.classifier import Classifier
from scratchllm.models.llama import Llama, LlamaConfig
from scratchllm.tokenizers import BPETokenizer, CharTokenizer
from scratchllm.translate import SPECIAL_TOKENS

TEXT = "the cats sat on the mat. a dog ran after the cats, and the cats ran away.\n" * 40
UNWRITABLE = "file.txt/sub"  # a folder inside a regular file: cannot be made, not even by root


def verbs() -> list[str]:
    """Every runnable verb path of the parser: 'train', 'tokenize encode', ..."""
    out = []

    def walk(parser, path):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            out.append(" ".join(path))
        for action in subs:
            for name, child in action.choices.items():
                walk(child, path + [name])

    walk(build_parser(), [])
    return out


# verb -> [(arguments, words the one line must contain)]
CASES = {
    "bench": [(["--steps", "0"], "--steps must be at least 1"),
              (["--steps", "x"], "invalid int value")],
    "chat": [(["--model", "missing", "--prompt", "hi"], "does not exist"),
             (["--model", "truncated", "--prompt", "hi"], "corrupt"),
             (["--model", "gpt", "--prompt", "hi", "--temperature", "hot"], "--temperature"),
             (["--model", "gpt", "--prompt", "hi", "--top-p", "2"], "--top-p"),
             (["--model", "gpt", "--prompt", " "], "--prompt is empty"),
             (["--model", "translator", "--prompt", "hi"], "cannot chat")],
    "charmlp train": [(["--data", "missing.txt"], "missing.txt"),
                      (["--data", "text.txt", "--steps", "1", "--out", UNWRITABLE], "file.txt"),
                      (["--data", "notutf8.txt", "--steps", "1"], "UTF-8"),
                      (["--steps", "-3"], "--steps")],
    "charmlp generate": [(["--weights", "missing"], "does not exist"),
                         (["--weights", "truncated"], "corrupt"),
                         (["--weights", "clf"], "Classifier")],
    "classify train": [(["--epochs", "1", "--out", UNWRITABLE], "file.txt"),
                       (["--hidden", "0"], "--hidden")],
    "classify predict": [(["1", "2"], "give 4 numbers"),
                         (["32", "107", "56", "11.2", "--weights", "badjson"], "corrupt")],
    "data list": [(["--no-such-flag"], "unrecognized arguments")],
    "data fetch": [(["no-such-dataset"], "no-such-dataset")],
    "data path": [(["no-such-dataset"], "no-such-dataset")],
    "explain classifier": [(["1", "2", "3"], "give 4 numbers"),
                           (["32", "107", "56", "11.2", "--weights", "truncated"], "corrupt")],
    "explain charmlp": [(["--text", ""], "--text is empty"),
                        (["--text", "ab", "--generate", "x"], "--generate must be an integer"),
                        (["--text", "ab", "--generate", "-1"], "--generate must be at least 0"),
                        (["--text", "ab", "--generate", "3", "--temperature", "-1"], "--temperature must be at least 0"),
                        (["--text", "ab", "--weights", "badjson"], "corrupt")],
    "explain positions": [(["--ckpt", "truncated"], "corrupt"),
                          (["--ckpt", "clf"], "no positions"),
                          (["--dims", "0"], "--dims")],
    "path": [(["--minutes", "0"], "--minutes must be above 0"),
             (["--minutes", "x"], "--minutes must be a number"),
             (["--data", "missing.txt", "--minutes", "0.01"], "missing.txt"),
             (["--threads", "0"], "--threads must be at least 1"),
             (["--sample-chars", "0"], "--sample-chars must be at least 1")],
    "explain gpt": [(["--ckpt", "clf", "--text", "the"], "not a gpt"),
                    (["--ckpt", "gpt", "--text", "the", "--target", "e", "--lr", "-1"], "--lr must be above 0"),
                    (["--ckpt", "gpt", "--text", ""], "--text is empty"),
                    (["--ckpt", "truncated", "--text", "the"], "corrupt"),
                    (["--ckpt", "gpt", "--text", "the", "--layer", "5"], "--layer")],
    "explain llama": [(["--model", "missing", "--text", "the"], "does not exist"),
                      (["--model", "gpt", "--text", "the"], "has no RMSNorm"),
                      (["--model", "clf", "--text", "the"], "not a llama"),
                      (["--model", "truncated", "--text", "the"], "corrupt"),
                      (["--model", "llama", "--text", ""], "--text is empty"),
                      (["--model", "llama", "--text", "the cat", "--show", "rope,nonsense"], "--show"),
                      (["--model", "llama", "--text", "the cat", "--layer", "1"], "--layer"),
                      (["--model", "llama", "--text", "the cat", "--head", "2"], "--head"),
                      (["--model", "llama", "--text", "the cat", "--position", "x"], "--position"),
                      (["--model", "llama", "--text", "the cat", "--key-position", "40"], "--key-position"),
                      (["--model", "llama", "--text", "the cat", "--shift", "100"], "--shift"),
                      (["--model", "llama", "--text", "the cat", "--shift", "-1"], "--shift"),
                      (["--model", "llama", "--text", "the cat", "--norm", "ln_3"], "--norm"),
                      (["--model", "llama", "--text", "the", "--target", "e", "--lr", "0"], "--lr must be above 0")],
    "explain transformer": [(["--ckpt", "missing", "--text", "ein hund"], "does not exist"),
                            (["--ckpt", "gpt", "--text", "ein hund"], "gpt"),
                            (["--ckpt", "translator", "--text", ""], "--text")],
    "explain dropout": [(["--ckpt", "clf", "--text", "the"], "reads a GPT or a Transformer"),
                        (["--ckpt", "gpt", "--text", "the", "--p", "1.5"], "--p"),
                        (["--ckpt", "gpt", "--text", "the", "--site", "nowhere"], "--site"),
                        (["--ckpt", "truncated", "--text", "the"], "corrupt")],
    "explain bpe": [(["--tokenizer", "bad.json", "cats"], "bad.json"),
                    (["--tokenizer", "missing.json", "cats"], "missing.json"),
                    (["--tokenizer", "char.json", "cats"], "not a BPE tokenizer")],
    "explain unigram": [(["--tokenizer", "tok.json", "cats"], "not a unigram tokenizer"),
                        (["--tokenizer", "missing.json", "cats"], "missing.json"),
                        (["--tokenizer", "bad.json", "cats"], "bad.json")],
    "explore": [(["--ckpt", "missing"], "missing"),
                (["--ckpt", "truncated"], "corrupt"),
                (["--port", "x"], "--port")],
    "export": [(["--ckpt", "clf", "--hf", "hf"], "only a GPT"),
               (["--ckpt", "gpt", "--hf", UNWRITABLE], "file.txt"),
               (["--ckpt", "truncated", "--hf", "hf"], "corrupt")],
    "generate": [(["--ckpt", "truncated"], "corrupt"),
                 (["--ckpt", "badjson"], "corrupt"),
                 (["--ckpt", "gpt", "--temperature", "hot"], "--temperature")],
    "tokenize train": [(["--data", "text.txt", "--vocab-size", "260", "--out", "folder"], "is a folder"),
                       (["--data", "text.txt", "--vocab-size", "260", "--out", UNWRITABLE + "/tok.json"],
                        "file.txt"),
                       (["--data", "missing.txt", "--vocab-size", "260"], "missing.txt"),
                       (["--data", "multi30k.fr", "--vocab-size", "260"], "multi30k.en (English)"),
                       (["--data", "notutf8.txt", "--vocab-size", "260", "--out", "t.json"], "UTF-8")],
    "tokenize encode": [(["--tokenizer", "bad.json", "x"], "bad.json"),
                        (["--tokenizer", "truncated.json", "x"], "truncated.json"),
                        (["--tokenizer", "missing", "x"], "missing")],
    "tokenize decode": [(["--tokenizer", "tok.json", "a"], "not a token id"),
                        (["--tokenizer", "tok.json", "99999"], "out of range")],
    "train": [(["--data", "text.txt", "--out", UNWRITABLE, "--max-iters", "1"], "file.txt"),
              (["--data", "missing.txt", "--out", "run", "--max-iters", "1"], "missing.txt"),
              (["--data", "text.txt", "--tokenizer", "bad.json", "--out", "run", "--max-iters", "1"], "bad.json"),
              (["--out", "corrupt_run", "--resume", "--max-iters", "1"], "corrupt_run"),
              (["--out", "resumable", "--resume", "--max-iters", "3", "--no-progress"],
               "resumable/log.jsonl, line 2, is not a JSON record"),
              (["--max-iters", "x"], "invalid int value"),
              (["--data", "text.txt", "--out", "run", "--max-iters", "1", "--snapshots", "-1"],
               "--snapshots must be 0 (none) or at least 2"),
              # refused before the data is tokenised into --out (the folder must stay empty)
              (["--data", "text.txt", "--out", "run", "--positional", "bogus"], "--positional must be"),
              (["--data", "text.txt", "--out", "run", "--n-head", "3"], "divisible by --n-head"),
              (["--data", "text.txt", "--out", "run", "--lr", "0"], "--lr must be above 0"),
              (["--data", "text.txt", "--out", "run", "--tokenizer", "bpe", "--bpe-vocab-size", "100"],
               "--bpe-vocab-size must be at least"),
              (["--data", "text.txt", "--out", "run", "--max-iters", "1", "--snapshots", "1"], "--snapshots")],
    "plot": [(["corrupt_run"], "line 2"),
             (["missing"], "not found"),
             (["run_without_log"], "not found")],
    "translate-train": [(["--src", "missing.de", "--tgt", "missing.en", "--out", "tr_run", "--vocab-size", "270"],
                         "missing"),
                        (["--src", "text.txt", "--tgt", "text.txt", "--out", UNWRITABLE], "file.txt"),
                        (["--epochs", "x"], "invalid int value"),
                        (["--src", "text.txt", "--tgt", "text.txt", "--out", "tr_run", "--snapshots", "-2"],
                         "--snapshots must be 0 (none) or at least 2"),
                        (["--src", "text.txt", "--tgt", "text.txt", "--out", "tr_run", "--d-model", "30"],
                         "divisible by --n-head"),
                        (["--src", "text.txt", "--tgt", "text.txt", "--out", "tr_run", "--tokenizer", "wordpiece"],
                         "--tokenizer must be"),
                        (["--src", "text.txt", "--tgt", "text.txt", "--out", "tr_run", "--vocab-size", "100"],
                         "--vocab-size must be at least")],
    "translate": [(["--ckpt", "missing", "--text", "ein hund"], "does not exist"),
                  (["--ckpt", "translator", "--input", "text.txt", "--output", UNWRITABLE + "/out.txt"],
                   "file.txt"),
                  (["--ckpt", "translator", "--input", "missing.txt"], "missing.txt"),
                  (["--ckpt", "gpt", "--text", "ein hund"], "not a translation model")],
    "translate-eval": [(["--ckpt", "translator", "--src", "text.txt"], "--ref"),
                       (["--ckpt", "translator", "--src", "missing.de", "--ref", "missing.en"], "missing"),
                       (["--ckpt", "translator", "--src", "text.txt", "--ref", "text.txt",
                         "--output", UNWRITABLE + "/out.txt"], "file.txt")],
}


def make_fixtures(d: Path) -> None:
    """The files the cases use, good and bad."""
    (d / "file.txt").write_text("a regular file\n")
    (d / "text.txt").write_text(TEXT)
    (d / "notutf8.txt").write_bytes(b"caf\xe9 \xff\xfe latin-1 bytes\n" * 50)
    (d / "bad.json").write_text("{not json")
    (d / "folder").mkdir()
    tok = BPETokenizer("gpt2").train(TEXT, 270)
    tok.save(d / "tok.json")
    (d / "truncated.json").write_text((d / "tok.json").read_text()[:300])
    CharTokenizer().train(TEXT, None).save(d / "char.json")
    gpt = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=8))
    sl.save(gpt, d / "gpt", tokenizer=tok)
    sl.save(Classifier(), d / "clf")
    sl.save(Llama(LlamaConfig(vocab_size=tok.vocab_size, hidden_size=8, intermediate_size=12, num_hidden_layers=1,
                              num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)),
            d / "llama", tokenizer=tok)
    sl.save(gpt, d / "truncated", tokenizer=tok)
    weights = (d / "truncated" / "model.safetensors").read_bytes()
    (d / "truncated" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    sl.save(Classifier(), d / "badjson")
    (d / "badjson" / "config.json").write_text('{"model": "classifier", ')
    run = d / "corrupt_run"
    (run / "ckpt").mkdir(parents=True)
    (run / "log.jsonl").write_text('{"step": 1, "train_loss": 2.0, "val_loss": 2.1}\n{"step": 2, "train_lo\n')
    (d / "run_without_log").mkdir()
    assert main(["train", "--data", str(d / "text.txt"), "--out", str(d / "resumable"), "--max-iters", "2",
                 "--eval-interval", "1", "--eval-iters", "1", "--n-layer", "1", "--n-head", "2", "--n-embd", "8",
                 "--block-size", "8", "--batch-size", "2", "--sample-tokens", "0", "--no-progress"]) == 0
    log = (d / "resumable" / "log.jsonl").read_text().splitlines()
    (d / "resumable" / "log.jsonl").write_text("\n".join([log[0], log[1][:7]] + log[2:]) + "\n")
    tr_tok = BPETokenizer(special_tokens=SPECIAL_TOKENS).train("ein hund rennt. a dog runs.", 262)
    cfg = TransformerConfig(src_vocab_size=tr_tok.vocab_size, tgt_vocab_size=tr_tok.vocab_size, d_model=8,
                            n_head=2, n_encoder_layers=1, n_decoder_layers=1, d_ff=16, max_len=32,
                            pad_id=tr_tok.special_tokens["<pad>"])
    sl.save(Transformer(cfg), d / "translator", tokenizer=tr_tok)


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fixtures")
    make_fixtures(d)
    return d


def snapshot(d: Path) -> dict:
    """Every path under d with the SHA-256 of its contents (files) or None (folders): a file
    rewritten with other bytes of the same size counts as touched."""
    return {str(p.relative_to(d)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None)
            for p in sorted(d.rglob("*"))}


@pytest.fixture
def workdir(fixtures, tmp_path, monkeypatch):
    """A fresh copy of the fixtures as the current folder."""
    import shutil

    d = tmp_path / "work"
    shutil.copytree(fixtures, d)
    monkeypatch.chdir(d)
    monkeypatch.setenv("SCRATCHLLM_DATA_DIR", str(d / "folder"))  # no dataset there, and no download
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the dataset cache: empty, outside the snapshot
    return d


def run_in_process(argv, capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own refusals leave through SystemExit
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(code, err, words, argv):
    lines = err.splitlines()
    assert code == 2, f"{argv}: exit {code}, stderr {err!r}"
    assert len(lines) == 1 and err.endswith("\n"), f"{argv}: stderr is not one line: {err!r}"
    assert "Traceback" not in err and "error" in lines[0], f"{argv}: {err!r}"
    assert words.lower() in lines[0].lower(), f"{argv}: {words!r} not in {lines[0]!r}"


def test_every_verb_has_cases():
    missing = [v for v in verbs() if v not in CASES]
    assert not missing, f"verbs without bad-input cases in {__file__}: {missing}"
    assert not [v for v in CASES if v not in verbs()], "cases for verbs that no longer exist"


@pytest.mark.parametrize("verb, args, words", [(v, a, w) for v, cases in CASES.items() for a, w in cases],
                         ids=[f"{v}-{i}" for v, cases in CASES.items() for i in range(len(cases))])
def test_bad_input_is_one_line_and_leaves_nothing(verb, args, words, workdir, capsys):
    before = snapshot(workdir)
    argv = verb.split() + args
    code, _, err = run_in_process(argv, capsys)
    assert_one_line(code, err, words, argv)
    assert snapshot(workdir) == before, f"{argv} left files behind"


@pytest.mark.parametrize("verb", verbs())
def test_an_unknown_option_is_one_line_naming_the_verb(verb, capsys):
    """argparse's refusals too: an unknown option, or (first) a required argument left out."""
    code, out, err = run_in_process(verb.split() + ["--no-such-option"], capsys)
    assert_one_line(code, err, "", verb)
    assert "--no-such-option" in err or "required" in err
    assert err.startswith(f"scratchllm {verb}: error:") and f"scratchllm {verb} --help" in err


@pytest.mark.parametrize("verb", verbs())
def test_help_states_each_default_once(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main(verb.split() + ["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("usage:")
    flat = " ".join(out.split())
    assert "(default: None)" not in flat and "(default: )" not in flat
    options = [chunk for chunk in flat.split(" --")[1:]]
    for chunk in options:
        assert chunk.count("(default:") <= 1, f"{verb}: --{chunk[:80]}"


@pytest.mark.parametrize("argv, words, left", [
    (["tokenize", "train", "--data", "text.txt", "--vocab-size", "260", "--out", "folder"], "is a folder", []),
    (["train", "--data", "text.txt", "--out", UNWRITABLE, "--max-iters", "1"], "file.txt is a file", []),
    (["translate", "--ckpt", "translator", "--input", "text.txt", "--output", "file.txt/out.txt"], "file.txt", []),
    (["plot", "corrupt_run"], "corrupt_run/log.jsonl, line 2", []),
])
def test_the_real_command(argv, words, left, workdir):
    """The installed command, in its own process: exactly one line on stderr, exit 2."""
    before = snapshot(workdir)
    env = dict(os.environ, PYTHONPATH=str(Path(sl.__file__).parents[1]))
    proc = subprocess.run([sys.executable, "-m", "scratchllm", *argv], capture_output=True, text=True,
                          env=env, timeout=120)
    assert_one_line(proc.returncode, proc.stderr, words, argv)
    assert snapshot(workdir) == before


def test_write_atomic_leaves_the_old_file_and_no_temporary_on_failure(tmp_path, monkeypatch):
    from scratchllm import files

    target = tmp_path / "tok.json"
    target.write_text("old")

    def refuse(src, dst):
        raise OSError(28, "No space left on device", str(dst))

    monkeypatch.setattr(files.os, "replace", refuse)
    with pytest.raises(OSError):
        files.write_atomic(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["tok.json"]


def test_plot_reads_a_translation_run(tmp_path):
    """translate-train's log: running train losses, validation losses at the epochs."""
    from scratchllm.plot import loss_curves, read_log

    lines = [{"kind": "train", "epoch": 1, "step": 10, "loss": 5.0, "lr": 1e-3},
             {"kind": "train", "epoch": 1, "step": 20, "loss": 4.0, "lr": 1e-3},
             {"kind": "epoch", "epoch": 1, "step": 25, "train_loss": 4.5, "val_loss": 4.2, "val_bleu": 1.0},
             {"kind": "train", "epoch": 2, "step": 30, "loss": 3.5, "lr": 1e-3}]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    curves = loss_curves(read_log(tmp_path))
    assert curves == {"train": [(10, 5.0), (20, 4.0), (30, 3.5)], "validation": [(25, 4.2)]}
    gpt = [{"step": 0, "train_loss": 4.2, "val_loss": 4.3}, {"step": 250, "train_loss": 2.0, "val_loss": 2.2}]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gpt))
    assert loss_curves(read_log(tmp_path)) == {"train": [(0, 4.2), (250, 2.0)], "validation": [(0, 4.3), (250, 2.2)]}


def test_plot_draws_a_translation_run(tmp_path):
    pytest.importorskip("matplotlib")
    lines = [{"kind": "train", "step": 10, "loss": 5.0}, {"kind": "epoch", "step": 12, "train_loss": 4.5,
                                                          "val_loss": 4.2}]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert main(["plot", str(tmp_path)]) == 0
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_translate_output_into_a_new_folder_is_made(workdir, capsys):
    """--output under a folder that does not exist yet: the folder is made, the file written whole."""
    (workdir / "in.txt").write_text("ein hund\n\nrennt\n")
    code = main(["translate", "--ckpt", "translator", "--input", "in.txt", "--output", "new/deeper/out.txt",
                 "--beam", "1", "--no-progress"])
    capsys.readouterr()
    assert code == 0
    assert len((workdir / "new" / "deeper" / "out.txt").read_text().splitlines()) == 3
    assert sorted(p.name for p in (workdir / "new" / "deeper").iterdir()) == ["out.txt"]


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only user mistakes and refusals of the file system become one line; a bug is not hidden."""
    from scratchllm.cli import classify

    def broken(args):
        raise TypeError("a bug")

    monkeypatch.setattr(classify, "run_predict", broken)
    with pytest.raises(TypeError, match="a bug"):
        main(["classify", "32", "107", "56", "11.2"])
