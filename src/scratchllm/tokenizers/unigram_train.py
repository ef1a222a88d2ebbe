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

The lattices of all words are held as flat NumPy arrays (one entry per
node: word, start, end, piece); forward, backward and Viterbi run one end
position at a time over all words at once. With ``workers=2`` (the
default) the words are split between this process and a forked one, each
building and keeping the lattices of its half; per step only the scores go
out and the counts come back. (Texts of fewer than 4000 distinct words stay
in one process.)
"""
from __future__ import annotations

import functools
import math
import multiprocessing
from collections import Counter

import numpy as np
import regex
from tqdm import tqdm

from ..errors import ScratchError
from .normalize import SPACE
from .sentencepiece_model import NORMAL
from .text_input import iter_text
from .unigram import meta_pieces

UNK_CHAR = "\u2585"          # stands for rare characters during training, as in sentencepiece
UNK_PENALTY = 10.0
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


# -- 3. lattices of many strings as flat arrays ----------------------------------------------

class Lattices:
    """All segmentations of many strings, for vectorised forward-backward and Viterbi.

    Node k is piece `piece[k]` (an index into the seed list, or -1: a
    character that is no piece) over positions [start[k], end[k]) of string
    `word[k]`; positions are flat (string offset + position) so one array
    holds every string's forward sums.
    """

    def __init__(self, strings, counts, piece_index: dict[str, int], max_len: int):
        self.word, self.start, self.end, self.piece, offsets = _lattice_nodes(strings, piece_index, max_len)
        self.offsets = offsets[:-1]
        self.lengths = np.diff(offsets) - 1
        self.counts = np.asarray(counts, dtype=np.float64)
        self.size = int(offsets[-1])
        self.single = (self.end - self.start) == 1
        rel_end = self.end - self.offsets[self.word]
        self.by_end = _groups(rel_end, self.end, self.start)

    @functools.cached_property
    def by_start(self):
        """Nodes grouped for the backward pass (not needed by Viterbi)."""
        return _groups(-(self.start - self.offsets[self.word]), self.start, -self.end)

    def scores(self, logp: np.ndarray, unk_score: float) -> tuple[np.ndarray, np.ndarray]:
        """Each node's score, and whether it is an unknown character (dead pieces: -inf)."""
        s = np.where(self.piece >= 0, logp[np.maximum(self.piece, 0)], -np.inf)
        unk = self.single & ~np.isfinite(s)
        s[unk] = unk_score
        return s, unk

    def forward(self, score):
        alpha = np.full(self.size, -np.inf)
        alpha[self.offsets] = 0.0
        for idx, seg, tgt in self.by_end:
            alpha[tgt] = _logsumexp_segments(alpha[self.start[idx]] + score[idx], seg)
        return alpha

    def backward(self, score):
        beta = np.full(self.size, -np.inf)
        beta[self.offsets + self.lengths] = 0.0
        for idx, seg, tgt in self.by_start:
            beta[tgt] = _logsumexp_segments(beta[self.end[idx]] + score[idx], seg)
        return beta

    def expected_counts(self, logp, unk_score, n_pieces):
        """E-step: expected uses of each piece (weighted by string counts), and the log-likelihood."""
        score, unk = self.scores(logp, unk_score)
        alpha = self.forward(score)
        beta = self.backward(score)
        logz = alpha[self.offsets + self.lengths]
        with np.errstate(invalid="ignore", over="ignore"):
            post = np.exp(alpha[self.start] + score + beta[self.end] - logz[self.word]) * self.counts[self.word]
        use = (self.piece >= 0) & ~unk & np.isfinite(post)
        expected = np.bincount(self.piece[use], weights=post[use], minlength=n_pieces)
        return expected, float((logz * self.counts).sum())

    def viterbi(self, score):
        """Best path of every string: (node indices on the paths, the string of each, total scores)."""
        best = np.full(self.size, -np.inf)
        best[self.offsets] = 0.0
        back = np.full(self.size, -1, dtype=np.int64)
        for idx, seg, tgt in self.by_end:
            cand = best[self.start[idx]] + score[idx]
            top = np.maximum.reduceat(cand, seg)
            best[tgt] = top
            # first node (earliest start) reaching the top wins ties, as in sentencepiece
            hit = cand == np.repeat(top, np.diff(np.append(seg, len(idx))))
            first = np.full(len(seg), len(idx))
            grp = np.repeat(np.arange(len(seg)), np.diff(np.append(seg, len(idx))))
            np.minimum.at(first, grp[hit], np.flatnonzero(hit))
            ok = first < len(idx)
            back[tgt[ok]] = idx[first[ok]]
        pos = self.offsets + self.lengths
        total = best[pos]
        nodes, owner = [], []
        w = np.arange(len(pos))
        while len(pos):
            k = back[pos]
            keep = k >= 0
            pos, w, k = pos[keep], w[keep], k[keep]
            nodes.append(k)
            owner.append(w)
            pos = self.start[k]
            more = pos > self.offsets[w]
            pos, w = pos[more], w[more]
        nodes = np.concatenate(nodes) if nodes else np.zeros(0, dtype=np.int64)
        owner = np.concatenate(owner) if owner else np.zeros(0, dtype=np.int64)
        return nodes, owner, total


def _codes(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The strings' code points end to end, each string followed by a 0 (NUL is no piece's
    character here: training replaces it), and where each string starts (one more entry: the end)."""
    offsets = np.zeros(len(strings) + 1, dtype=np.int64)
    np.cumsum([len(w) + 1 for w in strings], out=offsets[1:])
    flat = "\0".join(strings) + "\0"
    return np.frombuffer(flat.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.int64), offsets


def _lattice_nodes(strings, piece_index: dict[str, int], max_len: int):
    """Every piece occurrence in the strings, as (word, start, end, piece) arrays in the order
    "by word, by start, shortest first", plus the one-character node at every position (piece -1
    if that character is no piece), and the strings' flat offsets.

    The pieces form a trie (node ids; an edge is parent * alphabet + character);
    all positions walk it one character deeper per round, as long as they are on a prefix."""
    pieces = list(piece_index)
    pcodes, poff = _codes(pieces)
    wcodes, offsets = _codes(strings)
    alphabet, pinv = np.unique(pcodes, return_inverse=True)  # alphabet[0] is the 0 between pieces
    sigma = len(alphabet)
    # the strings' characters as trie symbols: 0 for characters of no piece (and for the gaps)
    j = np.minimum(np.searchsorted(alphabet, wcodes), sigma - 1)
    wsym = np.where(alphabet[j] == wcodes, j, 0)
    wsym[offsets[1:] - 1] = 0
    psym = pinv.reshape(-1)
    plen = np.diff(poff) - 1
    pid = np.asarray([piece_index[p] for p in pieces], dtype=np.int64)
    # trie: level by level, node ids 1.. (0 is the root)
    node = np.zeros(len(pieces), dtype=np.int64)
    edge_keys, edge_child = [], []
    piece_at = [np.full(1, -2, dtype=np.int64)]
    n_nodes = 1
    for depth in range(int(plen.max()) if len(plen) else 0):
        live = np.flatnonzero(plen > depth)
        key = node[live] * sigma + psym[poff[live] + depth]
        uniq, inv = np.unique(key, return_inverse=True)
        node[live] = n_nodes + inv.reshape(-1)
        edge_keys.append(uniq)
        edge_child.append(n_nodes + np.arange(len(uniq)))
        at = np.full(len(uniq), -2, dtype=np.int64)
        ends = plen[live] == depth + 1
        at[inv.reshape(-1)[ends]] = pid[live[ends]]
        piece_at.append(at)
        n_nodes += len(uniq)
    edge_keys = np.concatenate(edge_keys) if edge_keys else np.zeros(0, dtype=np.int64)
    edge_child = np.concatenate(edge_child) if edge_child else np.zeros(0, dtype=np.int64)
    order = np.argsort(edge_keys)
    edge_keys, edge_child = edge_keys[order], edge_child[order]
    piece_at = np.concatenate(piece_at)
    # walk: every start position of every string, one character deeper per round
    n_pos = len(wcodes)
    starts = np.flatnonzero(wsym > 0)
    here = np.zeros(len(starts), dtype=np.int64)
    got_s, got_len, got_piece = [], [], []
    single = np.ones(n_pos, dtype=bool)
    single[offsets[1:] - 1] = False
    singles = np.flatnonzero(single)
    for length in range(1, max_len + 1):
        if not len(starts):
            break
        pos = starts + length - 1
        ok = pos < n_pos
        starts, here, pos = starts[ok], here[ok], pos[ok]
        key = here * sigma + wsym[pos]
        k = np.minimum(np.searchsorted(edge_keys, key), max(len(edge_keys) - 1, 0))
        hit = (wsym[pos] > 0) & (edge_keys[k] == key) if len(edge_keys) else np.zeros(len(key), dtype=bool)
        starts, here = starts[hit], edge_child[k[hit]]
        found = piece_at[here]
        if length == 1:
            one = np.full(n_pos, -1, dtype=np.int64)
            one[starts] = np.maximum(found, -1)
            got_s.append(singles)
            got_len.append(np.ones(len(singles), dtype=np.int64))
            got_piece.append(one[singles])
        else:
            is_piece = found >= 0
            got_s.append(starts[is_piece])
            got_len.append(np.full(int(is_piece.sum()), length, dtype=np.int64))
            got_piece.append(found[is_piece])
    start = np.concatenate(got_s)
    length = np.concatenate(got_len)
    piece = np.concatenate(got_piece)
    order = np.lexsort((length, start))
    start, length, piece = start[order], length[order], piece[order]
    word = np.searchsorted(offsets, start, side="right") - 1
    return word, start, start + length, piece, offsets


def _groups(key, target, tiebreak):
    """Nodes grouped by key (ascending), each group sorted by target then tiebreak;
    per group: (node indices, segment starts, the target position of each segment)."""
    order = np.lexsort((tiebreak, target, key))
    k = key[order]
    cuts = np.flatnonzero(np.diff(k)) + 1
    out = []
    for idx in np.split(order, cuts):
        t = target[idx]
        seg = np.concatenate([[0], np.flatnonzero(np.diff(t)) + 1])
        out.append((idx, seg, t[seg]))
    return out


def _logsumexp_segments(x, seg):
    top = np.maximum.reduceat(x, seg)
    safe = np.where(np.isfinite(top), top, 0.0)
    lens = np.diff(np.append(seg, len(x)))
    with np.errstate(divide="ignore"):
        return safe + np.log(np.add.reduceat(np.exp(x - np.repeat(safe, lens)), seg))


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


def train_unigram(tok, data, vocab_size: int, *, character_coverage: float = 0.9995, seed_size: int = 1_000_000,
                  shrinking_factor: float = 0.75, num_sub_iterations: int = 2, max_piece_length: int = 16,
                  split_by_unicode_script: bool = True, max_sentence_length: int = 4192, workers: int = 2,
                  progress: bool = False):
    """Fill tok (a UnigramTokenizer) with pieces learned from data; see the module docstring."""
    specials = [p for p in tok.special_tokens if p not in ("<s>", "</s>")]
    meta = meta_pieces(tok.byte_fallback, specials)
    n_normal = int(vocab_size) - len(meta)
    if not 0.5 <= shrinking_factor < 1:
        raise ScratchError(f"shrinking_factor must be in [0.5, 1), not {shrinking_factor}")
    sentences = read_sentences(data, tok.normalizer, max_sentence_length, progress)
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
    tok._build(meta + [(p, s, NORMAL) for p, s in final], tok.normalizer, tok.byte_fallback)
    return tok


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
