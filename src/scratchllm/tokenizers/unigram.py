"""UnigramTokenizer: SentencePiece's unigram language-model tokenizer (Kudo 2018).

Every piece p has a score, its log-probability log P(p). A text is first
normalised (see normalize.py: "the cats" -> "▁the▁cats"), then cut into the
pieces whose summed score is highest: "▁cats" -> "▁cat" + "s" if
log P(▁cat) + log P(s) beats log P(▁cats), log P(▁c) + log P(ats) ... All
cuts are the paths through a *lattice*, one node per piece that matches at
each position; the best path is found by Viterbi (dynamic programming left
to right), the n best by keeping n candidates per position, and a random cut
for subword regularisation by sampling backwards from the forward sums
(``encode(text, alpha=0.1, seed=...)``).

As sentencepiece does it:
- ties between equal scores go to the path found first (the one whose last
  piece starts earliest, then the shortest last piece);
- a character no piece covers becomes ``<unk>`` with score min - 10
  (adjacent unknown characters join one ``<unk>``); with ``byte_fallback``
  it becomes its UTF-8 bytes, pieces ``<0xE2>`` ``<0x82>`` ``<0xAC>``;
- user-defined pieces always win: score = (length in bytes) * max - 0.1;
- control pieces (``<s>``, ``</s>``, special tokens) are never read from
  text unless ``allowed_special`` says so (as the BPE tokenizer).

``decode(encode(s)) == s`` when nothing is normalised away: with
``normalization="identity"``, ``remove_extra_whitespaces=False`` and
``byte_fallback=True`` (what ``scratchllm train --tokenizer unigram`` uses).
With sentencepiece's defaults, decode gives the normalised text: NFKC forms,
tabs and newlines as spaces, runs of spaces as one (see normalize.py).

``from_sentencepiece(path)`` reads a sentencepiece ``.model`` file (our own
protobuf reader, sentencepiece_model.py); ``save_sentencepiece`` writes one;
``save_hf`` a Hugging Face tokenizer.json (unigram_hf.py). Training:
unigram_train.py; the lattices of many words at once, which training and
``encode_batch`` share: unigram_lattice.py.
"""
from __future__ import annotations

import base64
import math
import random
from itertools import chain, islice
from typing import Iterable

import numpy as np

from ..errors import ScratchError
from .base import _CACHE_ENTRIES, _CACHE_PIECE_CHARS, Tokenizer, _PieceCache, _utf8_to_text
from .normalize import SPACE, Normalizer, charsmap_for
from .sentencepiece_model import (BYTE, CONTROL, NORMAL, TYPE_NAMES, UNK_PENALTY, UNKNOWN, USER_DEFINED, ModelFile,
                                  meta_pieces, read_model, trainer_spec, write_model)
from .unigram_hf import read_hf_dict, write_hf
from .unigram_lattice import Lattices
from .unigram_train import train_unigram

_TYPES = {v: k for k, v in TYPE_NAMES.items()}


class UnigramTokenizer(Tokenizer):
    """``UnigramTokenizer().train(text, 8000)``; ``UnigramTokenizer.from_sentencepiece("m.model")``."""

    type_name = "unigram"

    def __init__(self, normalization: str = "nmt_nfkc", byte_fallback: bool = False,
                 special_tokens: Iterable[str] = (), add_dummy_prefix: bool = True,
                 remove_extra_whitespaces: bool = True):
        """normalization: 'nmt_nfkc' (sentencepiece's default) or 'identity'.
        byte_fallback: unknown characters become byte pieces instead of <unk>.
        special_tokens: control pieces, given ids after <unk> <s> </s>.
        Untrained, the vocabulary is those fixed pieces only."""
        specials = list(special_tokens)
        if any(not isinstance(s, str) or not s for s in specials) or len(set(specials)) != len(specials):
            raise ScratchError("special tokens must be distinct non-empty strings")
        self.normalization = normalization
        normalizer = Normalizer(charsmap_for(normalization), add_dummy_prefix, remove_extra_whitespaces)
        self._build(meta_pieces(byte_fallback, specials), normalizer, byte_fallback)

    # -- building ------------------------------------------------------------
    def _build(self, pieces, normalizer: Normalizer, byte_fallback: bool, unk_surface: str = " \u2047 "):
        pieces = [(str(p), float(s), int(t)) for p, s, t in pieces]
        self._pieces = pieces
        self.normalizer = normalizer
        self.byte_fallback = bool(byte_fallback)
        self.unk_surface = unk_surface
        ids: dict[str, int] = {}
        for i, (p, _s, _t) in enumerate(pieces):
            if not p:
                raise ScratchError(f"piece {i} is empty")
            if p in ids:
                raise ScratchError(f"piece {p!r} appears twice")
            ids[p] = i
        self._ids = ids
        unks = [i for i, (_p, _s, t) in enumerate(pieces) if t == UNKNOWN]
        if len(unks) != 1:
            raise ScratchError("a unigram vocabulary needs exactly one unknown piece")
        self.unk_id = unks[0]
        normal = [s for _p, s, t in pieces if t == NORMAL]
        self.min_score = min(normal) if normal else 0.0
        self.max_score = max(normal) if normal else 0.0
        self.unk_score = self.min_score - UNK_PENALTY
        self.special_tokens = {p: i for i, (p, _s, t) in enumerate(pieces) if t == CONTROL}
        self._special_ids = {i: p for p, i in self.special_tokens.items()}
        self._special_res = {}
        byte_ids = {}
        for i, (p, _s, t) in enumerate(pieces):
            if t == BYTE:
                if not (len(p) == 6 and p.startswith("<0x") and p.endswith(">")):
                    raise ScratchError(f"byte piece {p!r} is not written <0xXX>")
                byte_ids[int(p[3:5], 16)] = i
        if self.byte_fallback and len(byte_ids) != 256:
            raise ScratchError(f"byte fallback needs the 256 byte pieces <0x00>..<0xFF>; {len(byte_ids)} found")
        self._byte_ids = [byte_ids.get(b, self.unk_id) for b in range(256)]
        self._byte_of = {i: b for b, i in byte_ids.items()}
        # The lattice's lookup table: every prefix of a piece -> the piece's
        # (id, score), or None where the prefix is not itself a piece. A miss
        # means no longer piece can match here either, so the scan stops.
        table: dict[str, tuple[int, float] | None] = {}
        for i, (p, s, t) in enumerate(pieces):
            if t not in (NORMAL, USER_DEFINED):
                continue  # unknown, control, byte and unused pieces are not matched in text
            if t == USER_DEFINED:
                s = len(p.encode("utf-8")) * self.max_score - 0.1
            for k in range(1, len(p)):
                table.setdefault(p[:k], None)
            table[p] = (i, s)
        self._table = table
        self._max_len = max((len(p) for p in table), default=1)
        # Words (a "▁" and what follows up to the next "▁") can be segmented
        # one at a time, and cached, when no piece has "▁" after its start.
        self._by_word = not any(SPACE in p[1:] for p in table)
        self.clear_cache()

    def clear_cache(self) -> None:
        """Forget the cached segmentations of words: "cat" (after a "▁") and bare ones (at the start)."""
        self._cache = _WordCache(lambda w: self._encode_word(SPACE + w),
                                 lambda ws: self._encode_words([SPACE + w for w in ws]))
        self._bare = _PieceCache(self._encode_word)
        self._lattice_scores = None

    # -- the lattice -----------------------------------------------------------
    def lattice(self, s: str) -> list[list[tuple[int, int, float]]]:
        """For each start position of normalised s: the nodes (end, id, score) starting there."""
        table = self._table
        n = len(s)
        starts = []
        for i in range(n):
            nodes = []
            single = False
            for j in range(i + 1, min(n, i + self._max_len) + 1):
                hit = table.get(s[i:j], 0)
                if hit == 0:
                    break
                if hit is not None:
                    nodes.append((j, hit[0], hit[1]))
                    single = single or j == i + 1
            if not single:
                nodes.append((i + 1, self.unk_id, self.unk_score))
            starts.append(nodes)
        return starts

    def _viterbi(self, s: str) -> list[tuple[int, int, int]]:
        """The best path as (start, end, id) nodes; ties go to the first path found.

        The lattice of ``lattice()``, relaxed as it is scanned (the hot loop of encoding).
        """
        table, unk_id, unk_score, max_len = self._table, self.unk_id, self.unk_score, self._max_len
        n = len(s)
        best = [0.0] + [None] * n
        back: list = [None] * (n + 1)
        for i in range(n):
            here = best[i]
            single = False
            stop = i + max_len if i + max_len < n else n
            for j in range(i + 1, stop + 1):
                hit = table.get(s[i:j], 0)
                if hit == 0:
                    break
                if hit is not None:
                    cand = here + hit[1]
                    b = best[j]
                    if b is None or cand > b:
                        best[j] = cand
                        back[j] = (i, hit[0])
                    if j == i + 1:
                        single = True
            if not single:
                cand = here + unk_score
                b = best[i + 1]
                if b is None or cand > b:
                    best[i + 1] = cand
                    back[i + 1] = (i, unk_id)
        path = []
        j = n
        while j > 0:
            i, pid = back[j]
            path.append((i, j, pid))
            j = i
        path.reverse()
        return path

    def _ids_of_path(self, s: str, path) -> list[int]:
        """Ids of a path: adjacent unknowns joined, then spelt as bytes if byte_fallback."""
        out: list[int] = []
        unk = self.unk_id
        k = 0
        while k < len(path):
            i, j, pid = path[k]
            if pid != unk:
                out.append(pid)
                k += 1
                continue
            while k + 1 < len(path) and path[k + 1][2] == unk:
                k += 1
                j = path[k][1]
            if self.byte_fallback:
                out.extend(self._byte_ids[b] for b in s[i:j].encode("utf-8", "surrogatepass"))
            else:
                out.append(unk)
            k += 1
        return out

    def _encode_word(self, word: str) -> tuple[int, ...]:
        return tuple(self._ids_of_path(word, self._viterbi(word)))

    def _encode_words(self, words: list[str]) -> list[tuple[int, ...]]:
        """_encode_word of many words at once: the Viterbi of the trainer's lattices, which runs
        over all words together in NumPy (the same best paths: ties go to the earliest start)."""
        if self._lattice_scores is None:
            index = {p: hit[0] for p, hit in self._table.items() if hit is not None}
            logp = np.full(self.vocab_size, -np.inf)
            for p, i in index.items():
                logp[i] = self._table[p][1]
            usable = bool(np.isfinite(logp[list(index.values())]).all()) and not any("\0" in p for p in index)
            self._lattice_scores = (index, logp, usable)
        index, logp, usable = self._lattice_scores
        if not usable:  # the flat lattices need finite scores and no NUL in pieces
            return [self._encode_word(w) for w in words]
        lat = Lattices(words, np.ones(len(words)), index, self._max_len)
        score, unk = lat.scores(logp, self.unk_score)
        nodes, owner, _total = lat.viterbi(score)
        order = np.lexsort((lat.start[nodes], owner))
        nodes, owner = nodes[order], owner[order]
        ids = np.where(unk[nodes], self.unk_id, lat.piece[nodes]).tolist()
        cuts = np.searchsorted(owner, np.arange(len(words) + 1)).tolist()
        with_unk = set(owner[unk[nodes]].tolist())
        out = []
        for w, word in enumerate(words):
            a, b = cuts[w], cuts[w + 1]
            if w in with_unk:  # unknown characters: joined, or spelt as bytes
                k = nodes[a:b]
                rel = lat.offsets[w]
                path = list(zip((lat.start[k] - rel).tolist(), (lat.end[k] - rel).tolist(), ids[a:b]))
                out.append(tuple(self._ids_of_path(word, path)))
            else:
                out.append(tuple(ids[a:b]))
        return out

    # -- encoding ------------------------------------------------------------
    def encode(self, text: str, *, allowed_special=(), disallowed_special="all", alpha: float | None = None,
               seed=None) -> list[int]:
        """Token ids of text: the Viterbi segmentation, or a sampled one if alpha is given.

        allowed_special / disallowed_special: as BPETokenizer.encode. alpha:
        sample a segmentation with probability proportional to
        P(segmentation)**alpha (subword regularisation; small alpha, more
        variety); seed: an int or a random.Random for the draws.
        """
        allowed = self._special_set(allowed_special, "allowed_special")
        disallowed = self._special_set(disallowed_special, "disallowed_special") - allowed
        if disallowed and any(sp in text for sp in disallowed):
            found = self._special_re(disallowed).search(text)
            if found:
                raise ScratchError(
                    f"the text contains the special token {found.group()!r}; pass allowed_special={{{found.group()!r}}}"
                    f" (or 'all') to encode it as its id, or disallowed_special=() to encode it as ordinary text")
        rng = None
        if alpha is not None:
            rng = seed if isinstance(seed, random.Random) else random.Random(seed)
        if not allowed or not any(sp in text for sp in allowed):
            return self._encode_text(text, alpha, rng)
        ids: list[int] = []
        pos = 0
        for m in self._special_re(allowed).finditer(text):
            ids += self._encode_text(text[pos:m.start()], alpha, rng)
            ids.append(self.special_tokens[m.group()])
            pos = m.end()
        ids += self._encode_text(text[pos:], alpha, rng)
        return ids

    def encode_batch(self, texts, workers: int = 1, **kw) -> list[list[int]]:
        """encode() of each text. In one process, with the default options and no special
        token's text in sight, the per-call checks are done once for the whole list."""
        texts = list(texts)
        if workers > 1 or kw or not self._by_word or any(sp in t for t in texts for sp in self.special_tokens):
            return super().encode_batch(texts, workers, **kw)
        normalize, bare, cache, unk = self.normalizer.normalize, self._bare, self._cache.__getitem__, self.unk_id
        split = [normalize(text).split(SPACE) for text in texts]
        self._cache.fill(chain.from_iterable(islice(parts, 1, None) for parts in split))
        out = []
        words = chain.from_iterable
        for parts in split:
            ids = list(bare[parts[0]]) if parts[0] else []
            ids.extend(words(map(cache, islice(parts, 1, None))))
            if not self.byte_fallback and unk in ids:
                ids = _join_unknowns(ids, unk)
            out.append(ids)
        return out

    def encode_ordinary(self, text: str) -> list[int]:
        return self._encode_text(text, None, None)

    def _encode_text(self, text: str, alpha, rng) -> list[int]:
        s = self.normalizer.normalize(text)
        if alpha is not None:
            return self._ids_of_path(s, self._sample(s, alpha, rng))
        if not self._by_word:
            return self._ids_of_path(s, self._viterbi(s))
        parts = s.split(SPACE)  # every part but the first followed a "▁"
        ids = list(self._bare[parts[0]]) if parts[0] else []
        self._cache.fill(islice(parts, 1, None))
        ids.extend(chain.from_iterable(map(self._cache.__getitem__, islice(parts, 1, None))))
        if not self.byte_fallback and self.unk_id in ids:
            ids = _join_unknowns(ids, self.unk_id)
        return ids

    def encode_pieces(self, text: str, **kw) -> list[str]:
        return [self._pieces[i][0] for i in self.encode(text, **kw)]

    def nbest(self, text: str, n: int) -> list[tuple[list[int], float]]:
        """The n best segmentations of text, best first, each with its score (log-probability)."""
        s = self.normalizer.normalize(text)
        if not s:
            return [([], 0.0)]
        return [(self._ids_of_path(s, path), score) for path, score in self._nbest_paths(s, n)]

    def _nbest_paths(self, s: str, n: int):
        # Each position keeps its n best partial paths, as (score, tiebreak, start, id, rank at start).
        n_pos = len(s)
        kept: list[list] = [[] for _ in range(n_pos + 1)]
        kept[0] = [(0.0, 0, -1, -1, -1)]
        order = 0
        for i, nodes in enumerate(self.lattice(s)):
            for j, pid, score in nodes:
                for r, (sc, *_rest) in enumerate(kept[i]):
                    order += 1
                    kept[j].append((sc + score, -order, i, pid, r))
            if i + 1 <= n_pos:
                kept[i + 1].sort(key=lambda x: (-x[0], -x[1]))
                del kept[i + 1][n:]
            # positions beyond i+1 are trimmed when their turn comes
        out = []
        for sc, _o, i, pid, r in kept[n_pos]:
            path = []
            j = n_pos
            node = (sc, _o, i, pid, r)
            while j > 0:
                _sc, _oo, i2, pid2, r2 = node
                path.append((i2, j, pid2))
                j = i2
                node = kept[i2][r2] if i2 > 0 else None
            path.reverse()
            out.append((path, sc))
        return out

    def _sample(self, s: str, alpha: float, rng: random.Random):
        """One path drawn with probability ∝ exp(alpha * score): forward sums, then backward draws."""
        n = len(s)
        if not n:
            return []
        ending: list[list[tuple[int, int, float]]] = [[] for _ in range(n + 1)]
        for i, nodes in enumerate(self.lattice(s)):
            for j, pid, score in nodes:
                ending[j].append((i, pid, alpha * score))
        fwd = [0.0] + [-math.inf] * n
        for j in range(1, n + 1):
            fwd[j] = _logsumexp([fwd[i] + sc for i, _p, sc in ending[j]])
        path = []
        j = n
        while j > 0:
            weights = [fwd[i] + sc for i, _p, sc in ending[j]]
            top = max(weights)
            r = rng.random() * sum(math.exp(w - top) for w in weights)
            for (i, pid, _sc), w in zip(ending[j], weights):
                r -= math.exp(w - top)
                if r <= 0:
                    break
            path.append((i, j, pid))
            j = i
        path.reverse()
        return path

    # -- decoding and the vocabulary -------------------------------------------
    def decode(self, ids: Iterable[int]) -> str:
        """The text of ids: "▁" becomes " ", the leading one of the dummy prefix is dropped,
        byte pieces are joined and read as UTF-8, <unk> is written " ⁇ "."""
        out: list[str] = []
        pending = bytearray()
        # The dummy prefix's "▁" is dropped; sentencepiece drops every leading
        # "▁" when it also removes extra whitespace, else only that one.
        strip = self.normalizer.add_dummy_prefix
        strip_all = self.normalizer.remove_extra_whitespaces
        for i in self._check_ids(ids):
            p, _s, t = self._pieces[i]
            if t == BYTE:
                pending.append(self._byte_of[i])
                continue
            if pending:
                out.append(_bytes_text(pending))
                pending = bytearray()
                strip = strip and not out[-1]
            if t == CONTROL:
                continue
            text = self.unk_surface if t == UNKNOWN else p
            if strip and text.startswith(SPACE):
                text = text[1:]
                strip = strip_all and not text
            else:
                strip = strip and not text
            out.append(text)
        if pending:
            out.append(_bytes_text(pending))
        return "".join(out).replace(SPACE, " ")

    @property
    def vocab_size(self) -> int:
        return len(self._pieces)

    def id_to_token(self, i: int) -> str:
        return self._pieces[self._check_ids([i])[0]][0]

    def token_to_id(self, token: str) -> int:
        try:
            return self._ids[token]
        except KeyError:
            raise ScratchError(f"{token!r} is not a piece of this tokenizer (spaces are written '▁', "
                               f"' cat' as '▁cat')") from None

    def score(self, i: int) -> float:
        """The piece's score as stored (its log-probability)."""
        return self._pieces[self._check_ids([i])[0]][1]

    def lattice_score(self, i: int) -> float:
        """The score a node of piece i has in the lattice: user-defined pieces get their bonus, <unk> min - 10."""
        if i == self.unk_id:
            return self.unk_score
        hit = self._table.get(self._pieces[self._check_ids([i])[0]][0])
        return hit[1] if hit else self.score(i)

    def piece_type(self, i: int) -> str:
        return TYPE_NAMES[self._pieces[self._check_ids([i])[0]][2]]

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """Each token as written in the vocabulary: '▁cat', 's', '<0xE2>'."""
        return [self._pieces[i][0] for i in self._check_ids(ids)]

    # -- files -----------------------------------------------------------------
    def to_dict(self) -> dict:
        n = self.normalizer
        return {
            "normalization": self.normalization,
            "charsmap": base64.b64encode(n.charsmap).decode("ascii"),
            "add_dummy_prefix": n.add_dummy_prefix,
            "remove_extra_whitespaces": n.remove_extra_whitespaces,
            "byte_fallback": self.byte_fallback,
            "unk_surface": self.unk_surface,
            "pieces": [[p, s, TYPE_NAMES[t]] for p, s, t in self._pieces],
        }

    @classmethod
    def from_file_parts(cls, pieces, normalizer: Normalizer, byte_fallback: bool, normalization: str,
                        unk_surface: str = " \u2047 ") -> "UnigramTokenizer":
        """A tokenizer from what a file reader found: the (piece, score, type) triples, the
        normalizer, whether unknown characters become bytes, and the normalization's name."""
        tok = cls.__new__(cls)
        tok.normalization = normalization
        tok._build(pieces, normalizer, byte_fallback, unk_surface)
        return tok

    @classmethod
    def from_dict(cls, d: dict) -> "UnigramTokenizer":
        charsmap = base64.b64decode(d["charsmap"], validate=True)
        normalizer = Normalizer(charsmap, bool(d["add_dummy_prefix"]), bool(d["remove_extra_whitespaces"]))
        pieces = [(p, float(s), _TYPES[t]) for p, s, t in d["pieces"]]
        return cls.from_file_parts(pieces, normalizer, bool(d["byte_fallback"]), str(d["normalization"]),
                                   str(d.get("unk_surface", " \u2047 ")))

    @classmethod
    def from_hf_dict(cls, data: dict, where) -> "UnigramTokenizer":
        """A tokenizer from a Hugging Face tokenizer.json with a Unigram model (see unigram_hf.py)."""
        return cls.from_file_parts(**read_hf_dict(data, where))

    @classmethod
    def from_sentencepiece(cls, path) -> "UnigramTokenizer":
        """A tokenizer that encodes as sentencepiece does with this .model file."""
        m = read_model(path)
        if not m.escape_whitespaces:
            raise ScratchError(f"{path}: models with escape_whitespaces off are not supported")
        try:
            normalizer = Normalizer(m.charsmap, m.add_dummy_prefix, m.remove_extra_whitespaces)
            return cls.from_file_parts(m.pieces, normalizer, m.byte_fallback, m.normalizer_name or "identity",
                                       m.unk_surface)
        except ScratchError as e:
            raise ScratchError(f"{path}: {e}") from None

    def save_sentencepiece(self, path) -> None:
        """Write a .model file that sentencepiece.SentencePieceProcessor loads and encodes identically."""
        n = self.normalizer
        control = {p: i for i, (p, _s, t) in enumerate(self._pieces) if t == CONTROL}
        spec = trainer_spec(self.vocab_size, self.byte_fallback, self.unk_id, bos_id=control.get("<s>", -1),
                            eos_id=control.get("</s>", -1), unk_piece=self._pieces[self.unk_id][0])
        write_model(ModelFile(pieces=self._pieces, byte_fallback=self.byte_fallback, unk_surface=self.unk_surface,
                              normalizer_name=self.normalization, charsmap=n.charsmap,
                              add_dummy_prefix=n.add_dummy_prefix, remove_extra_whitespaces=n.remove_extra_whitespaces,
                              trainer_raw=spec), path)

    def save_hf(self, directory) -> None:
        """Write tokenizer.json (model "Unigram") and tokenizer_config.json for Hugging Face into a folder."""
        write_hf(self, directory)

    def train(self, text_or_iterable, vocab_size: int, **kw) -> "UnigramTokenizer":
        """Learn pieces and scores by EM until the vocabulary has vocab_size pieces (see unigram_train)."""
        pieces = train_unigram(text_or_iterable, vocab_size, self.normalizer, self.byte_fallback,
                               list(self.special_tokens), **kw)
        self._build(pieces, self.normalizer, self.byte_fallback)
        return self

    def __getstate__(self):
        state = {k: v for k, v in self.__dict__.items() if k not in ("_cache", "_bare", "_special_res")}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._special_res = {}
        self.clear_cache()

    def __repr__(self) -> str:
        return (f"UnigramTokenizer(vocab_size={self.vocab_size}, normalization={self.normalization!r}, "
                f"byte_fallback={self.byte_fallback})")


def _join_unknowns(ids: list[int], unk: int) -> list[int]:
    """ids with each run of unk ids (across words) as one; found by list.index, in C, as they are rare."""
    drop = set()
    k = ids.index(unk) if unk in ids else len(ids)
    while k < len(ids):
        if k and ids[k - 1] == unk:
            drop.add(k)
        try:
            k = ids.index(unk, k + 1)
        except ValueError:
            break
    if not drop:
        return ids
    return [i for k, i in enumerate(ids) if k not in drop]


def _bytes_text(data: bytes) -> str:
    return _utf8_to_text(bytes(data))  # lone surrogates (which encode spells as bytes) come back


def _logsumexp(xs: list[float]) -> float:
    top = max(xs)
    if top == -math.inf:
        return top
    return top + math.log(sum(math.exp(x - top) for x in xs))


class _WordCache(_PieceCache):
    """The cache of words after a "▁", which can also fill itself with many new words at once."""

    BATCH = 16  # fewer new words than this: one at a time

    def __init__(self, compute, compute_many):
        super().__init__(compute)
        self._compute_many = compute_many

    def fill(self, words) -> None:
        """Compute the uncached ones of words (an iterable) together, when there are enough."""
        new = set(words).difference(self.keys())
        new = sorted(w for w in new if len(w) <= _CACHE_PIECE_CHARS)
        if len(new) < self.BATCH:
            return
        if len(self) + len(new) > _CACHE_ENTRIES:
            self.clear()
            new = new[:_CACHE_ENTRIES]
        self.update(zip(new, self._compute_many(new)))
