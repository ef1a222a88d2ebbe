"""The path from counting to a GPT, in numbers: each model trained on the same text for the same time,
scored on the same held-out characters.

1. bigram counts: how often each character followed the previous one (add-one smoothing), no training;
2. the CharMLP: a fixed window of characters, embeddings, a tanh layer (``models/charmlp.fit``);
3. a GPT whose attention cannot help: context 1, each token sees only itself (``train.Trainer``);
4. a small GPT and 5. a larger one, with a context of 64 characters (``train.Trainer``).

Every model uses the same character vocabulary and the same split (the first 90 % of the text to
train, the last 10 % to validate). The validation loss is the mean of −ln p(next character) over the
validation text, in nats; divided by ln 2, in bits per character. The trainers are the library's own:
``charmlp.fit`` with a time budget, and ``train.Trainer`` with its run's length set, after its first
steps, to the steps that fit in the budget (so its learning-rate cosine ends when the time does).
"""
from __future__ import annotations

import contextlib
import io
import math
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .data import load_text, train_val_split
from .errors import ScratchError
from .tensor import no_grad

CALIBRATE = 5  # GPT steps timed before the run's length is set
SMALL = dict(n_layer=2, n_head=2, n_embd=64)  # train's "tiny" preset
LARGER = dict(n_layer=4, n_head=4, n_embd=128)  # train's default shape
CONTEXT = 64


@dataclass
class PathRow:
    name: str
    what: str  # what the model sees of the past
    parameters: int
    steps: int | None  # training steps (None: counted, not trained)
    seconds: float
    val_loss: float  # nats per character
    sample: str

    @property
    def bits(self) -> float:
        return self.val_loss / math.log(2)


# ---- 1. counts -----------------------------------------------------------------------------------
def bigram_counts(train_ids, vocab_size: int) -> np.ndarray:
    """(V, V) probabilities of the next character given the previous one: (count + 1) / (row total + V)."""
    counts = np.ones((vocab_size, vocab_size))
    np.add.at(counts, (train_ids[:-1], train_ids[1:]), 1)
    return counts / counts.sum(axis=1, keepdims=True)


def bigram_loss(probs, ids) -> float:
    return float(-np.mean(np.log(probs[ids[:-1], ids[1:]])))


def bigram_sample(probs, first: int, n: int, rng) -> list[int]:
    out = [first]
    for _ in range(n):
        out.append(int(rng.choice(len(probs), p=probs[out[-1]])))
    return out[1:]


# ---- 3-5. GPTs ---------------------------------------------------------------------------------
def gpt_val_loss(model, val_ids, block_size: int, batch: int = 64) -> float:
    """Mean −ln p over the validation text cut into windows of ``block_size`` (each position predicted
    from the earlier ones of its window), every character but the first scored once."""
    n = (len(val_ids) - 1) // block_size
    x = np.asarray(val_ids[:n * block_size]).reshape(n, block_size)  # (n, T)
    y = np.asarray(val_ids[1:n * block_size + 1]).reshape(n, block_size)  # (n, T)
    total = 0.0
    model.eval()
    with no_grad():
        for lo in range(0, n, batch):
            _, loss = model(x[lo:lo + batch], y[lo:lo + batch])
            total += float(loss.data) * len(x[lo:lo + batch])
    return total / n


def _timed_trainer(cfg, seconds: float):
    """``train.Trainer`` stopped by a clock: after CALIBRATE steps its length (and its cosine, and a
    warmup of a tenth) is set to the steps the budget holds."""
    from .optim import CosineWithWarmup
    from .train import Trainer

    class TimedTrainer(Trainer):
        def after_step(self, loss, tokens, dt):
            if self.step == CALIBRATE:
                per_step = (time.perf_counter() - self.t0) / self.step
                total = max(self.step + 1, int(seconds / per_step))
                warmup = max(1, min(self.cfg.warmup_iters, total // 10))
                self.cfg = replace(self.cfg, max_iters=total, lr_decay_iters=total, warmup_iters=warmup)
                self.schedule = CosineWithWarmup(self.cfg.lr, self.cfg.min_lr, warmup, total)

        def stop_reason(self, stop, start):
            if self.step >= 1 and time.perf_counter() - self.t0 > seconds:  # at least one step
                return "the time is up"
            return super().stop_reason(stop, start)

    trainer = TimedTrainer(cfg)
    trainer.t0 = time.perf_counter()
    return trainer


def train_gpt(data, data_dir, out: Path, seconds: float, block_size: int, shape: dict, seed: int, threads: int):
    """(trainer, seconds) of a GPT trained by train.Trainer for ``seconds``."""
    from .train import TrainConfig

    cfg = TrainConfig(data=str(data), data_dir=data_dir or "", out=str(out), block_size=block_size,
                      max_iters=10 ** 9, eval_interval=10 ** 9, eval_iters=1, sample_tokens=0, snapshots=0,
                      progress=False, seed=seed, threads=threads, **shape)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the trainer's own evaluation lines
        trainer = _timed_trainer(cfg, seconds)
        trainer.fit(echo=lambda *a: None)
    return trainer, time.perf_counter() - start


# ---- the whole path --------------------------------------------------------------------------------
def run_path(data="builtin", minutes: float = 4.0, data_dir=None, seed: int = 0, threads: int = 2,
             sample_chars: int = 80, echo=print, out=None) -> tuple[dict, list[PathRow]]:
    """Train each model of the path on ``data`` for ``minutes`` / 4 (the counts take no time); return
    (about the data, one PathRow per model). ``echo`` hears what is being trained."""
    from .generate import generate
    from .models.charmlp import CharMLP, evaluate, fit, pad_id_for
    from .tokenizers import CharTokenizer

    text = load_text(data, data_dir)
    tok = CharTokenizer.from_text(text)
    ids = np.asarray(tok.encode(text))
    train_ids, val_ids = train_val_split(ids, 0.9)
    if len(val_ids) <= CONTEXT + 1:
        raise ScratchError(f"the text has {len(text):,} characters: too few to hold out 10% (more than "
                           f"{CONTEXT + 1}) for validation; give a longer text")
    V = tok.vocab_size
    budget = 60 * minutes / 4
    start_id = pad_id_for(tok)
    info = {"data": str(data), "chars": len(text), "vocab": V, "val_chars": len(val_ids), "seconds_each": budget,
            "uniform": math.log(V)}
    rows = []

    def decoded(seq) -> str:
        return tok.decode([int(i) for i in seq])

    echo("counting bigrams")
    t0 = time.perf_counter()
    probs = bigram_counts(train_ids, V)
    rng = np.random.default_rng(seed)
    rows.append(PathRow("bigram counts", "the previous character", V * V, None, time.perf_counter() - t0,
                        bigram_loss(probs, val_ids), decoded(bigram_sample(probs, start_id, sample_chars, rng))))

    echo(f"training the CharMLP for {budget:.0f} s")
    mlp = CharMLP(V, 8, 16, 256, rng=np.random.default_rng(seed))  # charmlp train's defaults
    t0 = time.perf_counter()
    with np.errstate(over="ignore", invalid="ignore"):
        res = fit(mlp, train_ids, val_ids, steps=10 ** 9, batch_size=64, lr=0.5, min_lr=0.05, eval_every=10 ** 9,
                  rng=np.random.default_rng(seed), seconds=budget)
    seconds = time.perf_counter() - t0
    sample = mlp.generate([[start_id]], sample_chars, temperature=1.0, seed=seed, pad_id=start_id)[0, 1:]
    rows.append(PathRow("CharMLP", f"the previous {mlp.context} characters", mlp.num_parameters(), res.steps,
                        seconds, evaluate(mlp, val_ids), decoded(sample)))

    gpts = [("GPT, context 1", "only the character itself: attention has nothing else", 1, SMALL),
            ("small GPT", f"the previous {CONTEXT} characters, by attention", CONTEXT, SMALL),
            ("larger GPT", f"the previous {CONTEXT} characters, by attention", CONTEXT, LARGER)]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(out) if out else Path(tmp)
        for i, (name, what, block, shape) in enumerate(gpts):
            shape_text = f"{shape['n_layer']} layers, width {shape['n_embd']}"
            echo(f"training the {name} ({shape_text}) for {budget:.0f} s")
            trainer, seconds = train_gpt(data, data_dir, base / f"gpt{i}", budget, block, shape, seed, threads)
            if not np.array_equal(trainer.val_ids, val_ids) or trainer.tokenizer.vocab_size != V:
                raise AssertionError("the GPT's validation text differs from the other models'")
            model = trainer.model
            sample = generate(model, [[start_id]], sample_chars, temperature=1.0, seed=seed)[0, 1:]
            rows.append(PathRow(f"{name} ({shape_text})", what, model.num_parameters(), trainer.step, seconds,
                                gpt_val_loss(model, val_ids, block), decoded(sample)))
    return info, rows


def format_table(info: dict, rows: list[PathRow]) -> str:
    lines = [f"The path on {info['data']}: {info['chars']:,} characters, {info['vocab']} distinct; validation: "
             f"the last 10% ({info['val_chars']:,} characters); {info['seconds_each']:.0f} s of training each.",
             f"Guessing every character equally likely scores ln {info['vocab']} = {info['uniform']:.3f} nats "
             f"({info['uniform'] / math.log(2):.2f} bits) per character.",
             ""]
    w = max(len(r.name) for r in rows) + 2
    lines.append(f"  {'model':<{w}}{'sees':<52}{'parameters':>11}{'steps':>8}{'val loss':>10}{'bits/char':>11}")
    for r in rows:
        steps = "–" if r.steps is None else f"{r.steps:,}"
        lines.append(f"  {r.name:<{w}}{r.what:<52}{r.parameters:>11,}{steps:>8}{r.val_loss:>10.3f}{r.bits:>11.3f}")
    lines += ["", "A sample from each (temperature 1, the same seed):"]
    for r in rows:
        lines.append(f"  {r.name:<{w}}{r.sample!r}")
    return "\n".join(lines)
