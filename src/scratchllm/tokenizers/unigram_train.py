"""Training a unigram tokenizer the way SentencePiece's trainer does (Kudo 2018).

1. Sentences. The text is cut into lines, each normalised ("▁the▁cat").
   Characters are counted; the most frequent ones that together cover
   ``character_coverage`` of the text (0.9995) are required in the
   vocabulary, the rest become "unknown" (they will be ``<unk>`` or bytes).
2. Seeds. Every substring that occurs at least twice and branches (is
   followed by different characters: a node of the suffix tree) is a
   candidate, found from a suffix array of all sentences. Candidates must be
   valid pieces: at most ``max_piece_length`` characters, "▁" only at the
   start, one Unicode script (Han, Hiragana and Katakana count as one). The
   ``seed_size`` with the highest frequency x length, plus every required
   character, start with log-probability log(count / total).
3. EM on words (the sentences cut before each "▁", with their counts):
   - E-step: for each word, the forward-backward sums over its lattice give
     each piece's expected count (how often it is used, averaged over all
     segmentations by their probability);
   - M-step: pieces expected less than 0.5 times are dropped, and the others
     get log-probability digamma(count) - digamma(total): the "Bayesian" EM
     of Liang's tutorial, a sparse prior that drives rare pieces to zero.
   Two such rounds, then:
4. Pruning. For each piece: if it were removed, its uses would be taken by
   its best alternative segmentation (the second best of the piece alone).
   The loss in corpus likelihood of that replacement is computed; the pieces
   with the largest losses are kept, ``shrinking_factor`` (0.75) of them per
   round, until 1.1 x the wanted size; then 3-4 again.
5. The final vocabulary: the required characters, then the best-scored
   pieces up to ``vocab_size`` (after <unk>, <s>, </s>, special tokens and,
   with byte fallback, the 256 byte pieces).

The lattices of all words are held as flat NumPy arrays (unigram_lattice.py:
one entry per node: word, start, end, piece); forward, backward and Viterbi run one end
position at a time over all words at once. With ``workers=2`` (the
default) the words are split between this process and a forked one, each
building and keeping the lattices of its half; per step only the scores go
out and the counts come back. (Texts of fewer than 4000 distinct words stay
in one process.)
"""
from __future__ import annotations

import math
import multiprocessing
from collections import Counter

import numpy as np
import regex
from tqdm import tqdm

from ..errors import ScratchError
from .normalize import SPACE
from .sentencepiece_model import NORMAL, UNK_PENALTY, meta_pieces
from .text_input import iter_text
from .unigram_lattice import Lattices

UNK_CHAR = "\u2585"          # stands for rare characters during training, as in sentencepiece
MIN_EXPECTED = 0.5           # M-step: pieces expected fewer times are dropped
REQUIRED_PENALTY_STEP = 1e-4


def digamma(x: float) -> float:
    """ψ(x): recurrence up to x >= 7, then the asymptotic series."""
    result = 0.0
    while x < 7:
        result -= 1 / x
        x += 1
    x -= 0.5
    xx = 1 / x
    xx2 = xx * xx
    xx4 = xx2 * xx2
    return result + math.log(x) + xx2 / 24 - 7 / 960 * xx4 + 31 / 8064 * xx4 * xx2 - 127 / 30720 * xx4 * xx4


# -- 1. sentences -------------------------------------------------------------------

def read_sentences(data, normalizer, max_bytes: int, progress: bool) -> list[str]:
    """Normalised non-empty lines of the text (lines over max_bytes skipped, as sentencepiece does)."""
    out = []
    rest = ""
    for chunk in iter_text(data, progress):
        lines = (rest + chunk).split("\n")
        rest = lines.pop()
        out += _normal_lines(lines, normalizer, max_bytes)
    out += _normal_lines([rest], normalizer, max_bytes)
    return out


def _normal_lines(lines, normalizer, max_bytes):
    norm = normalizer.normalize
    for line in lines:
        if len(line) * 4 > max_bytes and len(line.encode("utf-8", "surrogatepass")) > max_bytes:
            continue
        s = norm(line)
        if s:
            yield s


def required_characters(sentences, coverage: float) -> dict[str, int]:
    """The most frequent characters covering `coverage` of all, with their counts."""
    counts = Counter()
    for s in sentences:
        counts.update(s)
    counts.pop("\0", None)  # never a piece (sentencepiece's tries cannot hold it)
    total = sum(counts.values())
    required = {}
    covered = 0
    for c, n in sorted(counts.items(), key=lambda x: (-x[1], x[0])):
        if covered / total >= coverage:
            break
        covered += n
        required[c] = n
    return required


# -- 2. seeds from a suffix array ------------------------------------------------------

_SCRIPTS = ("Latin Greek Cyrillic Armenian Hebrew Arabic Syriac Thaana Devanagari Bengali Gurmukhi Gujarati Oriya "
            "Tamil Telugu Kannada Malayalam Sinhala Thai Lao Tibetan Myanmar Georgian Hangul Ethiopic Cherokee "
            "Canadian_Aboriginal Ogham Runic Khmer Mongolian Han Hiragana Katakana Bopomofo Yi Tagalog Coptic "
            "Braille Tifinagh Javanese Balinese Sundanese Vai Bamum Lisu Adlam Nko Common Inherited").split()
_SCRIPT_RE = regex.compile("|".join(f"(?P<{s}>\\p{{Script={s}}})" for s in _SCRIPTS))


def script_of(c: str) -> str:
    """Unicode script of c; Hiragana, Katakana and "ー" count as Han, as in sentencepiece."""
    m = _SCRIPT_RE.match(c)
    s = m.lastgroup if m else f"other-{ord(c) >> 7}"
    return "Han" if s in ("Hiragana", "Katakana") or c == "\u30fc" else s


def suffix_array(a: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Start positions of the suffixes of a, sorted by their first H symbols (H: the first power
    of two >= depth), and lcp[k]: the common prefix of suffixes sa[k-1] and sa[k], up to depth.

    Prefix doubling: ranks by h symbols, then by 2h (a pair of ranks), ... The first ranks come
    from as many symbols as fit, packed, in one integer (with few distinct characters, 8), which
    saves the first rounds; the ranks met on the way give the lcp (binary lifting)."""
    n = len(a)
    alphabet, sym = np.unique(a, return_inverse=True)
    sym = sym.reshape(-1).astype(np.int64) + 1        # 0: past the end
    bits = max(1, int(len(alphabet)).bit_length())
    big = 1
    while big * 2 * bits <= 62 and big * 2 <= max(1, depth // 2):
        big *= 2
    packed = np.zeros(n, dtype=np.int64)              # the next `big` symbols, first in the high bits
    for j in range(min(big, n)):
        packed[:n - j] |= sym[j:] << (bits * (big - 1 - j))
    sa = np.argsort(packed)
    rank = _dense_rank(packed, sa)
    ranks = {big: rank}
    h = big
    while h < depth and rank.max() < n:
        second = np.zeros(n, dtype=np.int64)
        second[:n - h] = rank[h:]
        key = rank * (n + 2) + second
        sa = np.argsort(key)
        rank = _dense_rank(key, sa)
        h *= 2
        ranks[h] = rank
    # lcp: equal ranks by h symbols at both suffixes' current offsets -> h more in common
    lcp = np.zeros(n, dtype=np.int64)
    x, y = sa[:-1], sa[1:]
    steps = sorted(ranks, reverse=True) + [1 << i for i in range(big.bit_length() - 2, -1, -1)]
    for step in steps:
        if step in ranks:
            r = np.append(ranks[step], 0)             # index n: past the end
            same = r[np.minimum(x + lcp[1:], n)] == r[np.minimum(y + lcp[1:], n)]
        else:
            shift = bits * (big - step)               # the first `step` of the packed symbols
            pk = np.append(packed, 0) >> shift
            same = pk[np.minimum(x + lcp[1:], n)] == pk[np.minimum(y + lcp[1:], n)]
        lcp[1:] += np.where(same, step, 0)
    return sa, np.minimum(lcp, depth)


def _dense_rank(key, order):
    """1 + how many distinct keys are smaller, for every position."""
    k = key[order]
    rank = np.empty(len(key), dtype=np.int64)
    rank[order] = np.cumsum(np.concatenate([[1], k[1:] != k[:-1]]))
    return rank


def seed_pieces(sentences, required: dict[str, int], seed_size: int, max_len: int,
                split_by_script: bool) -> list[tuple[str, float]]:
    """Required characters (scored by count) and the top substrings (scored by count x length)."""
    text = "\0".join(sentences) + "\0"
    a = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    n = len(a)
    sa, lcp = suffix_array(a, max_len + 1)
    # vmax[p]: the longest valid piece starting at p (up to max_len).
    table = np.zeros(0x110000, dtype=np.int32)   # script class; -1 bad (boundary, unknown), -2 "▁"
    names: dict[str, int] = {}
    for c in set(text):
        if c in ("\0", UNK_CHAR):
            table[ord(c)] = -1
        elif c == SPACE:
            table[ord(c)] = -2
        else:
            table[ord(c)] = names.setdefault(script_of(c) if split_by_script else "any", len(names))
    cl = table[a].astype(np.int64)
    # run[p]: how many characters from p on share p's script (none for bad or "▁").
    brk = np.ones(n + 1, dtype=bool)
    brk[1:n] = (cl[1:] != cl[:-1]) | (cl[1:] < 0)
    seg_id = np.cumsum(brk[:n]) - 1
    seg_end = np.flatnonzero(brk)[1:]  # end of each segment
    run = seg_end[seg_id] - np.arange(n)
    run[cl < 0] = 0
    vmax = run.copy()
    sp = np.flatnonzero(cl == -2)
    nxt = np.minimum(sp + 1, n - 1)
    vmax[sp] = 1 + np.where(sp + 1 < n, run[nxt], 0)
    vmax = np.minimum(vmax, max_len)
    # Suffix-tree nodes of depth d: maximal runs of lcp >= d whose smallest lcp is exactly d.
    cand_pos, cand_len, cand_score = [], [], []
    for d in range(2, max_len + 1):
        m = lcp >= d
        if not m.any():
            break
        edges = np.diff(np.concatenate([[0], m.view(np.int8), [0]]))
        starts = np.flatnonzero(edges == 1)       # first k with lcp[k] >= d
        ends = np.flatnonzero(edges == -1)        # one past the last
        mins = _run_min(lcp, starts, ends)
        node = mins == d
        first = starts[node] - 1                  # interval [first, end)
        freq = ends[node] - first
        pos = sa[first]
        ok = vmax[pos] >= d
        cand_pos.append(pos[ok])
        cand_len.append(np.full(ok.sum(), d))
        cand_score.append(freq[ok] * d)
    pos = np.concatenate(cand_pos) if cand_pos else np.zeros(0, dtype=np.int64)
    length = np.concatenate(cand_len) if cand_len else np.zeros(0, dtype=np.int64)
    score = np.concatenate(cand_score) if cand_score else np.zeros(0, dtype=np.int64)
    order = np.lexsort((length, pos, -score))[:seed_size]
    seeds = [(c, float(k)) for c, k in sorted(required.items(), key=lambda x: (-x[1], x[0]))]
    seeds += [(text[p:p + d], float(s)) for p, d, s in zip(pos[order].tolist(), length[order].tolist(),
                                                           score[order].tolist())]
    total = math.log(sum(s for _, s in seeds))
    return [(p, math.log(s) - total) for p, s in seeds]


def _run_min(lcp, starts, ends):
    """Minimum of lcp over each run [start, end): reduceat over the runs and the gaps between them."""
    bounds = np.empty(2 * len(starts), dtype=np.int64)
    bounds[0::2] = starts
    bounds[1::2] = ends
    if bounds[-1] >= len(lcp):
        bounds = bounds[:-1]
    mins = np.minimum.reduceat(lcp, bounds)
    return mins[0::2]



# -- the trainer ------------------------------------------------------------------------------

class _Shards:
    """The word lattices split between this process and ``workers - 1`` forked ones.

    Each process builds and keeps its own part (so the building is shared too);
    per EM step only the scores go out and the counts come back.
    """

    def __init__(self, words, counts, index, max_len, workers):
        k = max(1, min(workers, len(words) // 2000 or 1))
        if "fork" not in multiprocessing.get_all_start_methods():
            k = 1
        order = np.argsort([-len(w) for w in words], kind="stable")
        parts = [order[i::k] for i in range(k)]  # alternate, so long words spread evenly
        self.conns, self.procs = [], []
        ctx = multiprocessing.get_context("fork") if k > 1 else None
        for part in parts[1:]:
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(theirs, [words[i] for i in part], [counts[i] for i in part],
                                                     index, max_len), daemon=True)
            proc.start()
            theirs.close()
            self.conns.append(mine)
            self.procs.append(proc)
        self.local = Lattices([words[i] for i in parts[0]], [counts[i] for i in parts[0]], index, max_len)

    def map(self, op, *args):
        for c in self.conns:
            c.send((op, args))
        out = [_OPS[op](self.local, *args)]
        for c in self.conns:
            try:
                r = c.recv()
            except EOFError:
                raise RuntimeError("a training worker process died (out of memory?)") from None
            if isinstance(r, BaseException):
                raise r
            out.append(r)
        return out

    def close(self):
        for c in self.conns:
            try:
                c.send(None)
            except OSError:
                pass
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()


def _serve(conn, words, counts, index, max_len):
    try:
        lat = Lattices(words, counts, index, max_len)
    except BaseException as e:  # reported at the first request
        lat, error = None, e
    while True:
        msg = conn.recv()
        if msg is None:
            return
        op, args = msg
        try:
            if lat is None:
                raise error
            conn.send(_OPS[op](lat, *args))
        except BaseException as e:
            conn.send(e)


def _estep(lat, logp, unk_score, n):
    return lat.expected_counts(logp, unk_score, n)


def _usage(lat, logp, unk_score, n):
    """How often each piece is on the best paths (weighted by word counts), and the word count."""
    score, unk = lat.scores(logp, unk_score)
    nodes, owner, _ = lat.viterbi(score)
    p = lat.piece[nodes]
    ok = (p >= 0) & ~unk[nodes]
    return np.bincount(p[ok], weights=lat.counts[owner[ok]], minlength=n), float(lat.counts.sum())


_OPS = {"estep": _estep, "usage": _usage}


def train_unigram(data, vocab_size: int, normalizer, byte_fallback: bool, special_tokens=(), *,
                  character_coverage: float = 0.9995, seed_size: int = 1_000_000, shrinking_factor: float = 0.75,
                  num_sub_iterations: int = 2, max_piece_length: int = 16, split_by_unicode_script: bool = True,
                  max_sentence_length: int = 4192, workers: int = 2, progress: bool = False):
    """The pieces learned from data, as (piece, score, type), vocab_size of them: the fixed pieces
    (meta_pieces) first, then the learned ones, best first; see the module docstring."""
    meta = meta_pieces(byte_fallback, [p for p in special_tokens if p not in ("<s>", "</s>")])
    n_normal = int(vocab_size) - len(meta)
    if not 0.5 <= shrinking_factor < 1:
        raise ScratchError(f"shrinking_factor must be in [0.5, 1), not {shrinking_factor}")
    sentences = read_sentences(data, normalizer, max_sentence_length, progress)
    if not sentences:
        raise ScratchError("the training text is empty")
    required = required_characters(sentences, character_coverage)
    if len(required) >= n_normal:
        raise ScratchError(f"vocab_size {vocab_size} is too small: the text needs {len(required)} characters "
                           f"+ {len(meta)} fixed pieces; raise vocab_size or lower character_coverage")
    rare = regex.compile("[^" + "".join(regex.escape(c) for c in required) + "]")
    sentences = [rare.sub(UNK_CHAR, s) for s in sentences]
    bar = tqdm(desc="unigram: seed pieces", unit=" round", disable=not progress, leave=False)
    seeds = seed_pieces(sentences, required, seed_size, max_piece_length, split_by_unicode_script)
    words = Counter()
    for s in sentences:
        words.update(_split_words(s))
    del sentences
    word_list = sorted(words, key=lambda w: (-words[w], w))
    index = {p: i for i, (p, _s) in enumerate(seeds)}
    shards = _Shards(word_list, [words[w] for w in word_list], index, max_piece_length, workers)
    try:
        logp = np.full(len(seeds), -np.inf)
        logp[:] = [s for _p, s in seeds]
        desired = int(vocab_size * 1.1)
        bar.set_description(f"unigram: EM, {len(seeds):,} seed pieces")
        while True:
            for _ in range(num_sub_iterations):
                logp = _em_step(shards, logp)
            alive = int(np.isfinite(logp).sum())
            bar.update(1)
            bar.set_postfix(pieces=alive, goal=desired)
            if alive <= desired:
                break
            logp = _prune(shards, seeds, logp, desired, shrinking_factor, max_piece_length)
        final = _finalize(seeds, logp, required, n_normal)
    finally:
        shards.close()
        bar.close()
    if len(final) < n_normal:
        raise ScratchError(f"the text allows at most {len(final) + len(meta)} pieces, fewer than vocab_size "
                           f"{vocab_size}: lower it or give more text")
    return meta + [(p, s, NORMAL) for p, s in final]


def _split_words(s: str) -> list[str]:
    """s cut before each "▁": "▁the▁cat" -> "▁the", "▁cat"."""
    parts = s.split(SPACE)
    return ([parts[0]] if parts[0] else []) + [SPACE + p for p in parts[1:]]


def _unk_score(logp) -> float:
    return float(logp[np.isfinite(logp)].min()) - UNK_PENALTY


def _em_step(shards, logp):
    """One E-step and M-step: new log-probabilities (-inf for dropped pieces)."""
    results = shards.map("estep", logp, _unk_score(logp), len(logp))
    expected = sum(r[0] for r in results)
    keep = np.isfinite(logp) & (expected >= MIN_EXPECTED)
    total = digamma(float(expected[keep].sum()))
    new = np.full(len(logp), -np.inf)
    new[keep] = [digamma(x) - total for x in expected[keep].tolist()]
    return new


def _prune(shards, seeds, logp, desired, shrinking, max_len):
    """Keep the pieces whose removal would cost the corpus likelihood most (see step 4)."""
    live = np.flatnonzero(np.isfinite(logp))
    strings = [seeds[i][0] for i in live]
    # How each piece would be segmented without itself: the best path that avoids the whole-string node.
    index = {seeds[i][0]: i for i in live}
    lat = Lattices(strings, np.ones(len(strings)), index, max_len)
    score, unk = lat.scores(logp, _unk_score(logp))
    whole = (lat.start == lat.offsets[lat.word]) & (lat.end == lat.offsets[lat.word] + lat.lengths[lat.word])
    whole_score = np.full(len(strings), -np.inf)
    whole_score[lat.word[whole]] = score[whole]
    score_alt = np.where(whole, -np.inf, score)
    nodes, owner, alt_total = lat.viterbi(score_alt)
    always_keep = np.ones(len(strings), dtype=bool)
    has_alt = np.isfinite(alt_total)
    # A piece whose own best segmentation is split can go: nothing would use it.
    always_keep[has_alt & (alt_total > whole_score)] = False
    alternatives: list[list[int]] = [[] for _ in strings]
    for k, w in zip(nodes.tolist(), owner.tolist()):
        if always_keep[w] and has_alt[w] and not unk[k]:
            alternatives[w].append(int(lat.piece[k]))
    results = shards.map("usage", logp, _unk_score(logp), len(logp))
    freq = sum(r[0] for r in results)
    vsum = sum(r[1] for r in results)
    total = float(freq.sum())
    logsum = math.log(total)
    kept, candidates = [], []
    for w, i in enumerate(live.tolist()):
        f = freq[i]
        if f == 0 or not always_keep[w]:
            continue
        if not alternatives[w]:
            kept.append(i)
            continue
        alt = alternatives[w]
        logsum_alt = math.log(total + f * (len(alt) - 1))
        logprob_alt = sum(math.log(freq[a] + f) - logsum_alt for a in alt)
        loss = (f / vsum) * ((math.log(f) - logsum) - logprob_alt)
        candidates.append((-loss, seeds[i][0], i))
    size = max(desired, int(shrinking * len(live)))
    for _loss, _p, i in sorted(candidates):
        if len(kept) >= size:
            break
        kept.append(i)
    new = np.full(len(logp), -np.inf)
    new[kept] = logp[kept]
    return new


def _finalize(seeds, logp, required, n_normal):
    """Required characters first (unseen ones just below the lowest score), then the best pieces."""
    live = {seeds[i][0]: float(logp[i]) for i in np.flatnonzero(np.isfinite(logp))}
    low = min(live.values())
    final = {}
    penalty = 0.0
    for c, _n in sorted(required.items(), key=lambda x: (-x[1], x[0])):
        if c in live:
            final[c] = live[c]
        else:
            final[c] = low + penalty
            penalty += REQUIRED_PENALTY_STEP
    for p, s in sorted(live.items(), key=lambda x: (-x[1], x[0])):
        if len(final) >= n_normal:
            break
        final.setdefault(p, s)
    return sorted(final.items(), key=lambda x: (-x[1], x[0]))
