"""BPE training: a worked example, what the merges predict, and Hugging Face's trainer."""
import json
import random

import pytest
import regex

from scratchllm.errors import ScratchError
from scratchllm.tokenizers import BPETokenizer, GPT4_PATTERN
from tokenizers_refs import hf_trainer_tokenizer, tiktoken_pattern

# Ids of bytes: GPT-2's order puts the printable bytes 33..126 first, so the
# byte b of a letter has id b - 33: a=64, b=65, c=66, d=67.
A, B, C, D = 64, 65, 66, 67


def test_hand_worked_example():
    # "aaabdaaabac", no split pattern. Pair counts: aa 4, ab 2, bd da ba ac 1.
    # 1. (a,a) -> 256 "aa": merging left to right gives aa a b d aa a b a c.
    #    Now (aa,a) 2, (a,b) 2, others 1.
    # 2. A tie at 2: (a,b) = (64,65) is smaller than (aa,a) = (256,64), so
    #    (a,b) -> 257 "ab": aa ab d aa ab a c. Now (aa,ab) 2, others 1.
    # 3. (aa,ab) -> 258 "aaab": aaab d aaab a c. Four pairs of count 1:
    #    (258,67) (67,258) (258,64) (64,66).
    # 4. The smallest is (a,c) = (64,66) -> 259 "ac".
    tok = BPETokenizer(pattern=None).train("aaabdaaabac", vocab_size=260)
    assert tok.merges == [(A, A, 256), (A, B, 257), (256, 257, 258), (A, C, 259)]
    assert [tok.token_bytes(i) for i in range(256, 260)] == [b"aa", b"ab", b"aaab", b"ac"]
    assert tok.encode("aaabdaaabac") == [258, D, 258, 259]
    assert tok.encode("aaaa") == [256, 256]
    assert tok.encode("ca") == [C, A]


def test_hand_worked_example_with_word_counts():
    # GPT-2 pattern: pre-tokens "low" x1, " low" x2, " lower" x1, " newest" x1.
    # Pairs: (l,o) 4, (o,w) 4, (Ġ,l) 3, ... (l,o)=(75,78) < (o,w)=(78,86): first "lo".
    # Then (lo,w) 4 -> "low"; then (Ġ,low) 3 -> " low" (Ġ, the space, is id 220).
    tok = BPETokenizer("gpt2").train("low low low lower newest", vocab_size=259)
    assert [tok.token_bytes(i) for i in range(256, 259)] == [b"lo", b"low", b" low"]
    assert tok.encode(" lower") == [258, tok.token_to_id("e"), tok.token_to_id("r")]


def test_merge_rules_by_hand():
    # Tokens: bytes, "bc" (b,c), "ab" (a,b), "abc" (ab,c). In "abc", (b,c) has
    # the lowest rank; then (a,bc) is no listed merge: "pairs" stops at a + bc.
    # "ranks" merges any two tokens whose concatenation is a token, and takes
    # a pre-token that is a token whole: "abc".
    base = BPETokenizer(pattern=None)
    vocab = {base.id_to_token(i): i for i in range(256)}
    vocab.update({"bc": 256, "ab": 257, "abc": 258})
    merges = ["b c", "a b", "ab c"]
    pairs = BPETokenizer.from_parts(vocab, merges, {}, pattern=None, merge_rule="pairs")
    ranks = BPETokenizer.from_parts(vocab, merges, {}, pattern=None, merge_rule="ranks")
    assert pairs.encode("abc") == [A, 256]
    assert ranks.encode("abc") == [258]
    # "abcab": (b,c) first, then (a,b) at the end; "ranks" then also joins a + bc.
    assert pairs.encode("abcab") == [A, 256, 257]
    assert ranks.encode("abcab") == [258, 257]


def sequential_merges(words, tok):
    """Reference: apply the merges one after another to every word, left to right."""
    out = []
    for w in words:
        seq = [tok.token_to_id(tok.id_to_token(0))] * 0 + [bytes([b]) for b in w.encode("utf-8")]
        for a, b, z in tok.merges:
            left, right, i, new = tok.token_bytes(a), tok.token_bytes(b), 0, []
            while i < len(seq):
                if i + 1 < len(seq) and seq[i] == left and seq[i + 1] == right:
                    new.append(left + right)
                    i += 2
                else:
                    new.append(seq[i])
                    i += 1
            seq = new
        out += [tok.token_to_id(_as_token_str(tok, s)) for s in seq]
    return out


def _as_token_str(tok, data):
    from scratchllm.tokenizers.byte_level import bytes_to_token_str
    return bytes_to_token_str(data)


def random_text(seed, n_words=1500):
    rng = random.Random(seed)
    syllables = ["ca", "t", "s", "the", "ing", "er", "un", "é", "ß", "猫", " ", "  ", "\n", "1", "23", "'s", ",", "."]
    return "".join(rng.choice(syllables) + (" " if rng.random() < 0.3 else "") for _ in range(n_words))


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_encoding_the_training_text_follows_the_merges(pattern):
    text = random_text(1)
    tok = BPETokenizer(pattern).train(text, 400)
    words = regex.findall(tiktoken_pattern(pattern if pattern == "gpt2" else "cl100k"), text)
    assert tok.encode(text) == sequential_merges(words, tok)


@pytest.mark.parametrize("size", [256, 257, 300, 500])
def test_vocabulary_is_exactly_vocab_size(size):
    tok = BPETokenizer("gpt2", special_tokens=["<|endoftext|>", "<pad>", "<bos>", "<eos>"])
    tok.train(random_text(2), size + 4)
    assert tok.vocab_size == size + 4
    assert len({tok.token_bytes(i) for i in range(tok.vocab_size)}) == size + 4  # no two alike
    assert tok.special_tokens == {"<|endoftext|>": size, "<pad>": size + 1, "<bos>": size + 2, "<eos>": size + 3}


def test_too_large_or_too_small_vocab_is_a_clear_error():
    with pytest.raises(ScratchError, match="allows at most"):
        BPETokenizer("gpt2").train("ab ab", 300)
    with pytest.raises(ScratchError, match="too small"):
        BPETokenizer("gpt2", special_tokens=["<pad>"]).train("ab ab", 256)


def test_special_tokens_are_not_learned_from_text():
    text = ("hello<|endoftext|>" * 50) + "world"
    tok = BPETokenizer("gpt2", special_tokens=["<|endoftext|>"]).train(text, 265)  # all 8 merges of "hello", "world"
    learned = [tok.token_bytes(i) for i in range(256, tok.vocab_size - 1)]
    assert not any(b"<|" in t or b"|>" in t for t in learned)
    ids = tok.encode(text, allowed_special="all")
    assert ids.count(tok.special_tokens["<|endoftext|>"]) == 50


# -- Hugging Face's BPE trainer ------------------------------------------------
#
# Where the rules coincide (byte-level alphabet, the same split, no special
# tokens, minimum frequency 1) both learn the same merges in the same order:
# ties go to the smallest (left id, right id) in both, and both number the
# bytes in GPT-2's order. One intended difference: HF gives special tokens
# the first ids, we give them the last, so byte ids (and thus tie-breaks)
# would differ with special tokens; the comparison is made without them.

def hf_merges_vocab(hf):
    model = json.loads(hf.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return merges, model["vocab"]


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4", "none"])
def test_same_merges_as_hf_trainer_on_generated_text(pattern):
    text = random_text(3, 3000 if pattern != "none" else 600)
    size = 600 if pattern != "none" else 400
    hf = hf_trainer_tokenizer(text, size, {"gpt2": "gpt2", "gpt4": GPT4_PATTERN, "none": None}[pattern])
    ours = BPETokenizer(pattern).train(text, size)
    merges, vocab = hf_merges_vocab(hf)
    assert ours.to_dict()["merges"] == merges
    assert ours.to_dict()["vocab"] == vocab
    assert ours.encode(text) == hf.encode(text).ids


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_same_merges_as_hf_trainer_on_shakespeare(shared_data, pattern):
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:400_000]
    hf = hf_trainer_tokenizer(text, 2000, "gpt2" if pattern == "gpt2" else GPT4_PATTERN)
    ours = BPETokenizer(pattern).train(text, 2000)
    merges, vocab = hf_merges_vocab(hf)
    assert ours.to_dict()["merges"] == merges
    assert ours.to_dict()["vocab"] == vocab
    sample = text[:50_000]
    assert ours.encode(sample) == hf.encode(sample).ids
