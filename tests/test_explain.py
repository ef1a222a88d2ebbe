"""`scratchllm explain`: the printed numbers are the ones the model computes.

The saved weights are read back here with safetensors and the arithmetic is
redone in plain NumPy; every number parsed from the printout must agree to
its printed precision.
"""
import json
import re

import numpy as np
import pytest
from safetensors.numpy import load_file

import scratchllm as sl
from scratchllm.cli import main
from scratchllm.models import CharMLP
from scratchllm.models.charmlp import fit
from scratchllm.models.classifier import train_classifier
from scratchllm.tokenizers import CharTokenizer

NUM = r"([+-]?\d+\.\d+)"
QUOTED = r"'(?:[^'\\]|\\.)+'|\"[^\"]\""  # a character as repr() shows it: 'a', ' ', '\\n', "'"
PRINTED = 6e-5  # 4 decimals printed: half a unit in the last place, and a little float32 slack


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    model, _ = train_classifier(seed=1, hidden=(5,))
    return sl.save(model, tmp_path_factory.mktemp("ckpt") / "classifier")


def run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def parse_classifier(text):
    """{"scaled": {input: (measured, mean, std, x)}, "neurons": {name: {...}}, "verdict": str}."""
    scaled, neurons, cur = {}, {}, None
    for line in text.splitlines():
        if m := re.fullmatch(r"    (R|G|B|volume)\s+(\d+\.\d+)\s+(\d+\.\d+)\s+(\d+\.\d+)\s+" + NUM, line):
            scaled[m[1]] = tuple(float(v) for v in m.groups()[1:])
        elif m := re.fullmatch(r"  (?:neuron|score) (\w+)", line):
            cur = neurons[m[1]] = {"terms": []}
        elif m := re.fullmatch(r"    (\w+)\s+" + NUM + r"  ×\s+" + NUM + r"  =\s+" + NUM, line):
            cur["terms"].append((m[1], float(m[2]), float(m[3]), float(m[4])))
        elif m := re.fullmatch(r"    bias\s+" + NUM, line):
            cur["bias"] = float(m[1])
        elif m := re.fullmatch(r"    sum s\s+" + NUM, line):
            cur["sum"] = float(m[1])
        elif m := re.fullmatch(r"    (?:\w+ = relu\(s\)|score \w+ = s)\s+" + NUM, line):
            cur["out"] = float(m[1])
    verdict = re.search(r"^Verdict: (\w+)", text, re.M)[1]
    probs = dict((k, float(v)) for k, v in re.findall(r"(leaf|flower) (\d+\.\d+)%", text.split("As probabilities")[1]))
    return scaled, neurons, verdict, probs


def test_classifier_printout_is_the_arithmetic_of_the_saved_weights(classifier_dir, capsys):
    raw = [32.0, 107.0, 56.0, 11.2]
    code, out, err = run(capsys, ["explain", "classifier", *map(str, raw), "--weights", str(classifier_dir)])
    assert code == 0 and err == ""
    scaled, neurons, verdict, probs = parse_classifier(out)

    # The same computation, independently, from the files on disk.
    cfg = json.loads((classifier_dir / "config.json").read_text())["config"]
    w = {k: v.astype(np.float64) for k, v in load_file(str(classifier_dir / "model.safetensors")).items()}
    mean, std = np.array(cfg["input_mean"]), np.array(cfg["input_std"])
    x = (np.array(raw) - mean) / std
    W1, b1, W2, b2 = w["net.0.weight"], w["net.0.bias"], w["net.2.weight"], w["net.2.bias"]
    s1 = W1 @ x + b1
    h = np.maximum(s1, 0)
    scores = W2 @ h + b2

    for j, name in enumerate(["R", "G", "B", "volume"]):
        np.testing.assert_allclose(scaled[name][:3], (raw[j], mean[j], std[j]), atol=5e-4)  # 3 decimals
        assert scaled[name][3] == pytest.approx(x[j], abs=PRINTED)
    assert list(neurons) == ["h1", "h2", "h3", "h4", "h5", "leaf", "flower"]
    for k in range(5):
        n = neurons[f"h{k + 1}"]
        assert [t[0] for t in n["terms"]] == ["R", "G", "B", "volume"]
        np.testing.assert_allclose([t[1:] for t in n["terms"]], np.stack([x, W1[k], x * W1[k]], axis=1), atol=PRINTED)
        np.testing.assert_allclose([n["bias"], n["sum"], n["out"]], [b1[k], s1[k], h[k]], atol=PRINTED)
    for k, cls in enumerate(["leaf", "flower"]):
        n = neurons[cls]
        assert [t[0] for t in n["terms"]] == [f"h{j + 1}" for j in range(5)]
        np.testing.assert_allclose([t[1:] for t in n["terms"]], np.stack([h, W2[k], h * W2[k]], axis=1), atol=PRINTED)
        np.testing.assert_allclose([n["bias"], n["out"]], [b2[k], scores[k]], atol=PRINTED)
    assert verdict == ["leaf", "flower"][int(scores.argmax())] == "leaf"
    p = np.exp(scores - scores.max())
    p /= p.sum()
    np.testing.assert_allclose([probs["leaf"], probs["flower"]], 100 * p, atol=0.006)

    # And the model itself (its own forward pass) agrees with the printout.
    model_scores = sl.load(classifier_dir)([raw]).data[0]
    np.testing.assert_allclose([neurons["leaf"]["out"], neurons["flower"]["out"]], model_scores, atol=PRINTED)


def test_explain_without_weights_trains_a_default_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no out/classifier here
    code, out, err = run(capsys, ["explain", "classifier", "241", "200", "4", "59.5"])
    assert code == 0
    assert "trained now from seed 0" in err and len(err.strip().splitlines()) == 1
    assert re.search(r"^Verdict: flower", out, re.M)
    assert list(tmp_path.iterdir()) == []  # explaining writes nothing: no out/classifier, no file at all


# ---- CharMLP ------------------------------------------------------------------------------------
TEXT = "the leaf is green and the flower is red; the leaves fall and the flowers open.\n" * 20


@pytest.fixture(scope="module")
def charmlp_dir(tmp_path_factory):
    tok = CharTokenizer.from_text(TEXT)
    ids = np.array(tok.encode(TEXT))
    model = CharMLP(tok.vocab_size, context=5, n_embd=4, n_hidden=32, seed=0)
    fit(model, ids[:1400], ids[1400:], steps=300, lr=0.5, eval_every=300)
    return sl.save(model, tmp_path_factory.mktemp("ckpt") / "charmlp", tokenizer=tok)


def test_charmlp_printout_is_the_arithmetic_of_the_saved_weights(charmlp_dir, capsys):
    code, out, err = run(capsys, ["explain", "charmlp", "--text", "the fl", "--top", "4",
                                  "--weights", str(charmlp_dir)])
    assert code == 0 and err == ""
    chars = sorted(set(TEXT))                                  # ids: distinct characters in code-point order
    window = "he fl"                                           # the last 5 characters
    ids = [chars.index(c) for c in window]
    id_row = re.search(r"^    id\s+(.*)$", out, re.M)[1].split()
    char_row = re.findall(QUOTED, re.search(r"^    character\s+(.*)$", out, re.M)[1])
    assert id_row == [str(i) for i in ids]
    assert char_row == [repr(c) for c in window]

    w = {k: v.astype(np.float64) for k, v in load_file(str(charmlp_dir / "model.safetensors")).items()}
    x = w["wte.weight"][ids].reshape(-1)
    h = np.tanh(w["fc.weight"] @ x + w["fc.bias"])
    logits = w["head.weight"] @ h + w["head.bias"]
    p = np.exp(logits - logits.max())
    p /= p.sum()

    top = re.findall(r"^\s+(\d)\s+(" + QUOTED + r")\s+(\d+)\s+" + NUM + r"\s+(\d+\.\d+)%$", out, re.M)
    assert [int(r[0]) for r in top] == [1, 2, 3, 4]
    assert [int(r[2]) for r in top] == list(np.argsort(-p)[:4])
    for _, ch, i, logit, prob in top:
        assert eval(ch) == chars[int(i)]
        assert float(logit) == pytest.approx(logits[int(i)], abs=PRINTED)
        assert float(prob) == pytest.approx(100 * p[int(i)], abs=0.006)
    assert f"Most likely next character: {chars[int(np.argmax(p))]!r}" in out
    assert "'o'" == top[0][1]                                  # it learnt the text: "the fl" -> "o"


def test_charmlp_short_text_is_padded_with_newlines(charmlp_dir, capsys):
    code, out, _ = run(capsys, ["explain", "charmlp", "--text", "th", "--weights", str(charmlp_dir)])
    assert code == 0
    chars = re.findall(QUOTED, re.search(r"^    character\s+(.*)$", out, re.M)[1])
    assert chars == ["'\\n'"] * 3 + ["'t'", "'h'"]
    assert "positions 1–3 hold '\\n'" in out
