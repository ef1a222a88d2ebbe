"""The lattices of many strings as flat NumPy arrays: every way to cut each string into pieces.

A lattice has one node per occurrence of a piece in a string (and one per character that is
no piece: an unknown); a path from the start to the end of the string is one segmentation.
Training (unigram_train.py: forward-backward for the E-step, Viterbi for pruning) and encoding
many words at once (unigram.py) share it. Each pass runs one end position at a time over all
strings together.
"""
from __future__ import annotations

import functools

import numpy as np


class Lattices:
    """All segmentations of many strings, for vectorised forward-backward and Viterbi.

    Node k is piece `piece[k]` (a value of piece_index, or -1: a
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
