"""Split patterns: how text is cut into pre-tokens before BPE runs on each.

BPE never merges across a pre-token boundary, so " cat" and "s" can become
tokens but "t s" cannot. The two patterns below are the published ones:

- ``gpt2``: GPT-2's pattern (contractions, optional space + letters, optional
  space + digits, optional space + other symbols, whitespace runs).
- ``gpt4``: the cl100k pattern of GPT-3.5/4, as ``tiktoken`` has it (one
  equivalent change, below): case-insensitive contractions, digits in groups
  of at most three, newlines kept apart from other whitespace.

Both need the ``regex`` module (``\\p{L}`` is "any letter", ``\\p{N}`` "any
number"). Every character of the text falls in some pre-token, so nothing is
lost; for a custom pattern the characters it does not match are kept as
pre-tokens of their own.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

import regex

from ..errors import ScratchError

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# tiktoken writes the digit group as \p{N}{1,3}+ (possessive); without the
# "+" it means the same, and Oniguruma, the engine of Hugging Face's Split,
# would read "{1,3}+" as "one or more groups" and keep long numbers whole.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN, "none": None}

# The same two patterns for pure-ASCII text, written with explicit ASCII
# classes so that the standard `re` engine can run them: it is about twice as
# fast as `regex` on these patterns, and most English corpora are ASCII. In
# ASCII, \p{L} is [A-Za-z], \p{N} is [0-9] and \s is [\t\n\x0b\x0c\r ] (the
# Unicode White_Space property; `re`'s own \s would add \x1c-\x1f). The tests
# check that each gives the same pieces as its Unicode pattern.
_WS = r"\t\n\x0b\x0c\r "
_ASCII_VARIANTS = {
    GPT2_PATTERN: (
        rf"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^{_WS}A-Za-z0-9]+"""
        rf"""|[{_WS}]+(?![^{_WS}])|[{_WS}]+"""
    ),
    GPT4_PATTERN: (
        rf"""'(?i:[sdmt]|ll|ve|re)|[^\r\nA-Za-z0-9]?[A-Za-z]+|[0-9]{{1,3}}| ?[^{_WS}A-Za-z0-9]+[\r\n]*"""
        rf"""|[{_WS}]+\Z|[{_WS}]*[\r\n]|[{_WS}]+(?![^{_WS}])|[{_WS}]"""
    ),
}


def resolve_pattern(pattern: str | None) -> str | None:
    """'gpt2' / 'gpt4' / 'none' / None / a regex of one's own -> the regex (or None)."""
    if pattern is None:
        return None
    if pattern in PATTERNS:
        return PATTERNS[pattern]
    try:
        regex.compile(pattern)
    except regex.error as e:
        raise ScratchError(f"split pattern {pattern!r} is not a valid regex ({e}); "
                           "use 'gpt2', 'gpt4', 'none' or a valid regex") from None
    return pattern


def pattern_name(pattern: str | None) -> str:
    """The short name of a pattern, or 'custom'."""
    for name, pat in PATTERNS.items():
        if pat == pattern:
            return name
    return "custom"


class Splitter:
    """Cuts text into pre-tokens with one pattern (None: the text is one piece)."""

    def __init__(self, pattern: str | None):
        self.pattern = pattern
        self._regex = regex.compile(pattern) if pattern is not None else None
        ascii_pattern = _ASCII_VARIANTS.get(pattern)
        self._ascii = re.compile(ascii_pattern) if ascii_pattern else None
        # The published patterns match every character; a custom one may not.
        self._covers_all = pattern in _ASCII_VARIANTS

    def split(self, text: str) -> list[str]:
        if self._regex is None:
            return [text] if text else []
        if self._ascii is not None and text.isascii():
            return self._ascii.findall(text)
        if self._covers_all:
            return self._regex.findall(text)
        return self._split_keeping_gaps(text)

    def _split_keeping_gaps(self, text: str) -> list[str]:
        pieces, pos = [], 0
        for m in self._regex.finditer(text):
            if m.start() > pos:
                pieces.append(text[pos:m.start()])
            if m.end() > m.start():
                pieces.append(m.group())
            pos = max(pos, m.end())
        if pos < len(text):
            pieces.append(text[pos:])
        return pieces


# A pre-token's extent depends on a few characters after it (a contraction
# needs up to three, a lookahead one) and on the whole whitespace run it sits
# in. So when text arrives in chunks, the pieces within this many characters
# of the last non-space character of the buffer, and everything after it, are
# held back and split again together with the next chunk. For the published
# patterns 3 would do (the tests check it); 64 leaves room for custom ones.
_HOLD_BACK = 64


def count_pretokens(
    chunks: Iterable[str], splitter: Splitter, specials: Iterable[str] = (), hold_back: int = _HOLD_BACK
) -> Counter:
    """How often each pre-token occurs in a text given as consecutive chunks.

    Gives the same counts as splitting the whole text at once (the tests
    check this with chunk boundaries everywhere). Special tokens' text is cut
    out first, so no merge ever spans or enters one.
    """
    specials = sorted(set(specials), key=len, reverse=True)
    special_re = regex.compile("|".join(regex.escape(s) for s in specials)) if specials else None
    hold = max([hold_back] + [len(s) + 1 for s in specials])
    counts: Counter = Counter()
    if splitter.pattern is None:
        # No pattern: each stretch between special tokens is one sequence.
        text = "".join(chunks)
        parts = special_re.split(text) if special_re else [text]
        counts.update(p for p in parts if p)
        return counts
    carry = ""
    for chunk in chunks:
        buf = carry + chunk
        parts = special_re.split(buf) if special_re else [buf]
        for part in parts[:-1]:
            counts.update(splitter.split(part))
        pieces = splitter.split(parts[-1])
        keep = _held_back(parts[-1], pieces, hold)
        counts.update(pieces[: len(pieces) - keep])
        carry = "".join(pieces[len(pieces) - keep:])
    parts = special_re.split(carry) if special_re else [carry]
    for part in parts:
        counts.update(splitter.split(part))
    return counts


def _held_back(text: str, pieces: list[str], hold: int) -> int:
    """How many trailing pieces of `text` a following chunk could still change."""
    stripped = len(text.rstrip())  # rstrip drops exactly the \s run (Unicode whitespace)
    limit = stripped - hold
    pos, keep = len(text), 0
    while keep < len(pieces) and pos > limit:
        pos -= len(pieces[-1 - keep])
        keep += 1
    return keep
