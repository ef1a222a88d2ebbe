"""BPETokenizer: byte-level byte-pair encoding.

Text is cut into pre-tokens by a split pattern, each pre-token becomes its
UTF-8 bytes, and learned merges join adjacent tokens into longer ones: with
the merges ("c","a"), ("ca","t"), "cats" becomes "cat" + "s". Every string
has UTF-8 bytes and every byte is a token, so anything encodes and
``decode(encode(s)) == s``.

Two merge rules, both "lowest rank first, leftmost on ties":

- ``"pairs"`` (trained tokenizers, Hugging Face files): only the listed
  merges apply, in list order. This is what training learned, so encoding a
  training text gives exactly the segmentation training ended with.
- ``"ranks"`` (OpenAI's GPT-2 files, as tiktoken reads them): two adjacent
  tokens merge whenever their concatenation is a token, the lower id first,
  and a pre-token that is itself a token is taken whole. This is the rule
  that makes ``from_gpt2`` agree with tiktoken to the token.

Special tokens (``<|endoftext|>``, ``<pad>`` ...) are handled like tiktoken:
their text in the input becomes their id only where ``allowed_special`` says
so; by default (``disallowed_special="all"``) such text is an error, and
with ``disallowed_special=()`` it is encoded as ordinary text.
"""
from __future__ import annotations

from itertools import chain
from typing import Iterable, Mapping

import regex

from ..errors import ScratchError
from .base import Tokenizer, _PieceCache, _utf8_to_text
from .bpe_hf import read_gpt2_files, unmerged_entries, write_hf
from .bpe_merge import merge_piece
from .bpe_train import learn_merges
from .byte_level import BYTE_ORDER, bytes_to_token_str, readable, token_str_to_bytes
from .patterns import GPT2_PATTERN, Splitter, count_pretokens, pattern_name, resolve_pattern
from .text_input import iter_text

MERGE_RULES = ("pairs", "ranks")


class BPETokenizer(Tokenizer):
    """Byte-level BPE. ``BPETokenizer(pattern="gpt2").train(text, 4096)``."""

    type_name = "bpe"

    def __init__(self, pattern: str | None = "gpt2", special_tokens: Iterable[str] = (), merge_rule: str = "pairs"):
        """pattern: 'gpt2', 'gpt4', 'none'/None or a regex. special_tokens: their
        texts; they get the ids after the learned tokens. Untrained, the
        vocabulary is the 256 bytes."""
        if merge_rule not in MERGE_RULES:
            raise ScratchError(f"merge_rule must be one of {MERGE_RULES}, not {merge_rule!r}")
        self.pattern = resolve_pattern(pattern)
        self.merge_rule = merge_rule
        specials = _check_specials(special_tokens)
        base = {i: bytes([b]) for i, b in enumerate(BYTE_ORDER)}
        self._build(base, [], {s: 256 + k for k, s in enumerate(specials)})

    # -- building ------------------------------------------------------------
    def _build(self, tokens: Mapping[int, bytes], merges: list[tuple[int, int, int]], specials: Mapping[str, int],
               missing_byte="error"):
        """Set the whole state from id -> bytes, merges (a, b, merged) and specials.

        missing_byte: what a byte without a token of its own becomes: "error" (refuse the
        vocabulary), an id (an unknown token), or None: nothing, the byte is dropped, as in
        Hugging Face's BPE without an unk token (published vocabularies may lack bytes that
        never occur in UTF-8 text, or rare control characters)."""
        size = len(tokens) + len(specials)
        table: list[bytes | None] = [None] * size
        for i, data in chain(tokens.items(), ((i, s.encode("utf-8")) for s, i in specials.items())):
            if not 0 <= i < size or table[i] is not None:
                raise ScratchError(f"token ids must be 0..{size - 1}, each used once (id {i})")
            table[i] = data
        token_ids = {data: i for i, data in tokens.items()}
        if len(token_ids) != len(tokens):
            raise ScratchError("two tokens have the same bytes")
        missing = [b for b in range(256) if bytes([b]) not in token_ids]
        if missing and missing_byte == "error":
            raise ScratchError(f"not a byte-level vocabulary: no token for byte {missing[0]:#04x}")
        self._id_bytes: list[bytes] = table
        self._token_ids = token_ids
        self._byte_ids = [token_ids.get(bytes([b]), missing_byte) for b in range(256)]
        self._drops_bytes = bool(missing) and missing_byte is None
        self.merges = list(merges)
        self.special_tokens = dict(specials)
        self._special_ids = {i: s for s, i in specials.items()}
        self._splitter = Splitter(self.pattern)
        self._table = self._pair_table()
        self._special_res: dict[frozenset, regex.Pattern] = {}
        self.clear_cache()

    def _pair_table(self) -> dict:
        """(left id, right id) -> (rank, merged id) for the merge loop."""
        table: dict[tuple[int, int], tuple[int, int]] = {}
        if self.merge_rule == "pairs":
            for rank, (a, b, z) in enumerate(self.merges):
                table.setdefault((a, b), (rank, z))
            return table
        # "ranks": every split of every token into two tokens, ranked by the
        # token's id. O(total token length) once, then one lookup per pair.
        get = self._token_ids.get
        for data, z in self._token_ids.items():
            for k in range(1, len(data)):
                a, b = get(data[:k]), get(data[k:])
                if a is not None and b is not None:
                    table[(a, b)] = (z, z)
        return table

    def clear_cache(self) -> None:
        """Forget the cached encodings of pre-tokens."""
        self._cache = _PieceCache(self._encode_piece)

    # -- training ------------------------------------------------------------
    def train(self, text_or_iterable, vocab_size: int, *, progress: bool = False) -> "BPETokenizer":
        """Learn merges until the vocabulary has exactly vocab_size tokens.

        text_or_iterable: the text, a pathlib.Path (file or folder, streamed),
        or an iterable of str read as consecutive parts of one text. The
        vocabulary is the 256 bytes, then the learned tokens, then the
        special tokens. Ties between equally frequent pairs: the smallest
        (left id, right id) wins (see bpe_train).
        """
        specials = list(self.special_tokens)
        n_new = int(vocab_size) - 256 - len(specials)
        if n_new < 0:
            raise ScratchError(f"vocab_size {vocab_size} is too small: byte-level BPE needs 256 byte tokens"
                               f" + {len(specials)} special tokens at least")
        counts = count_pretokens(iter_text(text_or_iterable, progress), self._splitter, specials)
        words = ((w.encode("utf-8", "surrogatepass"), c) for w, c in counts.items())
        base = [bytes([b]) for b in BYTE_ORDER]
        byte_ids = [0] * 256
        for i, b in enumerate(BYTE_ORDER):
            byte_ids[b] = i
        vocab, merges = learn_merges(words, base, byte_ids, n_new, progress)
        if len(vocab) < 256 + n_new:
            raise ScratchError(f"the text allows at most {len(vocab) + len(specials)} tokens (no pair of tokens is "
                               f"left to merge), fewer than vocab_size {vocab_size}: lower it or give more text")
        self._build(dict(enumerate(vocab)), merges, {s: len(vocab) + k for k, s in enumerate(specials)})
        return self

    # -- encoding ------------------------------------------------------------
    def encode(self, text: str, *, allowed_special=(), disallowed_special="all") -> list[int]:
        """Token ids of text.

        allowed_special: "all", or a set of special tokens whose text becomes
        their id. disallowed_special: "all" (default: raise if the text holds
        a special token's text that is not allowed) or a set; () lets such
        text through as ordinary text.
        """
        allowed = self._special_set(allowed_special, "allowed_special")
        disallowed = self._special_set(disallowed_special, "disallowed_special") - allowed
        if disallowed:
            found = self._special_re(disallowed).search(text)
            if found:
                raise ScratchError(
                    f"the text contains the special token {found.group()!r}; pass allowed_special={{{found.group()!r}}}"
                    f" (or 'all') to encode it as its id, or disallowed_special=() to encode it as ordinary text")
        if not allowed:
            return self.encode_ordinary(text)
        ids: list[int] = []
        pos = 0
        for m in self._special_re(allowed).finditer(text):
            ids += self.encode_ordinary(text[pos:m.start()])
            ids.append(self.special_tokens[m.group()])
            pos = m.end()
        ids += self.encode_ordinary(text[pos:])
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of text, special tokens' text included as plain text."""
        pieces = self._splitter.split(text)
        return list(chain.from_iterable(map(self._cache.__getitem__, pieces)))

    def _encode_piece(self, piece: str) -> tuple[int, ...]:
        data = piece.encode("utf-8", "surrogatepass")
        if self.merge_rule == "ranks":
            whole = self._token_ids.get(data)
            if whole is not None:
                return (whole,)
        ids = list(map(self._byte_ids.__getitem__, data))
        if self._drops_bytes:
            ids = [i for i in ids if i is not None]
        if len(ids) > 1:
            ids = merge_piece(ids, self._table)
        return tuple(ids)

    # -- decoding and the vocabulary -------------------------------------------
    def decode(self, ids: Iterable[int]) -> str:
        """The text of ids. Bytes that do not form whole UTF-8 characters
        (a cut-off sequence) decode as U+FFFD."""
        return _utf8_to_text(self.decode_bytes(ids))

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return b"".join(map(self._id_bytes.__getitem__, self._check_ids(ids)))

    @property
    def vocab_size(self) -> int:
        return len(self._id_bytes)

    def token_bytes(self, i: int) -> bytes:
        return self._id_bytes[self._check_ids([i])[0]]

    def id_to_token(self, i: int) -> str:
        """The token as written in vocab files: " cat" is "Ġcat" (see byte_level)."""
        i = self._check_ids([i])[0]
        if i in self._special_ids:
            return self._special_ids[i]
        return bytes_to_token_str(self._id_bytes[i])

    def token_to_id(self, token: str) -> int:
        if token in self.special_tokens:
            return self.special_tokens[token]
        try:
            return self._token_ids[token_str_to_bytes(token)]
        except (ValueError, KeyError):
            raise ScratchError(f"{token!r} is not a token of this tokenizer (tokens are written byte-level, "
                               f"' cat' as 'Ġcat')") from None

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """Each token as text a person can read: 'cat', ' sat', '\\n', '\\xe2'."""
        return [self._special_ids.get(i) or readable(self._id_bytes[i]) for i in self._check_ids(ids)]

    # -- files -----------------------------------------------------------------
    def to_dict(self) -> dict:
        token_str = [None if i in self._special_ids else bytes_to_token_str(t) for i, t in enumerate(self._id_bytes)]
        return {
            "pattern_name": pattern_name(self.pattern),
            "pattern": self.pattern,
            "merge_rule": self.merge_rule,
            "special_tokens": self.special_tokens,
            "vocab": {s: i for i, s in enumerate(token_str) if s is not None},
            "merges": [f"{token_str[a]} {token_str[b]}" for a, b, _ in self.merges],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "BPETokenizer":
        return cls.from_parts(d["vocab"], d["merges"], d.get("special_tokens") or {},
                              pattern=d["pattern"], merge_rule=d.get("merge_rule", "pairs"))

    @classmethod
    def from_parts(cls, vocab: Mapping[str, int], merges: Iterable, special_tokens: Mapping[str, int],
                   pattern: str | None, merge_rule: str = "pairs") -> "BPETokenizer":
        """From byte-level token strings -> ids, merges ("Ġ c" or ["Ġ", "c"]) and specials."""
        tok = cls.__new__(cls)
        if merge_rule not in MERGE_RULES:
            raise ScratchError(f"merge_rule must be one of {MERGE_RULES}, not {merge_rule!r}")
        tok.pattern = resolve_pattern(pattern)
        tok.merge_rule = merge_rule
        tokens: dict[int, bytes] = {}
        for s, i in vocab.items():
            if special_tokens.get(s) == i:
                continue  # HF and GPT-2 vocabularies list the special tokens too
            try:
                tokens[int(i)] = token_str_to_bytes(s)
            except ValueError as e:
                raise ScratchError(str(e)) from None
        ids = {data: i for i, data in tokens.items()}
        triples = []
        for m in merges:
            left, right = m.split(" ") if isinstance(m, str) else m
            a, b = ids[token_str_to_bytes(left)], ids[token_str_to_bytes(right)]
            triples.append((a, b, ids[tokens[a] + tokens[b]]))
        tok._build(tokens, triples, {s: int(i) for s, i in special_tokens.items()})
        return tok

    @classmethod
    def from_file_parts(cls, vocab: dict, merges: list, where, merge_rule: str, specials: dict | None = None,
                        pattern: str | None = GPT2_PATTERN) -> "BPETokenizer":
        """:meth:`from_parts` for what another program's files hold (``bpe_hf.py``), with errors
        naming the file. specials=None: the entries no merge produces (see ``bpe_hf.py``)."""
        try:
            if specials is None:
                specials = unmerged_entries(vocab, merges)
            return cls.from_parts(vocab, merges, specials, pattern=pattern, merge_rule=merge_rule)
        except ScratchError as e:
            raise ScratchError(f"{where}: {e}") from None
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            raise ScratchError(f"{where}: vocabulary and merges do not fit together ({type(e).__name__}: {e})") from None

    @classmethod
    def from_gpt2(cls, encoder_json, vocab_bpe) -> "BPETokenizer":
        """OpenAI's GPT-2 tokenizer from its encoder.json and vocab.bpe (as tiktoken's "gpt2")."""
        return cls.from_file_parts(**read_gpt2_files(encoder_json, vocab_bpe))

    def save_hf(self, directory) -> None:
        """Write the files Hugging Face reads (tokenizer.json ...) into a folder."""
        write_hf(self, directory)

    def __getstate__(self):
        # For worker processes: the cache and compiled regexes are rebuilt there.
        state = {k: v for k, v in self.__dict__.items() if k not in ("_cache", "_special_res", "_splitter")}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._splitter = Splitter(self.pattern)
        self._special_res = {}
        self.clear_cache()

    def __repr__(self) -> str:
        return (f"BPETokenizer(vocab_size={self.vocab_size}, pattern={pattern_name(self.pattern)!r}, "
                f"merge_rule={self.merge_rule!r}, special_tokens={sorted(self.special_tokens)})")


def _check_specials(specials) -> list[str]:
    specials = list(specials)
    if any(not isinstance(s, str) or not s for s in specials) or len(set(specials)) != len(specials):
        raise ScratchError("special tokens must be distinct non-empty strings")
    return specials
