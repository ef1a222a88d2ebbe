"""CharMLP (Bengio et al. 2003): its arithmetic, its gradients, that it learns, sampling, saving."""
import math
import re
from collections import Counter

import numpy as np
import pytest

import scratchllm as sl
from scratchllm import functional as F
from scratchllm.data import load_text
from scratchllm.models import CharMLP
from scratchllm.models.charmlp import fit, windows
from scratchllm.tokenizers import CharTokenizer

from gradcheck import check_grads


def numpy_logits(model, ids):
    """The model's forward pass from its weights, in plain float64 NumPy."""
    C = model.wte.weight.data.astype(float)
    H, d = model.fc.weight.data.astype(float), model.fc.bias.data.astype(float)
    U, b = model.head.weight.data.astype(float), model.head.bias.data.astype(float)
    x = C[ids].reshape(len(ids), -1)                 # embeddings side by side
    return np.tanh(x @ H.T + d) @ U.T + b


def test_forward_is_embed_concat_tanh_linear():
    model = CharMLP(vocab_size=11, context=4, n_embd=3, n_hidden=7, seed=1)
    ids = np.random.default_rng(0).integers(0, 11, size=(5, 4))
    out = model(ids)
    assert out.shape == (5, 11)
    np.testing.assert_allclose(out.data, numpy_logits(model, ids), rtol=1e-5, atol=1e-5)


def test_gradients_match_finite_differences():
    model = CharMLP(vocab_size=7, context=3, n_embd=2, n_hidden=5, seed=2)
    model.head.weight.data *= 10                    # undo the small init so every gradient is sizeable
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 7, size=(6, 3))
    ids[1] = ids[0]                                 # repeated ids: embedding gradients must add up
    targets = rng.integers(0, 7, size=6)
    check_grads(lambda *params: F.cross_entropy(model(ids), targets), model.parameters())


def test_wrong_window_shape_is_a_clear_error():
    model = CharMLP(vocab_size=5, context=4)
    with pytest.raises(sl.ScratchError, match=r"\(B, 4\)"):
        model(np.zeros((2, 3), dtype=np.int64))


def test_windows_and_padding():
    ids = np.arange(10)
    x, y = windows(ids, 3, np.array([0, 6]))
    np.testing.assert_array_equal(x, [[0, 1, 2], [6, 7, 8]])
    np.testing.assert_array_equal(y, [3, 9])
    model = CharMLP(vocab_size=10, context=4)
    np.testing.assert_array_equal(model.window([[7, 8]], pad_id=5), [[5, 5, 7, 8]])
    np.testing.assert_array_equal(model.window([[1, 2, 3, 4, 5, 6]]), [[3, 4, 5, 6]])


def test_learns_well_below_the_unigram_entropy():
    text = load_text("builtin")[:60_000]
    counts = np.array(list(Counter(text).values()), dtype=float)
    p = counts / counts.sum()
    entropy = -(p * np.log(p)).sum()                # nats/char of a model blind to the context
    tok = CharTokenizer.from_text(text)
    ids = np.array(tok.encode(text))
    train_ids, val_ids = ids[:54_000], ids[54_000:]
    model = CharMLP(tok.vocab_size, context=6, n_embd=12, n_hidden=96, seed=0)
    with np.errstate(all="raise"):
        before = fit(model, train_ids, val_ids, steps=1, eval_every=1).val_loss
        assert before == pytest.approx(math.log(tok.vocab_size), abs=0.3)   # starts near uniform
        fit(model, train_ids, val_ids, steps=1200, batch_size=64, lr=0.5, eval_every=1200,
            rng=np.random.default_rng(0))
    # The validation loss, recomputed here from the weights over every window.
    x, y = windows(val_ids, 6, np.arange(len(val_ids) - 6))
    z = numpy_logits(model, x)
    z -= z.max(axis=1, keepdims=True)
    val_loss = np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y])
    assert entropy > 3.0
    assert val_loss < entropy - 0.6, f"val loss {val_loss:.3f} vs unigram entropy {entropy:.3f}"


def test_sampling_follows_the_softmax_at_a_temperature():
    # Zero output weights: the logits are the output bias, whatever the context.
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    model = CharMLP(vocab_size=4, context=2, n_embd=2, n_hidden=3)
    model.head.weight.data[:] = 0
    model.head.bias.data[:] = np.log(probs)
    n = 40_000
    start = np.zeros((n, 1), dtype=np.int64)
    for temperature, top_k, top_p in [(1.0, None, None), (0.5, None, None), (2.0, None, None),
                                      (1.0, 2, None), (1.0, None, 0.7)]:
        drawn = model.generate(start, 1, temperature=temperature, top_k=top_k, top_p=top_p, seed=0)[:, 1]
        expected = probs ** (1 / temperature)
        if top_k or top_p:  # both settings keep the two most likely here: 0.5 + 0.3 reaches 0.7
            expected[2:] = 0
        expected /= expected.sum()
        np.testing.assert_allclose(np.bincount(drawn, minlength=4) / n, expected, atol=0.01)
    greedy = model.generate(start[:3], 2, temperature=0)[:, 1:]
    assert (greedy == 0).all()                       # temperature 0: always the most likely
    with pytest.raises(sl.ScratchError, match="temperature"):
        model.generate(start, 1, temperature=-1)


def test_generate_is_seeded_and_greedy_follows_the_scores():
    model = CharMLP(vocab_size=9, context=3, n_embd=4, n_hidden=8, seed=4)
    model.head.weight.data *= 20
    a = model.generate([[1, 2]], 20, temperature=1.0, seed=7)
    b = model.generate([[1, 2]], 20, temperature=1.0, seed=7)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (1, 22) and a[0, :2].tolist() == [1, 2] and a.max() < 9
    greedy = model.generate([[1, 2]], 5, temperature=0, pad_id=3)[0].tolist()
    seq = [3, 1, 2]                                  # padded on the left to the context
    for _ in range(5):
        seq.append(int(numpy_logits(model, np.array([seq[-3:]])).argmax()))
    assert greedy == seq[1:]


def test_save_load_round_trip_with_tokenizer(tmp_path):
    tok = CharTokenizer.from_text("hello world, hello leaves\n")
    model = CharMLP(tok.vocab_size, context=5, n_embd=3, n_hidden=6, seed=3)
    sl.save(model, tmp_path / "cm", tokenizer=tok)
    back = sl.load(tmp_path / "cm")
    back_tok = sl.checkpoint.load_tokenizer(tmp_path / "cm")
    ids = np.array([tok.encode("hello"), tok.encode("world")])
    assert isinstance(back, CharMLP) and back.context == 5
    np.testing.assert_array_equal(back(ids).data, model(ids).data)
    assert back_tok.encode("hello leaves") == tok.encode("hello leaves")


# ---- command line -----------------------------------------------------------------------------
def test_cli_train_then_generate(tmp_path, capsys):
    from scratchllm.cli import main

    data = tmp_path / "leaves.txt"
    data.write_text("the leaf is green and the flower is red.\n" * 50)
    out = tmp_path / "cm"
    assert main(["charmlp", "train", "--data", str(data), "--steps", "200", "--hidden", "32", "--context", "4",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    entropy = float(re.search(r"unigram entropy (\d+\.\d+)", printed)[1])
    val = float(re.search(r"val loss (\d+\.\d+) nats/char", printed)[1])
    assert val < entropy - 1.0
    assert sl.load(out).context == 4

    samples = []
    for _ in range(2):
        assert main(["charmlp", "generate", "--weights", str(out), "--prompt", "the ", "--length", "40",
                     "--seed", "3"]) == 0
        samples.append(capsys.readouterr().out.rstrip("\n"))
    assert samples[0] == samples[1] and samples[0].startswith("the ") and len(samples[0]) == 44
    assert set(samples[0]) <= set(data.read_text())


def test_cli_generate_errors(tmp_path, capsys):
    from scratchllm.cli import main

    assert main(["charmlp", "generate", "--weights", str(tmp_path / "none")]) == 2
    assert main(["charmlp", "train", "--context", "zero"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "does not exist" in err[0] and "--context must be an integer" in err[1]
