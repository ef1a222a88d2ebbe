"""Corpus BLEU (Papineni et al., 2002) with the standard "13a" tokenisation.

One reference per hypothesis. The numbers follow the common convention used
to report translation results: 13a tokens (case kept), clipped 1- to 4-gram
precisions pooled over the corpus, their geometric mean, a brevity penalty,
and "exp" smoothing for orders with no match, so that scores agree with the
usual published figures.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

from .errors import ScratchError

MAX_ORDER = 4

# The four substitution rules of mteval-v13a, applied in order.
# 1. Every ASCII punctuation or symbol except ' , - . becomes its own token:
#    { | } ~   [ \ ] ^ _ `   space ! " # $ % &   ( ) * +   : ; < = > ? @   /
# 2-3. Periods and commas split off unless they sit between digits (3,000.5).
# 4. A dash right after a digit splits off ("5-year" -> "5 - year").
_RULES_13A = [
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
]

# SGML escapes undone before splitting, in the documented order.
_ENTITIES = [("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")]


def tokenize_13a(line: str) -> list[str]:
    """Split one line into tokens the way mteval-v13a does (case preserved)."""
    line = line.rstrip()
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    for entity, char in _ENTITIES:
        line = line.replace(entity, char)
    # The padding spaces matter: they let rule 2 split a leading ".5" into ". 5".
    line = f" {line} "
    for pattern, repl in _RULES_13A:
        line = pattern.sub(repl, line)
    return line.split()


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


@dataclass(frozen=True)
class BleuDetails:
    """Everything that goes into the score, for display."""

    score: float                 # 0-100
    precisions: list[float]      # per order, 0-100, after smoothing
    matches: list[int]           # clipped n-gram matches per order
    totals: list[int]            # hypothesis n-grams per order
    brevity_penalty: float
    hyp_len: int
    ref_len: int

    def __str__(self) -> str:
        precs = "/".join(f"{p:.1f}" for p in self.precisions)
        return (f"BLEU = {self.score:.2f} {precs} (BP = {self.brevity_penalty:.3f} "
                f"ratio = {self.hyp_len / max(self.ref_len, 1):.3f} "
                f"hyp_len = {self.hyp_len} ref_len = {self.ref_len})")


def _count(hypotheses, references):
    """Pool clipped n-gram matches, n-gram totals and lengths over the corpus."""
    matches = [0] * MAX_ORDER
    totals = [0] * MAX_ORDER
    hyp_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references):
        h, r = tokenize_13a(hyp), tokenize_13a(ref)
        hyp_len += len(h)
        ref_len += len(r)
        for n in range(1, MAX_ORDER + 1):
            hyp_grams, ref_grams = _ngrams(h, n), _ngrams(r, n)
            # Clipping: a hypothesis n-gram counts at most as often as in the reference.
            matches[n - 1] += sum(min(c, ref_grams[g]) for g, c in hyp_grams.items())
            totals[n - 1] += max(len(h) - n + 1, 0)
    return matches, totals, hyp_len, ref_len


def _precisions(matches, totals):
    """Per-order precisions in percent; None marks an order with no n-grams at all.

    "exp" smoothing: the k-th order with zero matches gets 1 / (2**k * total)
    instead of 0, so one missing order does not zero a whole corpus.
    """
    precisions, halvings = [], 0
    for m, t in zip(matches, totals):
        if t == 0:
            precisions.append(None)
        elif m == 0:
            halvings += 1
            precisions.append(100.0 / (2 ** halvings * t))
        else:
            precisions.append(100.0 * m / t)
    return precisions


def _brevity_penalty(hyp_len: int, ref_len: int) -> float:
    if hyp_len >= ref_len:
        return 1.0
    return math.exp(1.0 - ref_len / hyp_len) if hyp_len > 0 else 0.0


def bleu_details(hypotheses, references) -> BleuDetails:
    """Corpus BLEU with its parts; see :func:`bleu`."""
    hypotheses, references = list(hypotheses), list(references)
    if len(hypotheses) != len(references):
        raise ScratchError(f"BLEU needs one reference per hypothesis: got {len(hypotheses)} "
                           f"hypotheses and {len(references)} references")
    matches, totals, hyp_len, ref_len = _count(hypotheses, references)
    bp = _brevity_penalty(hyp_len, ref_len)
    precisions = _precisions(matches, totals)
    # No match at any order, or an order the hypotheses are too short to have:
    # the geometric mean is zero (log of zero precision).
    if not any(matches) or None in precisions:
        score = 0.0
    else:
        score = bp * math.exp(sum(math.log(p) for p in precisions) / MAX_ORDER)
    shown = [0.0 if p is None or not any(matches) else p for p in precisions]
    return BleuDetails(score, shown, matches, totals, bp, hyp_len, ref_len)


def bleu(hypotheses, references) -> float:
    """Corpus BLEU, 0-100, one reference string per hypothesis string."""
    return bleu_details(hypotheses, references).score


# sacreBLEU's defaults, which bleu() follows: one reference, cased, no "effective order",
# its 13a tokenizer, exponential smoothing; and the sacreBLEU release its scores are tested against.
SIGNATURE = "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp"
SACREBLEU_VERSION = "2.6.0"


def bleu_signature() -> str:
    """sacreBLEU's signature line for what :func:`bleu` measures, so a score can be compared with
    published ones (sacrebleu itself is a test reference, never needed to compute or print it)."""
    return f"{SIGNATURE}|version:{SACREBLEU_VERSION}"
