"""A unigram tokenizer's choice for one text, worked out: the lattice of every
piece that matches, every segmentation with its log-probability, and the
Viterbi table that finds the best one without listing them all.

``unigram_trace`` computes it with the tokenizer's own lattice and scores;
``explain_unigram`` prints it.
"""
from __future__ import annotations

import math

from ..errors import ScratchError

MAX_CHARS = 40


def _check(tok):
    from ..tokenizers import UnigramTokenizer

    if not isinstance(tok, UnigramTokenizer):
        raise ScratchError(f"this is a {type(tok).__name__}, not a unigram tokenizer: it has no piece scores "
                           f"to show (train one with `scratchllm tokenize train --kind unigram`)")


def unigram_trace(tok, text: str, top: int = 20) -> dict:
    """The normalised text, its lattice, the `top` best segmentations, their count and the Viterbi table."""
    _check(tok)
    s = tok.normalizer.normalize(text)
    if not s:
        raise ScratchError("the text is empty after normalisation: give a word or a few")
    if len(s) > MAX_CHARS:
        raise ScratchError(f"the text is {len(s)} characters after normalisation; explain shows at most "
                           f"{MAX_CHARS}: give a word or a few")
    lattice = tok.lattice(s)
    # count[j]: how many segmentations s[:j] has (a sum over the lattice, no listing needed)
    count = [1] + [0] * len(s)
    for i, nodes in enumerate(lattice):
        for j, _pid, _score in nodes:
            count[j] += count[i]
    # Viterbi, keeping every candidate so the table can show the comparison
    best = [0.0] + [None] * len(s)
    choice: list = [None] * (len(s) + 1)
    candidates: list[list] = [[] for _ in range(len(s) + 1)]
    for i, nodes in enumerate(lattice):
        for j, pid, score in nodes:
            cand = best[i] + score
            candidates[j].append((i, pid, score, cand))
            if best[j] is None or cand > best[j]:
                best[j], choice[j] = cand, (i, pid)
    path = []
    j = len(s)
    while j > 0:
        i, pid = choice[j]
        path.append((i, j, pid))
        j = i
    path.reverse()
    segs = tok._nbest_paths(s, top)
    return {"normalized": s, "lattice": lattice, "count": count[-1], "best": best, "choice": choice,
            "candidates": candidates, "viterbi": path, "segmentations": segs}


def _piece(tok, pid: int, s: str, i: int, j: int) -> str:
    return tok.id_to_token(pid) if pid != tok.unk_id else f"<unk:{s[i:j]}>"


def explain_unigram(tok, text: str, top: int = 20, source: str = "") -> str:
    t = unigram_trace(tok, text, top)
    s = t["normalized"]
    kind = tok.normalization + (", spaces kept" if not tok.normalizer.remove_extra_whitespaces else "")
    lines = [f"How the unigram tokenizer{' ' + source if source else ''} cuts {text!r}",
             f"({tok.vocab_size} pieces, each with a score: its log-probability log p).", "",
             f"Normalised ({kind}): {s!r}: a space is written \"▁\", and one is put in front.", "",
             "Step 1. The lattice: at each position, every piece of the vocabulary that starts there.",
             "  (A character no piece covers would be <unk>, scored min log p - 10.)"]
    for i, nodes in enumerate(t["lattice"]):
        shown = ", ".join(f"{_piece(tok, pid, s, i, j)} ({sc:.2f})" for j, pid, sc in nodes)
        lines.append(f"  {i:2d} {s[i]!r}: {shown}")
    segs = t["segmentations"]
    n = t["count"]
    lines += ["", f"Step 2. Every path through the lattice is a segmentation: {n} in all"
              + (f"; the {len(segs)} most probable:" if n > len(segs) else ":"),
              "  log P(segmentation) = the sum of its pieces' log p (pieces are independent: a unigram model)."]
    for rank, (path, score) in enumerate(segs, 1):
        pieces = [_piece(tok, pid, s, i, j) for i, j, pid in path]
        terms = " + ".join(f"{sc:.2f}" for sc in (tok.lattice_score(pid) for _i, _j, pid in path))
        lines.append(f"  {rank:3d}. {' + '.join(pieces):<40s} {terms} = {score:.2f}")
    lines += ["", "Step 3. Viterbi finds the best without listing them: left to right,",
              "  best[j] = max over pieces ending at j of best[start] + log p(piece); best[0] = 0."]
    for j in range(1, len(s) + 1):
        cands = "; ".join(f"best[{i}] + {_piece(tok, pid, s, i, j)} = {t['best'][i]:.2f} + {sc:.2f} = {c:.2f}"
                          for i, pid, sc, c in t["candidates"][j])
        i, pid = t["choice"][j]
        lines.append(f"  best[{j}] ({s[:j]!r}) = {t['best'][j]:.2f} via {_piece(tok, pid, s, i, j)}   [{cands}]")
    path = t["viterbi"]
    pieces = [_piece(tok, pid, s, i, j) for i, j, pid in path]
    lines += ["", f"Back from the end along the chosen pieces: {' + '.join(pieces)} (log P {t['best'][-1]:.2f})."]
    if len(segs) > 1:
        second = segs[1]
        gap = segs[0][1] - second[1]
        alt = " + ".join(_piece(tok, pid, s, i, j) for i, j, pid in second[0])
        lines.append(f"Why: it beats the next best, {alt} ({second[1]:.2f}), by {gap:.2f} in log-probability: "
                     f"{math.exp(gap):.3g} times as probable.")
    else:
        lines.append("It is the only segmentation.")
    ids = tok.encode(text, disallowed_special=())
    lines.append(f"encode() gives ids {ids}" + (" (unknown characters as bytes)" if tok.byte_fallback and
                                                  any(pid == tok.unk_id for _i, _j, pid in path) else "") + ".")
    return "\n".join(lines)

