"""Next-character prediction from a fixed window: the model of Bengio et al. (2003).

    ids (B, T)  --C-->  T vectors of n_embd  --side by side-->  x (B, T·n_embd)
                --tanh(x Hᵀ + d)-->  h (B, n_hidden)  --h Uᵀ + b-->  logits (B, V)

T is the fixed context length: the model sees exactly the last T characters
and scores every character of the vocabulary as the next one; softmax turns
the scores into probabilities. The model works on ids; turning text into ids
is the tokenizer's job (a ``CharTokenizer``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from .. import functional as F
from .. import nn
from ..backend import DEFAULT_DTYPE
from ..errors import ScratchError, loss_not_finite
from ..optim import gradient_descent_step
from ..tensor import Tensor, no_grad


class CharMLP(nn.Module):
    kind = "charmlp"

    def __init__(self, vocab_size: int, context: int = 8, n_embd: int = 16, n_hidden: int = 256,
                 rng=None, seed: int = 0, dtype=DEFAULT_DTYPE):
        if min(vocab_size, context, n_embd, n_hidden) < 1:
            raise ScratchError("vocab_size, context, n_embd and n_hidden must all be positive")
        rng = rng if rng is not None else np.random.default_rng(seed)
        self.vocab_size, self.context, self.n_embd, self.n_hidden = vocab_size, context, n_embd, n_hidden
        self.wte = nn.Embedding(vocab_size, n_embd, rng=rng, dtype=dtype)                   # C: one row per character
        self.fc = nn.Linear(context * n_embd, n_hidden, rng=rng, dtype=dtype)               # H, d
        self.head = nn.Linear(n_hidden, vocab_size, rng=rng, dtype=dtype)                   # U, b
        # Small output weights: the first predictions are near uniform, so the
        # loss starts near log(V) instead of confidently wrong.
        self.head.weight.data *= 0.1
        self.head.bias.data[:] = 0

    def forward(self, ids) -> Tensor:
        """ids (B, context) ints -> logits (B, vocab_size)."""
        ids = np.asarray(ids.data if isinstance(ids, Tensor) else ids)
        if ids.ndim != 2 or ids.shape[1] != self.context:
            raise ScratchError(f"CharMLP takes ids of shape (B, {self.context}), got {ids.shape}")
        B, T = ids.shape
        e = self.wte(ids)                        # (B, T, n_embd)
        x = e.reshape(B, T * self.n_embd)        # (B, T·n_embd): the T embeddings side by side
        h = F.tanh(self.fc(x))                   # (B, n_hidden)
        return self.head(h)                      # (B, V)

    def window(self, ids, pad_id: int = 0) -> np.ndarray:
        """The last ``context`` ids of each row (B, T) -> (B, context), padded on the left."""
        ids = np.atleast_2d(np.asarray(ids, dtype=np.int64))
        if ids.shape[1] >= self.context:
            return ids[:, ids.shape[1] - self.context:]
        pad = np.full((ids.shape[0], self.context - ids.shape[1]), pad_id, dtype=np.int64)
        return np.concatenate([pad, ids], axis=1)

    def generate(self, ids, max_new_tokens: int, temperature: float = 1.0, top_k=None, top_p=None,
                 seed=None, pad_id: int = 0) -> np.ndarray:
        """Continue each row of ``ids`` (B, T) by sampling one character at a
        time -> (B, T + max_new_tokens). A prompt shorter than the context is
        padded with ``pad_id`` on the left. Temperature 0 picks the most likely;
        top_k / top_p keep only the k most likely / the nucleus of mass p."""
        from ..generate import check_sampling_args, sample_next  # sampling lives in its own layer

        check_sampling_args(max_new_tokens, temperature, top_k, top_p)
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        out = np.atleast_2d(np.asarray(ids, dtype=np.int64))
        with no_grad():
            for _ in range(max_new_tokens):
                logits = self(self.window(out, pad_id)).data                          # (B, V)
                nxt = sample_next(logits, temperature, top_k, top_p, rng)             # (B,)
                out = np.concatenate([out, nxt[:, None]], axis=1)
        return out

    # ---- saving -----------------------------------------------------------------
    def config_dict(self) -> dict:
        return {"vocab_size": self.vocab_size, "context": self.context,
                "n_embd": self.n_embd, "n_hidden": self.n_hidden}

    @classmethod
    def from_config(cls, cfg: dict) -> "CharMLP":
        return cls(int(cfg["vocab_size"]), int(cfg["context"]), int(cfg["n_embd"]), int(cfg["n_hidden"]))

    def extra_repr(self):
        return f"vocab_size={self.vocab_size}, context={self.context}, n_embd={self.n_embd}, n_hidden={self.n_hidden}"


def pad_id_for(tokenizer) -> int:
    """The id that fills a window before the text starts: a newline (where
    paragraphs start) if the vocabulary has one, else id 0."""
    try:
        ids = tokenizer.encode("\n")
    except ScratchError:
        return 0
    return ids[0] if len(ids) == 1 else 0


# ---- data and training ----------------------------------------------------------
def windows(ids, context: int, starts) -> tuple[np.ndarray, np.ndarray]:
    """Examples at ``starts``: x = ids[s : s+context] (B, context), y = ids[s+context] (B,)."""
    idx = np.asarray(starts)[:, None] + np.arange(context + 1)     # (B, context+1)
    w = np.asarray(ids)[idx]
    return w[:, :-1], w[:, -1]


def evaluate(model: CharMLP, ids, batch_size: int = 4096) -> float:
    """Mean cross-entropy (nats per character) over every window of ``ids``."""
    n = len(ids) - model.context
    if n < 1:
        raise ScratchError(f"{len(ids)} characters are too few to evaluate a context of {model.context}")
    total = 0.0
    with no_grad():
        for lo in range(0, n, batch_size):
            x, y = windows(ids, model.context, np.arange(lo, min(lo + batch_size, n)))
            total += F.cross_entropy(model(x), y).item() * len(y)
    return total / n


@dataclass
class FitResult:
    history: list = field(default_factory=list)   # {"step", "train_loss", "val_loss"} at each evaluation
    val_loss: float = math.inf
    steps: int = 0  # steps taken


def fit(model: CharMLP, train_ids, val_ids, steps=3000, batch_size=64, lr=0.5, min_lr=0.05,
        eval_every=500, rng=None, optimizer=None, on_step=None, seconds=None) -> FitResult:
    """Mini-batch training on random windows of ``train_ids``.

    Without an ``optimizer`` this is plain gradient descent, as in the paper,
    with the learning rate falling from ``lr`` to ``min_lr`` along a cosine.
    ``on_step(step, loss)`` is called after every step (e.g. a progress bar).
    With ``seconds``, training stops when that time is up (or at ``steps``),
    and the cosine follows the share of the time spent, not of the steps.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    train_ids, val_ids = np.asarray(train_ids), np.asarray(val_ids)
    if len(train_ids) <= model.context:
        raise ScratchError(f"the training text has {len(train_ids)} characters, too few for a context of "
                           f"{model.context}: use more text or a smaller --context")
    params, result, recent = model.parameters(), FitResult(), []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        done = (time.perf_counter() - start) / seconds if seconds else (step - 1) / max(1, steps - 1)
        x, y = windows(train_ids, model.context, rng.integers(0, len(train_ids) - model.context, size=batch_size))
        loss = F.cross_entropy(model(x), y)
        model.zero_grad()
        loss.backward()
        if optimizer is None:
            step_lr = min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(done, 1.0)))
            gradient_descent_step(params, step_lr)
        else:
            optimizer.step()
        recent.append(loss.item())
        if not math.isfinite(recent[-1]):
            raise ScratchError(loss_not_finite(recent[-1], f"step {step}", "nothing saved",
                                               f"Try a smaller learning rate than {lr}."))
        if on_step:
            on_step(step, recent[-1])
        out_of_time = seconds is not None and time.perf_counter() - start >= seconds
        if step % eval_every == 0 or step == steps or out_of_time:
            record = {"step": step, "train_loss": float(np.mean(recent)), "val_loss": evaluate(model, val_ids)}
            result.history.append(record)
            result.val_loss, recent = record["val_loss"], []
        if out_of_time:
            break
    result.steps = step
    return result
