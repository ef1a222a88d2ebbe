"""Batches for training: random windows of a token stream, padded sentence batches.

Randomness comes only from the ``numpy.random.Generator`` passed in, so a run
can save and restore it and replay the same batches.
"""
from __future__ import annotations

import numpy as np

from ..errors import ScratchError


def get_batch(tokens, batch_size: int, block_size: int, rng: np.random.Generator):
    """B random windows of a 1-D token array (a memmap works): x (B, T), y = x shifted by one."""
    n = len(tokens)
    if n <= block_size:
        raise ScratchError(f"the token stream has {n} tokens, too few for block size {block_size}: "
                           "use more text or a smaller block size")
    starts = rng.integers(0, n - block_size, size=batch_size)                  # (B,)
    idx = starts[:, None] + np.arange(block_size + 1)                          # (B, T+1)
    # One gather reads only the needed windows, even from a memmap on disk.
    window = np.asarray(tokens[idx], dtype=np.int64)                           # (B, T+1)
    return window[:, :-1], window[:, 1:]


def random_batches(tokens, batch_size: int, block_size: int, rng: np.random.Generator):
    """An endless stream of :func:`get_batch` results."""
    while True:
        yield get_batch(tokens, batch_size, block_size, rng)


def train_val_split(tokens, frac: float = 0.9):
    """First ``frac`` of the stream for training, the rest for validation (views, no copy)."""
    if not 0.0 < frac < 1.0:
        raise ScratchError(f"train fraction must be between 0 and 1, got {frac}")
    cut = int(len(tokens) * frac)
    return tokens[:cut], tokens[cut:]


def pad_batch(seqs, pad_id: int):
    """Sequences of ids -> (array (B, T_max) int64 padded with ``pad_id``, lengths (B,) int64)."""
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)                 # (B,)
    out = np.full((len(seqs), int(lengths.max(initial=0))), pad_id, dtype=np.int64)
    for row, s in zip(out, seqs):
        row[:len(s)] = s
    return out, lengths


def length_grouped_batches(src_lens, tgt_lens, max_tokens: int, rng: np.random.Generator | None = None,
                           shuffle: bool = True) -> list[list[int]]:
    """Example indices grouped by similar length, each batch within a token budget.

    For every batch, count × max source length and count × max target length
    (the padded sizes) are both at most ``max_tokens``. Every index appears in
    exactly one batch. With ``shuffle``, equal lengths are ordered randomly and
    the batches come in random order, so each epoch differs.
    """
    src_lens, tgt_lens = np.asarray(src_lens, np.int64), np.asarray(tgt_lens, np.int64)
    if src_lens.shape != tgt_lens.shape or src_lens.ndim != 1:
        raise ScratchError(f"source and target lengths differ in shape: {src_lens.shape} vs {tgt_lens.shape}")
    too_long = np.flatnonzero(np.maximum(src_lens, tgt_lens) > max_tokens)
    if too_long.size:
        i = int(too_long[0])
        raise ScratchError(f"example {i} has {src_lens[i]} source / {tgt_lens[i]} target tokens, more than "
                           f"max_tokens={max_tokens}: raise max_tokens or drop long pairs")
    if shuffle and rng is None:
        raise ScratchError("length_grouped_batches(shuffle=True) needs an rng")
    order = rng.permutation(len(src_lens)) if shuffle else np.arange(len(src_lens))
    # Stable sort by (source, target) length; the permutation breaks ties randomly.
    order = order[np.lexsort((tgt_lens[order], src_lens[order]))]
    batches = _pack(order, src_lens, tgt_lens, max_tokens)
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def _pack(order, src_lens, tgt_lens, max_tokens):
    """Greedily fill batches in the given order while the padded size fits."""
    batches, cur, max_len = [], [], 0
    for i in order.tolist():
        longest = max(max_len, int(src_lens[i]), int(tgt_lens[i]))
        if cur and longest * (len(cur) + 1) > max_tokens:
            batches.append(cur)
            cur, longest = [], max(int(src_lens[i]), int(tgt_lens[i]))
        cur.append(i)
        max_len = longest
    if cur:
        batches.append(cur)
    return batches
