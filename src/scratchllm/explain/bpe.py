"""Byte-pair encoding of a text, one merge at a time.

``bpe_steps`` cuts the text into pre-tokens with the tokenizer's own split
pattern, starts each from its UTF-8 bytes and applies the tokenizer's own
merge table the slow, visible way: find the adjacent pair of lowest rank
(leftmost on ties), join it, repeat until no pair is in the table. That is
the rule the fast heap in ``tokenizers/bpe_merge.py`` implements, so the
pieces at the end are those of ``tokenizer.encode``; ``explain_bpe`` prints
the steps.
"""
from __future__ import annotations

from ..errors import ScratchError

RULES = {
    "pairs": "the learned merges, in the order they were learned: rank r is the r-th merge",
    "ranks": "GPT-2's rule: two tokens merge when their concatenation is a token, the lower id "
             "first (rank = that id); a pre-token that is itself a token is taken whole",
}


def _check(tok):
    from ..tokenizers import BPETokenizer

    if not isinstance(tok, BPETokenizer):
        raise ScratchError(f"this is a {type(tok).__name__}, not a BPE tokenizer: it has no merges to show")


def merge_steps(tok, piece: str) -> dict:
    """One pre-token: {"start": byte ids, "steps": [(index, (a, b), rank, merged id, ids after)],
    "ids": the final ids, "whole": id or None (the "ranks" rule's shortcut)}."""
    table = tok._table  # (left id, right id) -> (rank, merged id): the tokenizer's own merge table
    data = piece.encode("utf-8", "surrogatepass")
    ids = [tok._byte_ids[b] for b in data]
    start, steps = list(ids), []
    while len(ids) > 1:
        ranked = [(table[p][0], i) for i, p in enumerate(zip(ids, ids[1:])) if p in table]
        if not ranked:
            break
        rank, i = min(ranked)  # lowest rank, then leftmost
        pair = (ids[i], ids[i + 1])
        ids[i:i + 2] = [table[pair][1]]
        steps.append((i, pair, rank, ids[i], list(ids)))
    whole = tok._token_ids.get(data) if tok.merge_rule == "ranks" else None
    return {"start": start, "steps": steps, "ids": [whole] if whole is not None else ids, "whole": whole}


def bpe_steps(tok, text: str) -> list[tuple[str, dict]]:
    """(pre-token, merge_steps) for each pre-token of ``text``."""
    _check(tok)
    if not text:
        raise ScratchError("the text is empty: give a word, e.g. \"cats\"")
    tok.encode(text)  # refuses special tokens' text the same way encoding does
    return [(piece, merge_steps(tok, piece)) for piece in tok._splitter.split(text)]


def _show(tok, ids) -> str:
    return " ".join(tok.pieces(ids))


def explain_bpe(tok, text: str, source: str = "") -> str:
    """The merges applied to each pre-token of ``text``, one line per merge."""
    pre = bpe_steps(tok, text)
    from ..tokenizers.patterns import pattern_name

    lines = [f"Byte-pair encoding of {text!r}" + (f" with {source}" if source else "")
             + f" (vocabulary {tok.vocab_size}, {len(tok.merges)} merges).",
             "",
             "1. The split pattern cuts the text into pre-tokens; merges never cross their borders.",
             f"   pattern: {pattern_name(tok.pattern) or 'none'}",
             "   pre-tokens: " + " ".join(repr(p) for p, _ in pre),
             "2. Each pre-token starts as its UTF-8 bytes, one token per byte.",
             "3. Repeatedly join the adjacent pair of lowest rank (leftmost on ties), until no pair has a rank.",
             f"   rank: {RULES[tok.merge_rule]}.",
             "   Tokens are shown quoted, as `scratchllm tokenize encode` shows them."]
    all_ids = []
    for n, (piece, s) in enumerate(pre, 1):
        lines += ["", f"pre-token {n} of {len(pre)}: {piece!r}, {len(s['start'])} byte"
                  + ("s" if len(s["start"]) != 1 else "")]
        lines.append(f"    start                          {_show(tok, s['start'])}")
        for k, (_, (a, b), rank, z, after) in enumerate(s["steps"], 1):
            joined = f"merge {_show(tok, [a])} + {_show(tok, [b])}"
            lines.append(f"    {k:>2}. {joined:<25} rank {rank:>6}  →  {_show(tok, after)}")
        merged = s["steps"][-1][4] if s["steps"] else s["start"]
        if s["whole"] is not None and merged != [s["whole"]]:
            lines.append(f"    the pre-token is itself token {s['whole']}, {_show(tok, [s['whole']])}: "
                         "GPT-2's rule takes it whole")
        elif len(merged) == 1:
            lines.append("    one token: done")
        else:
            lines.append("    no adjacent pair has a rank: done")
        all_ids += s["ids"]
    lines += ["",
              f"tokens: {_show(tok, all_ids)}",
              f"ids:    {' '.join(map(str, all_ids))}",
              f"{len(all_ids)} token" + ("s" if len(all_ids) != 1 else "") + f" for {len(text)} character"
              + ("s" if len(text) != 1 else "")]
    lines += _space_note(tok, pre)
    return "\n".join(lines)


def _space_note(tok, pre) -> list[str]:
    """A word at the very start has no space before it; inside a text it has one, and the merges were
    learned on that form: say so when the spaced form is fewer tokens ("cats" → 'c' 'at' 's', " cats" → ' cat' 's')."""
    first, s = pre[0]
    if len(pre) > 1 or not first[:1].isalpha():  # one word alone, as a learner types "cats"
        return []
    spaced = merge_steps(tok, " " + first)["ids"]
    if len(spaced) >= len(s["ids"]):
        return []
    return ["", f"note: {first!r} starts the text, with no space before it. Inside a text the word comes with "
                f"its space, {' ' + first!r},",
            f"      and that is the form the merges learned: {' ' + first!r} → {_show(tok, spaced)}. "
            f"Try \"two {first}\"."]
