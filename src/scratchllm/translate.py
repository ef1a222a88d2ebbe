"""Translating with an encoder–decoder model: greedy decoding and beam search.

Both run a batch of sentences at once. The encoder runs once per sentence;
the decoder then goes one target token per step, feeding only the newest
token: its self-attention keys and values are cached (preallocated per
layer) and its cross-attention keys and values are computed once per
sentence (see :class:`scratchllm.models.transformer.DecoderCache`). A
sentence that has finished leaves the batch, so the remaining steps cost
only what the unfinished sentences need.

**Scores.** A hypothesis y_1 … y_n (y_n = EOS) scores Σ log p(y_i | y_<i, x).
Longer hypotheses have more negative terms, so beam search (whose finished
candidates have different lengths) divides by GNMT's length penalty
lp(n) = ((5 + n) / 6)^α (Wu et al. 2016), n counting EOS; α = 0.6 by default,
``length_penalty=None`` (or 0) compares raw sums.

**Length.** At most ``max_len`` tokens before EOS; a hypothesis that reaches
it ends there (beam search then scores its EOS at step max_len + 1). By
default max_len = 2·(longest source) + 10, within the model's max_len.

Results are lists of token ids per sentence, without BOS and EOS.
:func:`translate_texts` wraps both for sentences as text: it encodes them
with the model's tokenizer, decodes batches of similar length and returns
detokenised text in the input order.
"""
from __future__ import annotations

import contextlib

import numpy as np

from .errors import ScratchError
from .tensor import no_grad

__all__ = ["greedy_decode", "beam_search", "translate_texts", "special_ids", "SPECIAL_TOKENS"]


# ---- shared pieces -------------------------------------------------------------
def _source_batch(model, src_ids):
    """An int array (B, S), or a list of id lists padded here with the model's pad_id."""
    pad = model.config.pad_id
    if isinstance(src_ids, np.ndarray):
        src = src_ids
    else:
        rows = list(src_ids)
        if rows and all(isinstance(r, (int, np.integer)) for r in rows):
            rows = [rows]  # a single sentence
        rows = [list(r) for r in rows]
        width = max((len(r) for r in rows), default=0)
        src = np.full((len(rows), max(width, 1)), pad, dtype=np.int64)
        for i, r in enumerate(rows):
            src[i, :len(r)] = r
    src = src[None] if src.ndim == 1 else src
    if src.dtype.kind not in "iu":
        raise ScratchError(f"source ids must be integers, got {src.dtype}")
    return src


def _max_len(model, src, max_len):
    limit = model.config.max_len - 1  # the decoder also needs a position for BOS
    if max_len is None:
        longest = int((src != model.config.pad_id).sum(axis=1).max(initial=0))
        return min(limit, 2 * longest + 10)
    if not 1 <= max_len <= limit:
        raise ScratchError(f"max_len must be between 1 and {limit} (the model's max_len − 1), not {max_len}")
    return max_len


@contextlib.contextmanager
def _inference(model):
    """Eval mode (no dropout) and no graph, restoring the model's mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            yield
    finally:
        model.train(was_training)


def _log_softmax(z):
    """(N, V) logits -> log-probabilities, in the logits' dtype."""
    z = z - z.max(axis=-1, keepdims=True)
    z -= np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return z


def length_penalty_of(n, alpha):
    """GNMT: ((5 + n) / 6)^α; 1 when α is None or 0."""
    return ((5.0 + n) / 6.0) ** alpha if alpha else 1.0


# ---- greedy --------------------------------------------------------------------
def greedy_decode(model, src_ids, bos_id: int, eos_id: int, max_len: int | None = None):
    """The most likely next token at every step, until EOS or max_len tokens."""
    src = _source_batch(model, src_ids)
    B = src.shape[0]
    max_len = _max_len(model, src, max_len)
    out = np.zeros((B, max_len), dtype=np.int64)
    lengths = np.full(B, max_len)
    with _inference(model):
        memory, src_mask = model.encode(src)  # (B, S, C)
        cache = model.new_cache(memory, src_mask, max_len)
        active = np.arange(B)  # the sentences still decoding = the cache's rows, in order
        last = np.full(B, bos_id)
        for t in range(max_len):
            logits = model.decode(last[:, None], None, None, cache).data[:, -1]  # (A, V)
            last = logits.argmax(axis=-1)  # (A,)
            out[active, t] = last
            done = last == eos_id
            lengths[active[done]] = t
            if done.all():
                break
            if done.any():
                keep = np.flatnonzero(~done)
                cache.select(keep)
                active, last = active[keep], last[keep]
    return [out[i, :lengths[i]].tolist() for i in range(B)]


# ---- beam search ---------------------------------------------------------------
def beam_search(model, src_ids, bos_id: int, eos_id: int, beam_size: int = 4, length_penalty: float | None = 0.6,
                max_len: int | None = None, return_scores: bool = False, return_candidates: bool = False):
    """The best hypothesis found with ``beam_size`` hypotheses kept per sentence.

    Each step extends every live hypothesis by every token and keeps the
    ``beam_size`` best extensions by score. Extensions ending in EOS that rank
    among those ``beam_size`` best become finished hypotheses (scored with the
    length penalty); the ``beam_size`` best extensions that do not end in EOS
    live on. A sentence stops when no live hypothesis can still beat its best
    finished one (scores only fall as tokens are added), or at max_len.
    With beam_size 1 and no length penalty this is greedy decoding.

    Returns lists of ids; with ``return_scores`` also each one's
    length-normalised log-probability. With ``return_candidates`` also, per
    sentence, every finished hypothesis the search kept, as dicts
    ``{"tokens", "log_prob", "score"}`` (the raw sum and the length-normalised
    score), best first as the search ranks them: the first is the one returned.
    The result is then ``(hyps, candidates)``, or ``(hyps, scores, candidates)``.
    """
    if beam_size < 1:
        raise ScratchError(f"beam_size must be at least 1, not {beam_size}")
    if length_penalty is not None and length_penalty < 0:
        raise ScratchError(f"length_penalty must be ≥ 0 or None, not {length_penalty}")
    src = _source_batch(model, src_ids)
    B, K = src.shape[0], beam_size
    max_len = _max_len(model, src, max_len)
    best_tokens = np.zeros((B, max_len), dtype=np.int64)
    best_len = np.zeros(B, dtype=np.int64)
    best_score = np.full(B, -np.inf)
    lp_max = length_penalty_of(max_len + 1, length_penalty)  # the largest penalty any hypothesis can get
    kept = [[] for _ in range(B)] if return_candidates else None  # every finished hypothesis, in finishing order
    with _inference(model):
        memory, src_mask = model.encode(src)  # (B, S, C), once per sentence
        cache = model.new_cache(memory, src_mask, max_len + 1, beams=K)  # rows b·K … b·K + K − 1
        active = np.arange(B)  # sentences still searching
        seqs = np.zeros((B, K, 0), dtype=np.int64)  # (A, K, t) live hypotheses, without BOS
        scores = np.full((B, K), -np.inf, dtype=memory.dtype)  # (A, K) their log-probabilities
        scores[:, 0] = 0  # one live hypothesis (BOS) to start; the other beams are empty
        last = np.full(B * K, bos_id)
        for t in range(max_len + 1):
            A = len(active)
            logits = model.decode(last[:, None], None, None, cache).data[:, -1]  # (A·K, V)
            V = logits.shape[-1]
            cand = scores[:, :, None] + _log_softmax(logits).reshape(A, K, V)  # (A, K, V)
            if t == max_len:  # the last step may only end the hypothesis
                eos_col = cand[:, :, eos_id].copy()
                cand[:] = -np.inf
                cand[:, :, eos_id] = eos_col
            flat = cand.reshape(A, K * V)

            # the 2K best extensions hold at least K that do not end in EOS (one EOS per beam)
            top = _top_k(flat, 2 * K)  # (A, 2K) indices into K·V
            top_scores = np.take_along_axis(flat, top, axis=1)
            order = np.argsort(-top_scores, axis=1, kind="stable")  # best first
            top, top_scores = np.take_along_axis(top, order, axis=1), np.take_along_axis(top_scores, order, axis=1)
            parent, token = top // V, top % V  # (A, 2K)
            ends = token == eos_id

            # finished: EOS extensions among the K best
            normed = np.where(ends[:, :K] & np.isfinite(top_scores[:, :K]),
                              top_scores[:, :K] / length_penalty_of(t + 1, length_penalty), -np.inf)  # (A, K)
            if kept is not None:
                for a, k in zip(*np.nonzero(np.isfinite(normed))):
                    kept[active[a]].append({"tokens": seqs[a, parent[a, k]].tolist(),
                                            "log_prob": float(top_scores[a, k]), "score": float(normed[a, k])})
            j = normed.argmax(axis=1)  # (A,)
            rows = np.arange(A)
            win = np.flatnonzero(normed[rows, j] > best_score[active])
            if len(win):
                best_tokens[active[win], :t] = seqs[win, parent[win, j[win]]]
                best_len[active[win]], best_score[active[win]] = t, normed[win, j[win]]

            # live: the K best extensions that do not end in EOS, best first
            live = np.argsort(ends, axis=1, kind="stable")[:, :K]  # (A, K): non-EOS first, order kept
            parent, token = np.take_along_axis(parent, live, axis=1), np.take_along_axis(token, live, axis=1)
            scores = np.take_along_axis(top_scores, live, axis=1)
            seqs = np.concatenate([seqs[rows[:, None], parent], token[:, :, None]], axis=2)  # (A, K, t + 1)
            cache_rows = (rows[:, None] * K + parent).reshape(-1)  # (A·K,) row each beam continues

            # a sentence is done when its best live score, even under the largest
            # length penalty, cannot beat its best finished one
            done = (scores[:, 0] / lp_max <= best_score[active]) | (t == max_len)
            if done.all():
                break
            if done.any():
                keep = np.flatnonzero(~done)
                cache.select(cache_rows.reshape(A, K)[keep].reshape(-1))  # reorder and shrink in one copy
                active, seqs, scores, token = active[keep], seqs[keep], scores[keep], token[keep]
            else:
                cache.reorder(cache_rows)
            last = token.reshape(-1)
    hyps = [best_tokens[i, :best_len[i]].tolist() for i in range(B)]
    out = (hyps, best_score.tolist()) if return_scores else (hyps,)
    if kept is not None:
        # a stable sort keeps the earlier of equal scores first, as the search does (it replaces only on >)
        out += ([sorted(c, key=lambda h: -h["score"]) for c in kept],)
    return out if len(out) > 1 else hyps


def _top_k(x, k):
    """Indices of the k largest entries of each row of x (N, M), in no particular order."""
    M = x.shape[1]
    if k >= M:
        return np.broadcast_to(np.arange(M), x.shape).copy()
    return np.argpartition(x, M - k, axis=1)[:, M - k:]


# ---- sentences in, sentences out ---------------------------------------------------
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")  # a translation tokenizer's special tokens


def special_ids(tokenizer) -> tuple[int, int, int]:
    """(pad, bos, eos) ids of a translation tokenizer."""
    specials = getattr(tokenizer, "special_tokens", {})
    missing = [s for s in SPECIAL_TOKENS if s not in specials]
    if missing:
        raise ScratchError(f"the tokenizer has no {missing[0]} token, so it is not a translation tokenizer "
                           "(train a model with 'scratchllm translate-train')")
    return tuple(specials[s] for s in SPECIAL_TOKENS)


def encode_source(tokenizer, text: str) -> list[int]:
    """A source sentence's ids: its tokens as they are (no BOS or EOS). Text that
    looks like a special token ("<eos>") is ordinary text here."""
    return tokenizer.encode(text, disallowed_special=())


def translate_texts(model, tokenizer, sentences, beam_size: int = 4, length_penalty: float | None = 0.6,
                    batch_size: int = 32, max_len: int | None = None, progress: bool = False,
                    truncate: bool = False) -> list[str]:
    """Translations of ``sentences`` (strings), in their order.

    Sentences are sorted by length and decoded ``batch_size`` at a time, so a
    batch holds little padding; beam_size 1 is greedy decoding. A sentence
    longer than the model's max_len tokens is an error, or with ``truncate``
    is cut to its first max_len tokens (see :func:`too_long`).
    """
    from tqdm.auto import tqdm

    _, bos, eos = special_ids(tokenizer)
    sentences = list(sentences)
    ids = [encode_source(tokenizer, s) for s in sentences]
    limit = model.config.max_len
    for i, row in enumerate(ids):
        if len(row) > limit:
            if not truncate:
                raise ScratchError(f"sentence {i + 1} has {len(row)} tokens; the model reads at most {limit}")
            ids[i] = row[:limit]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = [""] * len(ids)
    with tqdm(total=len(ids), disable=not progress, unit="sent", dynamic_ncols=True) as bar:
        for lo in range(0, len(order), batch_size):
            chunk = order[lo:lo + batch_size]
            src = [ids[i] or [eos] for i in chunk]  # an empty sentence still needs one key to attend to
            if beam_size == 1:
                hyps = greedy_decode(model, src, bos, eos, max_len=max_len)
            else:
                hyps = beam_search(model, src, bos, eos, beam_size=beam_size, length_penalty=length_penalty,
                                   max_len=max_len)
            for i, h in zip(chunk, hyps):
                out[i] = tokenizer.decode(h).strip()
            bar.update(len(chunk))
    return out


def too_long(model, tokenizer, sentences) -> list[int]:
    """Indices of the sentences longer than the model's max_len tokens."""
    limit = model.config.max_len
    return [i for i, s in enumerate(sentences) if len(encode_source(tokenizer, s)) > limit]
