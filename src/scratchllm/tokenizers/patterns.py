"""Split patterns: how text is cut into pre-tokens before BPE runs on each.

BPE never merges across a pre-token boundary, so " cat" and "s" can become
tokens but "t s" cannot. The two patterns below are the published ones:

- ``gpt2``: GPT-2's pattern (contractions, optional space + letters, optional
  space + digits, optional space + other symbols, whitespace runs).
- ``gpt4``: the cl100k pattern of GPT-3.5/4, as ``tiktoken`` has it (one
  equivalent change, below): case-insensitive contractions, digits in groups
  of at most three, newlines kept apart from other whitespace.

The tokenizers of today's open models split with other patterns, added
here as they publish them (their tokenizer.json, and llama.cpp's table for
GGUF files):

- ``llama3``: Llama 3's, the cl100k idea written without possessive
  quantifiers (digits in groups of at most three).
- ``qwen2``: Qwen2's, the same but every digit on its own.
- ``smollm``: two patterns in sequence, as SmolLM2's tokenizer (and
  StarCoder's) runs them: first each digit is cut out on its own, then every
  piece left is split with GPT-2's pattern. A pattern may be such a sequence
  (a tuple): each one splits the pieces the one before it made.

All need the ``regex`` module (``\\p{L}`` is "any letter", ``\\p{N}`` "any
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
LLAMA3_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")
SMOLLM_PATTERN = (r"\p{N}", GPT2_PATTERN)
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN, "llama3": LLAMA3_PATTERN, "qwen2": QWEN2_PATTERN,
            "smollm": SMOLLM_PATTERN, "none": None}
# Patterns known to match every character of any text (no gaps to keep).
_COVERS_ALL = {GPT2_PATTERN, GPT4_PATTERN, LLAMA3_PATTERN, QWEN2_PATTERN}

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


def resolve_pattern(pattern):
    """A name of PATTERNS / None / a regex of one's own / a sequence of them -> the regex,
    a tuple of regexes (applied one after the other), or None."""
    if pattern is None:
        return None
    if isinstance(pattern, (list, tuple)):
        parts = tuple(resolve_pattern(p) for p in pattern)
        if any(not isinstance(p, str) for p in parts):
            raise ScratchError("a sequence of split patterns holds regexes (or names of single patterns) only")
        return parts[0] if len(parts) == 1 else parts
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
    """Cuts text into pre-tokens with one pattern (None: the text is one piece),
    or with a sequence of patterns, each splitting the pieces of the one before."""

    def __new__(cls, pattern=None):
        if isinstance(pattern, tuple):
            return super().__new__(_SequenceSplitter)
        return super().__new__(cls)

    def __init__(self, pattern: str | None):
        self.pattern = pattern
        self._regex = regex.compile(pattern) if pattern is not None else None
        ascii_pattern = _ASCII_VARIANTS.get(pattern)
        self._ascii = re.compile(ascii_pattern) if ascii_pattern else None
        # The published patterns match every character; a custom one may not.
        self._covers_all = pattern in _COVERS_ALL

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


class _SequenceSplitter(Splitter):
    def __init__(self, patterns: tuple):
        self.pattern = patterns
        self._stages = [Splitter(p) for p in patterns]

    def split(self, text: str) -> list[str]:
        pieces = [text] if text else []
        for stage in self._stages:
            pieces = [q for p in pieces for q in stage.split(p)]
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
