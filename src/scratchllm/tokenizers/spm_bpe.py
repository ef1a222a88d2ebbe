"""SentencePiece BPE: the tokenizer of Llama 2, Mistral 7B and TinyLlama.

Not byte-level: its tokens are pieces of Unicode text in which a space is
written "▁" (U+2581), such as "▁the" or "ing". Encoding a stretch of text:

1. a space is put in front (``add_space_prefix``: "Hello" is then "▁Hello",
   the same piece as in "say Hello"): at the start of the text and after
   every special token, as llama.cpp does;
2. every space becomes "▁" and each character is a symbol;
3. adjacent symbols whose concatenation is a piece merge, the pair forming
   the piece of highest score first (the leftmost on ties), until none can.
   The scores come with the vocabulary (a GGUF file's
   ``tokenizer.ggml.scores``); a Hugging Face tokenizer.json lists the
   merges in order instead, which is the same ranking written out;
4. a character that is no piece (an emoji, a rare letter) is written as its
   UTF-8 bytes, one byte token ("<0xF0>" ...) each: byte fallback, so that
   nothing is lost.

Step 3 runs over the whole stretch, but when no piece holds a "▁" after
another character (as in SentencePiece models split by whitespace), no
merge can cross the point before a "▁" that follows another character: the
text is cut there into words, each merged alone and remembered, which gives
the same ids much faster.

Decoding joins the pieces, turns "▁" back into spaces and byte tokens into
bytes, and drops the one space step 1 added at the start.

Token types as GGUF numbers them: 1 normal, 2 unknown, 3 control, 4
user-defined, 5 unused, 6 byte.
"""
from __future__ import annotations

import re
from itertools import chain
from typing import Iterable

from ..errors import ScratchError
from .base import Tokenizer, _PieceCache
from .bpe_merge import merge_piece
from .byte_level import readable
from .pretrained import PretrainedTokenizer, added_token

SPACE = "\u2581"
_WORD_START = re.compile("(?<=[^\u2581])(?=\u2581)")  # before a "▁" that follows another character
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def _byte_of(piece: str):
    """<0x0A> -> 10; anything else -> None."""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return int(piece[3:5], 16)
        except ValueError:
            return None
    return None


class SentencePieceBPETokenizer(PretrainedTokenizer, Tokenizer):
    """Pieces with scores (or ranked merges), byte fallback, added tokens, bos/eos and a chat template."""

    type_name = "sentencepiece-bpe"

    def __init__(self, pieces: list[str], types: list[int], scores: list[float] | None = None,
                 merges: list | None = None, add_space_prefix: bool = True, unk_token=None, **pretrained):
        """pieces: every token's text by id; types: GGUF token types; scores: one per piece (merge
        the highest first), or merges: [left, right] pairs in rank order (Hugging Face's form)."""
        if len(types) != len(pieces) or (scores is not None and len(scores) != len(pieces)):
            raise ScratchError(f"{len(pieces)} pieces need as many token types (and scores)")
        if scores is None and merges is None:
            raise ScratchError("a SentencePiece BPE vocabulary needs scores or merges")
        self._pieces = list(pieces)
        self._types = [int(t) for t in types]
        self.scores = None if scores is None else [float(s) for s in scores]
        self.merges = None if merges is None else [list(m) for m in merges]
        self.add_space_prefix = bool(add_space_prefix)
        self._ids = {}
        for i, p in enumerate(self._pieces):
            self._ids.setdefault(p, i)
        self._byte_ids = {}
        for i, (p, t) in enumerate(zip(self._pieces, self._types)):
            b = _byte_of(p) if t in (BYTE, NORMAL, UNUSED) else None
            if b is not None:
                self._byte_ids.setdefault(b, i)
        self._table = self._pair_table()
        self._by_words = not any(_WORD_START.search(p) for p, t in zip(self._pieces, self._types)
                                 if t in (NORMAL, USER_DEFINED))
        self._cache = _PieceCache(self._merge)
        added = [added_token(p, i, special=t == CONTROL) for i, (p, t) in enumerate(zip(self._pieces, self._types))
                 if t in (CONTROL, USER_DEFINED)]
        self._init_pretrained(added, unk_token=unk_token, **pretrained)

    def _pair_table(self) -> dict:
        """(left id, right id) -> (rank, merged id); lower rank merges first (see bpe_merge)."""
        table = {}
        if self.merges is not None:
            for rank, (a, b) in enumerate(self.merges):
                try:
                    table.setdefault((self._ids[a], self._ids[b]), (rank, self._ids[a + b]))
                except KeyError:
                    raise ScratchError(f"the merge {a!r} + {b!r} names a piece the vocabulary does not have") \
                        from None
            return table
        # From scores: every split of a piece into two pieces merges to it, ranked by
        # minus its score, so that the highest score goes first.
        get = self._ids.get
        for z, (piece, t) in enumerate(zip(self._pieces, self._types)):
            if t not in (NORMAL, USER_DEFINED) or self._ids.get(piece) != z:
                continue
            for k in range(1, len(piece)):
                a, b = get(piece[:k]), get(piece[k:])
                if a is not None and b is not None:
                    table[(a, b)] = (-self.scores[z], z)
        return table

    # -- encoding ------------------------------------------------------------------
    def _encode_text(self, text: str, after_special: bool) -> list[int]:
        if self.add_space_prefix and after_special:
            text = " " + text
        text = text.replace(" ", SPACE)
        if self._by_words:
            return list(chain.from_iterable(map(self._cache.__getitem__, _WORD_START.split(text))))
        return self._merge(text)

    def _merge(self, text: str) -> list[int]:
        """Steps 3 and 4 on text whose spaces are already "▁"."""
        unknown: list[str] = []
        ids = []
        for ch in text:
            i = self._ids.get(ch)
            if i is None or self._types[i] not in (NORMAL, USER_DEFINED):
                # A stand-in id no pair matches; -1 is the merge loop's "merged away".
                i = -2 - len(unknown)
                unknown.append(ch)
            ids.append(i)
        if len(ids) > 1:
            ids = merge_piece(ids, self._table)
        if not unknown:
            return ids
        out = []
        for i in ids:
            if i >= 0:
                out.append(i)
            else:
                out += self._fallback(unknown[-2 - i])
        return out

    def _fallback(self, ch: str) -> list[int]:
        data = ch.encode("utf-8", "surrogatepass")
        if all(b in self._byte_ids for b in data):
            return [self._byte_ids[b] for b in data]
        if self.unk_token_id is None:
            raise ScratchError(f"the character {ch!r} has no piece, no byte pieces and this vocabulary no unk token")
        return [self.unk_token_id]

    # -- decoding and the vocabulary ---------------------------------------------------
    def decode_bytes(self, ids: Iterable[int], skip_special_tokens: bool = False) -> bytes:
        out = bytearray()
        for i in self._check_ids(ids):
            t = self._types[i]
            if t == BYTE:
                out.append(_byte_of(self._pieces[i]))
            elif t == CONTROL and skip_special_tokens:
                continue
            else:
                out += self._pieces[i].replace(SPACE, " ").encode("utf-8")
        return bytes(out)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """The text of ids: pieces joined, "▁" as spaces, byte tokens as bytes, the added leading space
        dropped. Bytes that do not form whole UTF-8 characters decode as U+FFFD."""
        text = self.decode_bytes(ids, skip_special_tokens).decode("utf-8", "replace")
        if self.add_space_prefix and text.startswith(" "):
            text = text[1:]
        return text

    @property
    def vocab_size(self) -> int:
        return len(self._pieces)

    def id_to_token(self, i: int) -> str:
        return self._pieces[self._check_ids([i])[0]]

    def token_to_id(self, token: str) -> int:
        try:
            return self._ids[token]
        except KeyError:
            raise ScratchError(f"{token!r} is not a token of this tokenizer (pieces write a space as '▁')") from None

    @property
    def special_tokens(self) -> dict:
        return self._added_ids()

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """Each token as text a person can read: "' the'", "'\\n'" for <0x0A>."""
        out = []
        for i in self._check_ids(ids):
            t, p = self._types[i], self._pieces[i]
            out.append(readable(bytes([_byte_of(p)])) if t == BYTE else
                       p if t == CONTROL else readable(p.replace(SPACE, " ").encode("utf-8")))
        return out

    # -- readers and files -------------------------------------------------------------
    @classmethod
    def from_gguf_parts(cls, meta: dict, tokens, types, ids: dict, template) -> "SentencePieceBPETokenizer":
        scores = meta.get("tokenizer.ggml.scores")
        if scores is None or len(scores) != len(tokens):
            raise ScratchError("the GGUF file's SentencePiece vocabulary has no tokenizer.ggml.scores for its tokens")
        flag = meta.get("tokenizer.ggml.add_space_prefix", True)
        names = {k: tokens[i] for k, i in ids.items()}
        return cls(list(tokens), list(types), scores=list(scores), add_space_prefix=bool(flag),
                   bos_token=names.get("bos"), eos_token=names.get("eos"), pad_token=names.get("pad"),
                   unk_token=names.get("unk"), add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", True)),
                   add_eos_token=bool(meta.get("tokenizer.ggml.add_eos_token", False)), chat_template=template)

    @classmethod
    def from_hf_parts(cls, data: dict, model: dict, merges: list, added: list, cfg: dict, where):
        """From a tokenizer.json whose BPE model has byte_fallback (Llama 2's, Mistral's)."""
        vocab = model["vocab"]
        n = max(list(vocab.values()) + [a["id"] for a in added]) + 1
        pieces, types = [None] * n, [NORMAL] * n
        for p, i in vocab.items():
            pieces[i] = p
            types[i] = BYTE if _byte_of(p) is not None else NORMAL
        for a in added:
            pieces[a["id"]] = a["content"]
            types[a["id"]] = CONTROL if a.get("special", True) else USER_DEFINED
        if any(p is None for p in pieces):
            raise ScratchError(f"{where}: the vocabulary's ids are not 0..{n - 1}")
        if model.get("unk_token") in vocab and types[vocab[model["unk_token"]]] == NORMAL:
            types[vocab[model["unk_token"]]] = UNKNOWN
        add_space_prefix = _prefix_space(data, where)
        cfg = dict(cfg)
        cfg["unk_token"] = cfg.get("unk_token") or model.get("unk_token")
        return cls(pieces, types, merges=merges, add_space_prefix=add_space_prefix, **cfg)

    def save_hf(self, directory) -> None:
        """tokenizer.json (BPE over pieces with byte fallback, as Llama 2's) and tokenizer_config.json
        that transformers reads as this same tokenizer. Merges from scores are written ranked by score;
        equal scores would be ranked by id there, by position here (real vocabularies have none)."""
        if self.merges is not None:
            merges = self.merges
        else:
            ranked = sorted(self._table.items(), key=lambda kv: (kv[1][0], kv[1][1], kv[0]))
            merges = [[self._pieces[a], self._pieces[b]] for (a, b), _ in ranked]
        prefix = [{"type": "Prepend", "prepend": SPACE}] if self.add_space_prefix else []
        strip = [{"type": "Strip", "content": " ", "start": 1, "stop": 0}] if self.add_space_prefix else []
        unk = self.unk_token if self.unk_token is not None else None
        hf = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
              "normalizer": {"type": "Sequence", "normalizers": prefix + [
                  {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}]},
              "pre_tokenizer": None, "post_processor": None,
              "decoder": {"type": "Sequence", "decoders": [
                  {"type": "Replace", "pattern": {"String": SPACE}, "content": " "}, {"type": "ByteFallback"},
                  {"type": "Fuse"}] + strip},
              "model": {"type": "BPE", "dropout": None, "unk_token": unk, "continuing_subword_prefix": None,
                        "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                        "vocab": dict(self._ids), "merges": merges}}
        self._write_hf(directory, hf)

    def to_dict(self) -> dict:
        d = {"pieces": self._pieces, "types": self._types, "scores": self.scores, "merges": self.merges,
             "add_space_prefix": self.add_space_prefix}
        d.update(self._pretrained_dict())
        d.pop("added_tokens")  # they follow from the types
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SentencePieceBPETokenizer":
        return cls(d["pieces"], d["types"], scores=d.get("scores"), merges=d.get("merges"),
                   add_space_prefix=d.get("add_space_prefix", True), **cls._pretrained_kw(d))

    def __getstate__(self):
        # For worker processes: the cache and compiled regexes are rebuilt there.
        return {k: v for k, v in self.__dict__.items() if k not in ("_cache", "_added_res")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._cache = _PieceCache(self._merge)
        self._added_res = {}

    def __repr__(self) -> str:
        return (f"SentencePieceBPETokenizer(vocab_size={self.vocab_size}, bos={self.bos_token!r}, "
                f"eos={self.eos_token!r}, chat_template={'yes' if self.chat_template else 'no'})")


def _prefix_space(data: dict, where) -> bool:
    """Whether a tokenizer.json puts "▁" in front of the text: Llama 2's normalizer (Prepend "▁",
    Replace " " -> "▁") or a Metaspace pre_tokenizer that prepends."""
    norm, pre = data.get("normalizer"), data.get("pre_tokenizer")
    parts = (norm or {}).get("normalizers") or ([norm] if norm else [])
    kinds = [p.get("type") for p in parts]
    if pre is None and set(kinds) <= {"Prepend", "Replace"}:
        return "Prepend" in kinds
    if norm is None and pre and pre.get("type") == "Metaspace" and not pre.get("split", False):
        return pre.get("prepend_scheme", "always") != "never" and pre.get("add_prefix_space", True)
    raise ScratchError(f"{where}: unsupported normalizer/pre_tokenizer for SentencePiece BPE (supported: "
                       f"Prepend + Replace normalizers, or a Metaspace pre_tokenizer without split)")
