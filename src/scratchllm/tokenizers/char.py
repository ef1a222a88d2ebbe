"""CharTokenizer: one token per character, as in char-level language models."""
from __future__ import annotations

from collections import Counter
from typing import Iterable

from ..errors import ScratchError
from .base import Tokenizer
from .byte_level import readable
from .text_input import iter_text

UNK = "<unk>"


class CharTokenizer(Tokenizer):
    """Ids 0..n-1 are the text's distinct characters in code-point order.

    An unknown character is an error by default; with ``unk=True`` it maps
    to an extra ``<unk>`` id (the last one), which decodes as U+FFFD "�".
    """

    type_name = "char"

    def __init__(self, chars: Iterable[str] = (), unk: bool = False):
        chars = list(chars)
        if any(not isinstance(c, str) or len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise ScratchError("CharTokenizer needs distinct single characters")
        self.unk = unk
        self._set_chars(chars)

    def _set_chars(self, chars: list[str]) -> None:
        self.chars = chars
        self._stoi = {c: i for i, c in enumerate(chars)}
        self.unk_id = len(chars) if self.unk else None
        # decode table: the <unk> id writes the replacement character.
        self._itos = chars + (["\ufffd"] if self.unk else [])

    @classmethod
    def from_text(cls, text, unk: bool = False, vocab_size: int | None = None) -> "CharTokenizer":
        """The tokenizer of a text's characters (see train for vocab_size)."""
        return cls(unk=unk).train(text, vocab_size)

    def train(self, text_or_iterable, vocab_size: int | None = None, *, progress: bool = False) -> "CharTokenizer":
        """Learn the characters of a text (a str, a Path to stream, or an iterable of str).

        vocab_size=None keeps every character. A smaller vocab_size keeps the
        most frequent characters (ties: lower code point first) and needs
        unk=True, since the others then become <unk>.
        """
        counts: Counter = Counter()
        for chunk in iter_text(text_or_iterable, progress):
            counts.update(chunk)
        chars = sorted(counts)
        if vocab_size is not None:
            room = vocab_size - (1 if self.unk else 0)
            if room < 1:
                raise ScratchError(f"vocab_size {vocab_size} is too small for a char tokenizer")
            if room < len(chars):
                if not self.unk:
                    raise ScratchError(f"the text has {len(chars)} distinct characters, more than vocab_size "
                                       f"{vocab_size}; raise vocab_size or use unk=True to map the rarest to {UNK}")
                keep = sorted(chars, key=lambda c: (-counts[c], c))[:room]
                chars = sorted(keep)
        self._set_chars(chars)
        return self

    def encode(self, text: str) -> list[int]:
        if self.unk:
            get, unk = self._stoi.get, self.unk_id
            return [get(c, unk) for c in text]
        try:
            return list(map(self._stoi.__getitem__, text))
        except KeyError:
            pos, c = next((i, c) for i, c in enumerate(text) if c not in self._stoi)
            raise ScratchError(f"character {c!r} (U+{ord(c):04X}) at position {pos} is not in this tokenizer's "
                               f"{len(self.chars)} characters; build it with unk=True to map unknown characters "
                               f"to {UNK}") from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(map(self._itos.__getitem__, self._check_ids(ids)))

    @property
    def vocab_size(self) -> int:
        return len(self._itos)

    def id_to_token(self, i: int) -> str:
        i = self._check_ids([i])[0]
        return UNK if i == self.unk_id else self.chars[i]

    def token_to_id(self, token: str) -> int:
        if self.unk and token == UNK:
            return self.unk_id
        if token not in self._stoi:
            raise ScratchError(f"{token!r} is not a token of this tokenizer")
        return self._stoi[token]

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """Each token as text a person can read: 'a', '\\n', <unk>."""
        return [UNK if i == self.unk_id else readable(self.chars[i].encode("utf-8", "surrogatepass"))
                for i in self._check_ids(ids)]

    def to_dict(self) -> dict:
        return {"unk_token": UNK if self.unk else None, "chars": self.chars}

    @classmethod
    def from_dict(cls, d: dict) -> "CharTokenizer":
        chars = d["chars"]
        if not isinstance(chars, list):
            raise ScratchError("'chars' must be a list of characters")
        return cls(chars, unk=d.get("unk_token") is not None)

