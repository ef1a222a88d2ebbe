"""One step of gradient descent lowers the loss: `explain gpt --target` and the explore page's "take one
step" choose a learning rate whose step lowers the loss, show the loss along the step's direction, and
say in words when a chosen rate raises it. The model is a small GPT trained a few hundred steps; texts
and targets are drawn at random. The classifier's step (`explain classifier --label`) goes down too.
"""
import copy
import re

import numpy as np
import pytest

import scratchllm as sl
from scratchllm import train as T
from scratchllm.cli import main
from scratchllm.models.classifier import train_classifier
from scratchllm.tensor import no_grad

from test_explore_http import Client, serving

STEP = re.compile(r"^Step 15\. One SGD step with lr (\S+), .* loss ([0-9.]+) → ([0-9.]+)$", re.M)
ROW = re.compile(r"^ {4}\s*([0-9.e+-]+)\s+([0-9.]+|nan|inf)\s", re.M)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A character GPT on the built-in corpus, 250 steps: it has learned enough that a step of the
    old default (lr 0.1) can overshoot."""
    d = tmp_path_factory.mktemp("step")
    cfg = T.TrainConfig(data="builtin", out=str(d / "run"), n_layer=2, n_head=2, n_embd=32, block_size=32,
                        batch_size=8, max_iters=250, eval_interval=250, eval_iters=2, warmup_iters=20, lr=3e-3,
                        progress=False, sample_tokens=0, threads=1)
    T.train(cfg, echo=lambda *a: None)
    return d / "run"


@pytest.fixture(scope="module")
def corpus():
    from scratchllm.data.corpus import builtin_text

    return builtin_text()


def random_examples(corpus, tokenizer, n, seed):
    """(text, target) pairs: a random stretch of the corpus and a random character of the vocabulary."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(3, 30))
        start = int(rng.integers(0, len(corpus) - length))
        text = corpus[start:start + length]
        target = tokenizer.decode([int(rng.integers(0, tokenizer.vocab_size))])
        if text.strip() and target.strip() == target and target:
            out.append((text, target))
    return out


def explain(capsys, ckpt, text, target, *extra):
    code = main(["explain", "gpt", "--ckpt", str(ckpt), "--text", text, "--target", target, *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def reference_loss_after(model, ids, target, lr):
    """One SGD step written out here: w ← w − lr·g on a copy, g from the model's own backward."""
    model = copy.deepcopy(model)
    x = np.asarray([ids], dtype=np.int64)
    y = np.full_like(x, -100)
    y[0, -1] = target
    _, loss = model(x, y)
    loss.backward()
    for p in model.parameters():
        p.data = (p.data.astype(np.float64) - lr * p.grad.astype(np.float64)).astype(p.data.dtype)
    with no_grad():
        return float(model(x, y)[1].data)


def test_the_default_step_lowers_the_loss_in_explain_gpt(run_dir, corpus, capsys):
    model, tok = sl.load(run_dir / "ckpt"), sl.checkpoint.load_tokenizer(run_dir / "ckpt")
    examples = random_examples(corpus, tok, 6, seed=0)
    assert len(examples) >= 4
    parsed = 0
    for text, target in examples:
        out = explain(capsys, run_dir / "ckpt", text, target)
        m = STEP.search(out)
        assert m, out[-2000:]
        lr, before, after = float(m[1]), float(m[2]), float(m[3])
        parsed += 1
        assert after < before, (text, target, out[-1500:])
        assert "lowers the loss" in out
        # the printed loss after is that of a step written out independently
        ids = tok.encode(text)
        assert after == pytest.approx(reference_loss_after(model, ids, tok.encode(target)[0], lr), rel=2e-5)
        # the curve: one row per learning rate of the scan, and the chosen one on it
        curve = {float(a): float(b) for a, b in ROW.findall(out[out.index("Step 14."):out.index("Step 15.")])}
        on_curve = [loss for x, loss in curve.items() if x == pytest.approx(lr, rel=2e-3)]
        assert len(curve) == 13 and on_curve == [pytest.approx(after, abs=1e-6)]
    assert parsed == len(examples)


def test_the_curve_starts_as_the_gradient_says(run_dir):
    """For a tiny rate the loss falls by lr × |g|² (first order): the curve's first point and its |g|."""
    from scratchllm.explain.step import loss_curve

    model = sl.load(run_dir / "ckpt")
    x = np.asarray([[5, 9, 12, 7, 3]], dtype=np.int64)
    y = np.asarray([[9, 12, 7, 3, 20]], dtype=np.int64)
    curve = loss_curve(model, lambda m: m(x, y)[1], lrs=[1e-4])
    g2 = 0.0
    twin = copy.deepcopy(model)
    twin(x, y)[1].backward()
    g2 = sum(float(np.sum(p.grad.astype(np.float64) ** 2)) for p in twin.parameters())
    assert curve.grad_norm == pytest.approx(np.sqrt(g2), rel=1e-5)
    drop = curve.loss_before - curve.losses[0]
    assert drop == pytest.approx(1e-4 * g2, rel=0.1)


def test_a_rate_that_raises_the_loss_is_said_so(run_dir, corpus, capsys):
    """Find, on the printed curve, a rate whose step raises the loss; asking for it prints why."""
    found = 0
    tok = sl.checkpoint.load_tokenizer(run_dir / "ckpt")
    for text, _ in random_examples(corpus, tok, 8, seed=1):
        out = explain(capsys, run_dir / "ckpt", text, " ")
        before = float(STEP.search(out)[2])
        rows = [(float(a), float(b)) for a, b in ROW.findall(out[out.index("Step 14."):out.index("Step 15.")])]
        worse = [lr for lr, loss in rows if loss > before]
        if not worse:
            continue
        out = explain(capsys, run_dir / "ckpt", text, " ", "--lr", repr(worse[0]))
        m = STEP.search(out)
        assert float(m[3]) > float(m[2])
        assert "raises the loss" in out and "overshoots" in out and "straight line" in out
        found += 1
        if found == 2:
            break
    assert found == 2


def test_the_pages_step_lowers_the_loss(run_dir, corpus):
    with serving(run_dir) as (explorer, url):
        client = Client(url)
        examples = random_examples(corpus, explorer.tokenizer, 5, seed=2)
        for i, (text, target) in enumerate(examples):
            body = {"text": text} if i % 2 and len(explorer.tokenizer.encode(text)) > 1 else {"text": text,
                                                                                             "target": target}
            r = client.post("step", body)
            assert r["lr_chosen"] is True
            assert r["loss_after"] < r["loss_before"], (body, r["curve"])
            points = {p["lr"]: p["loss"] for p in r["curve"]["points"]}
            assert len(points) == 13 and points[r["lr"]] == pytest.approx(r["loss_after"], rel=1e-6)
            assert r["curve"]["loss_before"] == pytest.approx(r["loss_before"], rel=1e-6)
            assert "lowers the loss" in r["verdict"]
        # a rate of the user's is taken as given, and put on the curve
        r = client.post("step", {"text": examples[0][0], "target": examples[0][1], "lr": 0.07})
        assert r["lr"] == 0.07 and r["lr_chosen"] is False
        assert 0.07 in [p["lr"] for p in r["curve"]["points"]]
        client.post("step", {"text": "the", "target": "e", "lr": 0}, status=400)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_classifiers_step_goes_down(seed, tmp_path, capsys):
    model, _ = train_classifier(seed=seed, hidden=(3,))
    ckpt = sl.save(model, tmp_path / "clf")
    rng = np.random.default_rng(seed)
    for _ in range(3):
        raw = [str(round(float(v), 1)) for v in rng.uniform([0, 0, 0, 1], [255, 255, 255, 40])]
        label = str(rng.choice(["leaf", "flower"]))
        code = main(["explain", "classifier", *raw, "--weights", str(ckpt), "--label", label])
        out, err = capsys.readouterr()
        assert code == 0, err
        m = re.search(r"loss: ([0-9.]+) → ([0-9.]+)  \((lower)\)", out)  # "lower" from the unrounded losses
        assert m and float(m[2]) <= float(m[1]), out[-800:]
