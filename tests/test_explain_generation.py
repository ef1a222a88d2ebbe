"""`explain charmlp --generate N`: generation feeds itself. Each printed step's window is the text so far
(its last `context` characters), the chosen character is the one CharMLP.generate picks with the same
settings, and it is appended before the next step. `explain classifier` says how to get the article's
4 → 3 → 2 network."""
import re

import numpy as np
import pytest

import scratchllm as sl
from scratchllm.cli import main
from scratchllm.models.charmlp import CharMLP, fit, pad_id_for
from scratchllm.models.classifier import train_classifier
from scratchllm.tokenizers import CharTokenizer

TEXT = "the cat sat on the mat. the cats sat on the mats. a cat ran after a rat. " * 30
ROW = re.compile(r"^ {4}\s*(\d+)  ('.*?')\s{2,}.*\s('[^']*'|\"[^\"]*\") \(\s*([0-9.]+)%\)$", re.M)


@pytest.fixture(scope="module")
def charmlp_dir(tmp_path_factory):
    tok = CharTokenizer.from_text(TEXT)
    ids = np.array(tok.encode(TEXT))
    model = CharMLP(tok.vocab_size, context=4, n_embd=4, n_hidden=32, seed=0)
    fit(model, ids[:2000], ids[2000:], steps=300, lr=0.5, eval_every=300)
    return sl.save(model, tmp_path_factory.mktemp("ckpt") / "charmlp", tokenizer=tok)


@pytest.mark.parametrize("temperature, seed", [(0, 0), (1.0, 3)])
def test_generation_steps_are_the_models_own(charmlp_dir, temperature, seed, capsys):
    text, n = "the c", 8
    assert main(["explain", "charmlp", "--weights", str(charmlp_dir), "--text", text, "--generate", str(n),
                 "--temperature", str(temperature), "--seed", str(seed)]) == 0
    out = capsys.readouterr().out
    rows = ROW.findall(out[out.index("Step 5."):])
    assert len(rows) == n
    model, tok = sl.load(charmlp_dir), sl.checkpoint.load_tokenizer(charmlp_dir)
    full = model.generate([tok.encode(text)], n, temperature=temperature, seed=seed, pad_id=pad_id_for(tok))
    expected = tok.decode(full[0].tolist())
    so_far = text
    for k, (step, window, chosen, pct) in enumerate(rows, 1):
        assert int(step) == k
        assert eval(window) == so_far[-4:]  # the window: the last 4 characters of the text so far
        so_far += eval(chosen)  # appended: the next window ends with it
    assert so_far == expected
    assert f"text: {expected!r}" in out


def test_without_generate_there_is_no_generation(charmlp_dir, capsys):
    assert main(["explain", "charmlp", "--weights", str(charmlp_dir), "--text", "the c"]) == 0
    assert "Step 5." not in capsys.readouterr().out


def test_classifier_says_how_to_get_the_articles_network(tmp_path, capsys):
    for hidden, says in (((8,), True), ((3,), False)):
        model, _ = train_classifier(seed=0, hidden=hidden, epochs=3)
        d = sl.save(model, tmp_path / f"h{hidden[0]}")
        assert main(["explain", "classifier", "32", "107", "56", "11.2", "--weights", str(d)]) == 0
        out = capsys.readouterr().out
        assert ("--hidden 3" in out) == says
    # and the command it gives makes that network
    out_dir = tmp_path / "classifier3"
    assert main(["classify", "train", "--hidden", "3", "--out", str(out_dir), "--epochs", "3"]) == 0
    assert sl.load(out_dir).hidden in ([3], (3,))
