"""Split patterns: the published regexes, the ASCII fast path, streamed counting."""
from collections import Counter

import pytest
import regex
from hypothesis import given, settings, strategies as st

from scratchllm.tokenizers.patterns import (GPT2_PATTERN, GPT4_PATTERN, Splitter, count_pretokens,
                                            resolve_pattern)
from scratchllm.errors import ScratchError
from tokenizers_refs import VARIED_TEXTS, tiktoken_pattern

PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}
def pieces_of(parts, max_size):
    """Text made of the given fragments (characters or longer bits), joined."""
    return st.lists(st.sampled_from(parts), max_size=max_size).map("".join)


# ASCII that tries every alternative: contractions in both cases, digit runs,
# every kind of ASCII whitespace, and \x1c-\x1f (whitespace to `re`, not to \s).
ASCII_HEAVY = pieces_of(list("aZ09 '\t\n\r\x0b\x0c\x1c\x1f!.,-sdtmlvrSDTLVRE_")
                        + ["'s", "'LL", "'re", "  ", "\r\n", "123456"], 40)


def tiktoken_split(pattern_name, text):
    return regex.findall(tiktoken_pattern(pattern_name), text)


@pytest.mark.parametrize("name", PATTERNS)
@pytest.mark.parametrize("text", VARIED_TEXTS)
def test_pieces_match_tiktoken_pattern_and_cover_the_text(name, text):
    pieces = Splitter(PATTERNS[name]).split(text)
    assert "".join(pieces) == text
    assert pieces == tiktoken_split(name, text)


@pytest.mark.parametrize("name", PATTERNS)
@settings(max_examples=150, deadline=None)
@given(text=ASCII_HEAVY)
def test_ascii_fast_path_equals_unicode_pattern(name, text):
    fast = Splitter(PATTERNS[name])
    assert fast._ascii is not None
    assert fast.split(text) == regex.findall(PATTERNS[name], text) == tiktoken_split(name, text)


def test_gpt2_pattern_pieces_by_hand():
    assert Splitter(GPT2_PATTERN).split("I'll eat 123 cats!!  ok\n") == \
        ["I", "'ll", " eat", " 123", " cats", "!!", " ", " ok", "\n"]
    assert Splitter(GPT4_PATTERN).split("I'LL eat 12345\n\n") == ["I", "'LL", " eat", " ", "123", "45", "\n\n"]


def test_custom_pattern_keeps_unmatched_text():
    s = Splitter(r"\d+")
    assert s.split("ab12cd3") == ["ab", "12", "cd", "3"]
    assert Splitter(None).split("a b") == ["a b"]
    with pytest.raises(ScratchError, match="not a valid regex"):
        resolve_pattern("(unclosed")


CHUNKY = pieces_of(list("ab1 \n\r\t'sl.é😀") + ["<|eot|>", "<|e", "ot|>", "'ll", "   "], 60)


@pytest.mark.parametrize("hold_back", [3, 64])
@pytest.mark.parametrize("name", ["gpt2", "gpt4", "none"])
@settings(max_examples=100, deadline=None)
@given(text=CHUNKY, cuts=st.lists(st.integers(0, 400), max_size=12))
def test_streamed_counts_equal_whole_text_counts(name, hold_back, text, cuts):
    splitter = Splitter(resolve_pattern(name))
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    chunks = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    specials = ["<|eot|>"]
    whole = Counter()
    for part in regex.split(regex.escape(specials[0]), text):
        whole.update(splitter.split(part))
    assert count_pretokens(chunks, splitter, specials, hold_back) == whole
