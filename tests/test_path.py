"""`scratchllm path` on a tiny budget: one row per model of the path, finite losses in nats and bits,
the bigram row's loss equal to counts made by hand here, and a sample from each."""
import math
import re
from collections import Counter

import pytest

from scratchllm.cli import main

WORDS = "the cat sat on the mat and the dog ran to the cat while a bird sang in the tree over them".split()


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    import random

    r = random.Random(0)
    text = "\n".join(" ".join(r.choice(WORDS) for _ in range(r.randint(4, 12))) for _ in range(600)) + "\n"
    path = tmp_path_factory.mktemp("path") / "text.txt"
    path.write_text(text)
    return path


def bigram_reference(text):
    """Add-one bigram loss on the last 10% of the characters, from counts on the first 90%."""
    chars = sorted(set(text))
    cut = int(len(text) * 0.9)
    train, val = text[:cut], text[cut:]
    pairs = Counter(zip(train, train[1:]))
    firsts = Counter(train[:-1])
    V = len(chars)
    return -sum(math.log((pairs[(a, b)] + 1) / (firsts[a] + V)) for a, b in zip(val, val[1:])) / (len(val) - 1)


def test_one_row_per_model_with_finite_losses(text_file, capsys):
    assert main(["path", "--data", str(text_file), "--minutes", "0.04", "--sample-chars", "30", "--threads", "1"]) == 0
    out, err = capsys.readouterr()
    rows = re.findall(r"^  (\S.*?) {2,}(\S.*?) {2,}([\d,]+) +([\d,–]+) +([\d.]+) +([\d.]+)$", out, re.M)
    names = [r[0] for r in rows]
    assert len(rows) == 5, out
    assert names[0] == "bigram counts" and names[1] == "CharMLP" and names[2].startswith("GPT, context 1")
    assert names[3].startswith("small GPT") and names[4].startswith("larger GPT")
    for r in rows:
        nats, bits = float(r[4]), float(r[5])
        assert math.isfinite(nats) and 0 < nats < 10
        assert bits == pytest.approx(nats / math.log(2), abs=2e-3)
    assert float(rows[0][4]) == pytest.approx(bigram_reference(text_file.read_text()), abs=6e-4)
    # the trained models took steps; the counts did not
    assert rows[0][3] == "–" and all(int(r[3].replace(",", "")) >= 1 for r in rows[1:])
    samples = out[out.index("A sample from each"):].splitlines()[1:]
    assert len(samples) == 5
    assert "training the CharMLP" in err


def test_gpt_val_loss_scores_every_character_once():
    """The GPT's validation loss over windows equals the mean of −ln p taken position by position."""
    import numpy as np

    from scratchllm.models import GPT, GPTConfig
    from scratchllm.path import gpt_val_loss
    from scratchllm.tensor import no_grad

    model = GPT(GPTConfig(vocab_size=7, block_size=4, n_layer=1, n_head=1, n_embd=8), seed=0)
    ids = np.random.default_rng(0).integers(0, 7, size=23)
    got = gpt_val_loss(model, ids, 4, batch=2)
    losses = []
    with no_grad():
        for w in range(5):  # 22 predictions → 5 full windows of 4
            x = ids[w * 4:w * 4 + 4][None]
            logits = model(x).data[0].astype(np.float64)
            logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
            losses += [-logp[t, ids[w * 4 + t + 1]] for t in range(4)]
    assert got == pytest.approx(np.mean(losses), rel=1e-5)
