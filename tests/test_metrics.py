"""BLEU: hand-computed values, the 13a rules, and parity with sacreBLEU."""
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchllm.errors import ScratchError
from scratchllm.metrics import bleu, bleu_details, tokenize_13a

try:
    import sacrebleu
except ImportError:  # a test extra: the hand-computed checks still run
    sacrebleu = None
needs_sacrebleu = pytest.mark.skipif(sacrebleu is None, reason="sacrebleu (test extra) is not installed")


def reference_bleu(hyps, refs):
    return sacrebleu.corpus_bleu(hyps, [refs]).score


# --- hand-computed ---------------------------------------------------------

def test_perfect_match_is_100():
    assert bleu(["a b c d e"], ["a b c d e"]) == pytest.approx(100.0)


def test_brevity_penalty_by_hand():
    # All precisions are 1; 4 hypothesis words against 6 reference words.
    assert bleu(["a b c d"], ["a b c d e f"]) == pytest.approx(100 * math.exp(1 - 6 / 4))


def test_precisions_by_hand():
    # 4/5 unigrams, 3/4 bigrams, 2/3 trigrams, 1/2 four-grams, same length.
    expected = 100 * (0.8 * 0.75 * (2 / 3) * 0.5) ** 0.25
    assert bleu(["a b c d x"], ["a b c d y"]) == pytest.approx(expected)


def test_exp_smoothing_by_hand():
    # 3/5 unigrams; no higher-order match: each empty order halves again.
    d = bleu_details(["a x b y c"], ["a b c d e"])
    assert d.matches == [3, 0, 0, 0] and d.totals == [5, 4, 3, 2]
    expected = 100 * (0.6 * (1 / (2 * 4)) * (1 / (4 * 3)) * (1 / (8 * 2))) ** 0.25
    assert d.score == pytest.approx(expected)


def test_clipping_by_hand():
    # "the" six times, but only twice in the reference: unigram precision 2/6.
    d = bleu_details(["the the the the the the"], ["the cat is on the mat"])
    assert d.matches[0] == 2 and d.totals[0] == 6


def test_no_match_and_too_short_give_zero():
    assert bleu(["x y z w"], ["a b c d"]) == 0.0
    assert bleu(["a b c"], ["a b c"]) == 0.0  # no 4-gram exists


def test_mismatched_counts_raise():
    with pytest.raises(ScratchError, match="one reference per hypothesis"):
        bleu(["a", "b"], ["a"])


@pytest.mark.parametrize("line, tokens", [
    ("Hello, world.", ["Hello", ",", "world", "."]),
    ("It costs 3,000.50 today", ["It", "costs", "3,000.50", "today"]),
    ("a 5-year plan", ["a", "5", "-", "year", "plan"]),
    ("well-known it's", ["well-known", "it's"]),
    ("&quot;hi&quot; &amp; &lt;b&gt;", ['"', "hi", '"', "&", "<", "b", ">"]),
    ("x<skipped>y", ["xy"]),
    ("(a)[b]{c}/d:e;f?g!", list("(a)[b]{c}/d:e;f?g!")),
    (".5 and 5.", [".", "5", "and", "5", "."]),
    ("", []),
])
def test_13a_rules(line, tokens):
    assert tokenize_13a(line) == tokens


# --- parity with sacreBLEU -------------------------------------------------

CASES = {
    "partial": (
        ["The cat sat on the mat.", "A man is riding a horse in the field."],
        ["The cat is sitting on the mat.", "A man rides a horse across a field."],
    ),
    "punctuation": (
        ['He said: "Stop!" (twice) -- then left...', "Price: $3,000.50; 5-year plan?", "e.g., a/b & c"],
        ['He said, "stop" twice, and left.', "The price: $3,000.50 for a 5-year plan.", "e.g. a / b &amp; c"],
    ),
    "empty_lines": (
        ["", "two dogs play in the snow .", ""],
        ["a child smiles .", "two dogs are playing in the snow .", "a woman reads a book ."],
    ),
    "short": (["a dog", "man"], ["a dog runs through the grass .", "a man sits on a bench ."]),
    "zero_matches": (["lorem ipsum dolor sit amet"], ["a quick brown fox jumps"]),
    "unicode": (
        ["Ein Mann fährt Fahrrad über die Straße.", "Zwei Hunde – spielen im Schnee…", "日本語 の テキスト です 。"],
        ["Ein Mann fährt mit dem Fahrrad über die Straße.", "Zwei Hunde spielen im Schnee.", "日本語 の テキスト 。"],
    ),
    "longer_hyp": (["the the cat cat sat sat on on the the mat mat"], ["the cat sat on the mat"]),
}


@needs_sacrebleu
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_sacrebleu(name):
    hyps, refs = CASES[name]
    assert bleu(hyps, refs) == pytest.approx(reference_bleu(hyps, refs), abs=0.01)


@needs_sacrebleu
def test_details_match_sacrebleu():
    hyps, refs = CASES["partial"]
    ours, theirs = bleu_details(hyps, refs), sacrebleu.corpus_bleu(hyps, [refs])
    assert ours.matches == list(theirs.counts) and ours.totals == list(theirs.totals)
    assert (ours.hyp_len, ours.ref_len) == (theirs.sys_len, theirs.ref_len)
    assert ours.precisions == pytest.approx(theirs.precisions)
    assert ours.brevity_penalty == pytest.approx(theirs.bp)


_WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "Straße", "über", "3,000.5", "5-year",
          "it's", ".", ",", "!", "?", "(", ")", '"', "&amp;", "-", "$", "...", "x.y", "é"]
_sentence = st.lists(st.sampled_from(_WORDS), max_size=12).map(" ".join)


@needs_sacrebleu
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_sentence, _sentence), min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_random_corpora_match_sacrebleu(pairs, random):
    # Half of the hypotheses copy words from their reference, so that matches occur.
    hyps, refs = [], []
    for hyp, ref in pairs:
        if random.random() < 0.5:
            words = ref.split()
            hyp = " ".join(w for w in words if random.random() < 0.8)
        hyps.append(hyp)
        refs.append(ref)
    assert bleu(hyps, refs) == pytest.approx(reference_bleu(hyps, refs), abs=0.01)


@needs_sacrebleu
@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40))
def test_tokenizer_matches_sacrebleu(line):
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
    assert tokenize_13a(line) == Tokenizer13a()(line.rstrip()).split()
