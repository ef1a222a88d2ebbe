"""Sampling text from a language model: temperature, top-k, top-p, KV cache.

A model maps ids (B, T) to logits (B, T, V); generation repeatedly turns the
logits of the last position into a probability distribution, draws one token
per row, appends it and goes on.

* ``temperature`` divides the logits: < 1 sharpens the distribution, > 1
  flattens it, 0 means greedy (always the most likely token, no randomness).
* ``top_k`` keeps the k most likely tokens (ties with the k-th are kept).
* ``top_p`` (nucleus sampling) keeps the smallest set of most likely tokens
  whose probabilities add up to at least p, always including the top one.
* A token is drawn by inverse CDF: one uniform number u per row, the first
  token whose cumulative probability exceeds u · total. So every step takes
  exactly one draw per row from the generator, whatever the path (with or
  without the cache): the same seed gives the same tokens.

**KV cache.** Without a cache every step runs the model over the whole
context again: O(T²) work per token for attention and O(T) for the rest.
With a cache the prompt is run once ("prefill"); afterwards each step feeds
only the newest token, whose queries attend to the stored keys and values of
all earlier tokens.

**Past block_size.** A GPT with learned positions knows only positions
0 … block_size − 1, so the context is a sliding window of the last block_size
tokens (this is what the uncached path feeds the model). Once the window
slides, *every* token sits at a new position, so every stored key and value is
stale: the only exact continuation is to recompute the whole window, which is
what we do from then on (the same cost as without the cache). Results are
therefore identical with and without the cache at every length; the cache's
speed-up applies to the first block_size tokens of a sequence. (Shifting the
cached keys instead would be faster but would silently change the model's
outputs, so it is not done.)
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from .backend import to_numpy
from .errors import ScratchError
from .tensor import Tensor, no_grad

__all__ = [
    "generate",
    "sample_next",
    "distribution",
    "top_k_filter",
    "top_p_filter",
    "probabilities",
    "sample_from_probs",
    "check_sampling_args",
]


# ---- argument checks --------------------------------------------------------
def check_sampling_args(max_new_tokens=0, temperature=1.0, top_k=None, top_p=None):
    """Raise :class:`ScratchError` with a clear message for a bad setting."""
    if isinstance(max_new_tokens, bool) or int(max_new_tokens) != max_new_tokens or max_new_tokens < 0:
        raise ScratchError(f"max_new_tokens must be a whole number ≥ 0, not {max_new_tokens!r}")
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise ScratchError(f"temperature must be a number ≥ 0, not {temperature!r}") from None
    if not math.isfinite(t) or t < 0:
        raise ScratchError(f"temperature must be a finite number ≥ 0 (0 = greedy), not {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1):
        raise ScratchError(f"top_k must be a whole number ≥ 1 (or None for no limit), not {top_k!r}")
    if top_p is not None:
        try:
            p = float(top_p)
        except (TypeError, ValueError):
            raise ScratchError(f"top_p must be a number in (0, 1], not {top_p!r}") from None
        if not (0 < p <= 1):
            raise ScratchError(f"top_p must be in (0, 1] (1 keeps every token), not {top_p!r}")


# ---- filters: pure functions on logits (..., V) ------------------------------
def top_k_filter(logits, k):
    """Logits with every token below the k-th largest set to −inf.

    Tokens tied with the k-th largest are kept (as PyTorch/HF do), so a row
    may keep more than k tokens only when there are exact ties. k ≥ V keeps all.
    """
    logits = np.asarray(logits)
    V = logits.shape[-1]
    if k is None or k >= V:
        return logits.copy()
    k = int(k)
    kth = np.partition(logits, V - k, axis=-1)[..., V - k: V - k + 1]  # (..., 1) the k-th largest
    return np.where(logits < kth, -np.inf, logits)


def top_p_filter(logits, p):
    """Logits with every token outside the nucleus set to −inf.

    The nucleus is the smallest set of most likely tokens whose probabilities
    (softmax of ``logits``) sum to at least ``p``; the most likely token is
    always in it. Among equal probabilities the lower token id comes first.
    """
    logits = np.asarray(logits)
    if p is None or p >= 1:
        return logits.copy()
    probs = probabilities(logits)  # (..., V) float64
    order = np.argsort(-probs, axis=-1, kind="stable")  # most likely first
    sorted_p = np.take_along_axis(probs, order, axis=-1)
    before = np.cumsum(sorted_p, axis=-1) - sorted_p  # mass of the more likely tokens
    keep_sorted = before < p  # the top token has before = 0 < p: always kept
    keep = np.empty_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=-1)
    return np.where(keep, logits, -np.inf)


def probabilities(logits):
    """softmax over the last axis in float64; −inf logits get probability 0."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sample_from_probs(probs, u):
    """Inverse-CDF draw: for each row the first token whose cumulative
    probability exceeds ``u`` × (row total). probs (B, V), u (B,) in [0, 1) -> (B,).

    A token with probability 0 is never chosen."""
    probs = np.asarray(probs, dtype=np.float64)
    cdf = np.cumsum(probs, axis=-1)  # (B, V)
    x = np.asarray(u, dtype=np.float64) * cdf[:, -1]  # (B,)
    idx = (cdf <= x[:, None]).sum(axis=-1)  # first index with cdf > x
    # rounding could push x up to the total: fall back to the last possible token
    last = probs.shape[-1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=-1)
    return np.minimum(idx, last)


def distribution(logits, temperature=1.0, top_k=None, top_p=None):
    """The distribution a token is drawn from, float64 (..., V): softmax of
    logits / temperature after top-k, then top-p; temperature 0 puts all of it
    on the most likely token."""
    logits = np.asarray(logits)
    if temperature == 0:
        return (np.arange(logits.shape[-1]) == np.argmax(logits, axis=-1)[..., None]).astype(np.float64)
    z = logits.astype(np.float64) / temperature
    if top_k is not None:
        z = top_k_filter(z, top_k)
    if top_p is not None:
        z = top_p_filter(z, top_p)
    return probabilities(z)


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, rng=None):
    """One token per row from logits (B, V) -> int64 (B,), drawn from :func:`distribution`.

    temperature 0 takes the argmax and draws nothing; otherwise exactly one
    uniform number per row is drawn from ``rng`` (a ``numpy.random.Generator``).
    """
    logits = np.asarray(logits)
    if temperature == 0:
        return np.argmax(logits, axis=-1).astype(np.int64)
    u = rng.random(logits.shape[0])  # (B,) one draw per row
    return sample_from_probs(distribution(logits, temperature, top_k, top_p), u).astype(np.int64)


# ---- the loop -----------------------------------------------------------------
def _last_logits(model, ids, cache=None):
    out = model(ids, cache=cache) if cache is not None else model(ids)
    data = out.data if isinstance(out, Tensor) else out
    return to_numpy(data[:, -1, :])  # (B, V)


def _context_size(model) -> int:
    """How many tokens the model can look at: a language model's context_length (a GPT's block_size)."""
    size = (getattr(model, "context_length", None) or getattr(getattr(model, "config", None), "block_size", None)
            or getattr(model, "block_size", None))
    if size is None:
        raise ScratchError(f"a {type(model).__name__} has no block_size: it cannot generate text")
    return int(size)


def generate(model, ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None,
             use_cache=True, on_token=None, rng=None):
    """Continue ``ids`` by ``max_new_tokens`` sampled tokens.

    ids: int array (B, T) (or (T,) for one sequence) -> int64 array
    (B, T + max_new_tokens) (or (T + max_new_tokens,)): the prompt followed by
    the new tokens. Randomness comes only from ``rng`` (a
    ``numpy.random.Generator``) or else a new generator seeded with ``seed``.
    ``on_token(new)`` is called after each step with the new tokens, (B,).
    The model runs in eval mode without a graph; its mode is restored after.
    A prompt longer than the model's block_size is seen through its last
    block_size tokens (with a warning); the returned array keeps all of it.
    """
    check_sampling_args(max_new_tokens, temperature, top_k, top_p)
    if rng is not None and seed is not None:
        raise ScratchError("give either seed or rng, not both")
    if rng is None:
        rng = np.random.default_rng(seed)
    ids = np.asarray(to_numpy(ids.data if isinstance(ids, Tensor) else ids))
    single = ids.ndim == 1
    if single:
        ids = ids[None]
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ScratchError(f"ids must be integer token ids of shape (B, T), got {ids.dtype} {ids.shape}")
    B, T = ids.shape
    if T == 0:
        raise ScratchError("the prompt is empty: give at least one token")
    block = _context_size(model)
    if T > block:
        warnings.warn(f"prompt of {T} tokens is longer than block_size {block}: "
                      f"the model sees only its last {block} tokens", stacklevel=2)
    max_new_tokens = int(max_new_tokens)
    temperature = float(temperature)

    seq = np.empty((B, T + max_new_tokens), dtype=np.int64)  # prompt + new tokens
    seq[:, :T] = ids
    n = T  # filled so far
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        with no_grad():
            can_cache = use_cache and max_new_tokens > 0 and hasattr(model, "new_cache")
            cache = model.new_cache(B) if can_cache else None
            logits = None
            for step in range(max_new_tokens):
                if logits is None:  # first step: prefill (with a cache) or a full pass
                    logits = _last_logits(model, seq[:, max(0, n - block):n], cache)
                tok = sample_next(logits, temperature, top_k, top_p, rng)  # (B,)
                seq[:, n] = tok
                n += 1
                if on_token is not None:
                    on_token(tok.copy())
                if step == max_new_tokens - 1:
                    break
                if cache is not None and cache.length < block:
                    logits = _last_logits(model, seq[:, n - 1:n], cache)  # one token, O(context)
                else:
                    # no cache, or the window slid: every position moved, recompute the window
                    cache = None
                    logits = _last_logits(model, seq[:, max(0, n - block):n])
    finally:
        model.train(was_training)
    return seq[0] if single else seq
