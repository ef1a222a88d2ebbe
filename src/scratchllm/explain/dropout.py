"""Dropout at work in one training pass, and switched off in evaluation: at one
place of a GPT or Transformer and one token, the values entering the Dropout
module, the mask it drew, the kept values scaled by 1/(1−p), the values leaving
it, how many were dropped against p, and the same place in evaluation mode.

The numbers are the model's own: two traces (:func:`scratchllm.explain.trace`),
one with ``train=True`` (the Dropout modules drawing from a generator seeded
with ``seed``), one in evaluation mode with its dropout sites recorded.
"""
from __future__ import annotations

import numpy as np

from ..errors import ScratchError
from ..nn import Dropout
from .gpt import token_text, vec
from .trace import trace

DEFAULT_P = 0.1  # shown when the model itself trains without dropout


def dropout_sites(model) -> dict:
    """Where ``model`` drops: {site name in a trace: what enters it}."""
    return model.dropout_sites()


def default_site(model) -> str:
    """The first dropout inside layer 0 (after the embeddings' own, when the model drops there)."""
    sites = list(dropout_sites(model))
    if not sites:
        raise ScratchError(f"this {model.title} has no dropout: nothing to show")
    return next((s for s in sites if ".0." in s), sites[0])


def model_p(model) -> float:
    """The dropout probability the model trains with (its Dropout modules' largest)."""
    return max((m.p for _, m in model.named_modules() if isinstance(m, Dropout)), default=0.0)


def explain_dropout(model, tokenizer, ids, site=None, position=None, p=None, seed=0, full=False,
                    source="") -> str:
    """The printout of ``scratchllm explain dropout``: ``ids`` are a GPT's tokens
    or a Transformer's source (its greedy translation is the decoder's input);
    ``p`` replaces the model's dropout probability for this pass (the model is
    not changed); ``position`` indexes the site's tokens (default: the last)."""
    site = default_site(model) if site is None else site
    sites = dropout_sites(model)
    if site not in sites:
        raise ScratchError(f"--site {site!r} is not a dropout of this model: {', '.join(sites)}")
    own = model_p(model)
    note = ""
    if p is None:
        p = own if own > 0 else DEFAULT_P
        if own == 0:
            note = f"the model trains without dropout (p = 0): shown with p = {p:g} (--p), the model untouched"
    if p == 0:
        raise ScratchError("with p = 0 dropout keeps every number: give a p above 0 (--p)")
    ids = [int(i) for i in ids]
    if not model.is_encoder_decoder:
        inputs, labels = np.array(ids), [token_text(tokenizer, i) for i in ids]
    else:
        from .transformer import greedy_output

        _, produced, bos = greedy_output(model, tokenizer, ids)
        tgt_in = [bos] + produced[:-1]
        inputs = (np.array(ids), np.array(tgt_in))
        labels = [token_text(tokenizer, i) for i in (tgt_in if site.startswith("dec.") else ids)]
    n_tok = len(labels)
    P = n_tok - 1 if position is None else position
    if not 0 <= P < n_tok:
        raise ScratchError(f"--position {P} is out of range: {site} sees {n_tok} token{'s' * (n_tok != 1)} "
                           f"(--position 0 … {n_tok - 1})")

    tr = trace(model, inputs, train=True, seed=seed, p=p)
    ev = trace(model, inputs, dropout_sites=True)
    before, mask, after = (tr[f"{site}.{part}"][0, P].astype(np.float64) for part in ("in", "mask", "out"))
    C = len(before)
    scale = 1 / (1 - p)
    label = labels[P]
    w = max(6, len(label) + 1)
    out = []
    say = out.append
    what = model.title
    say(f"{what}: dropout p = {p:g}" + (" (the model's own)" if p == own else f" (the model's own: {own:g})")
        + (f"; checkpoint {source}" if source else "") + ".")
    if note:
        say(f"Note: {note}.")
    say("Dropout acts only in training: each number is zeroed with probability p and the kept ones are multiplied "
        "by 1/(1 − p), so that on average nothing changes. Every number below is the model's own: a trace of one "
        f"training pass (its Dropout modules drawing from a generator seeded with {seed}, --seed) and one of the "
        "same text in evaluation mode; first 8 numbers of each vector, --full for all.")

    say("")
    say(f"Step 1. Where this {what} drops (--site), and how many numbers each place dropped in this pass")
    width = max(len(s) for s in sites) + 2
    say(f"    {'site':<{width}}{'numbers':>9}{'dropped':>9}{'fraction':>10}   what enters it")
    for name, about in sites.items():
        m = tr[f"{name}.mask"]
        say(f"    {name:<{width}}{m.size:>9}{int(m.size - m.sum()):>9}{1 - m.mean():>10.4f}   {about}")

    say("")
    say(f"Step 2. The mask drawn at {site}, position {P} {label} (--position): each of its {C} numbers is kept "
        f"when its uniform draw u ≥ p = {p:g} (probability {1 - p:g}) and zeroed otherwise; the kept ones are "
        f"multiplied by 1/(1 − p) = {scale:.6f}")
    say(f"    {'index':>7}{'before':>13}{'mask':>6}{'after':>13}")
    shown = range(C) if full else range(min(C, 8))
    for d in shown:
        how = f"= before × {scale:.6f}" if mask[d] else "dropped"
        say(f"    {d:>7}{before[d]:>+13.6f}{int(mask[d]):>6}{after[d] + 0.0:>+13.6f}   {how}")
    if len(shown) < C:
        say(f"    … ({C - len(shown)} more; --full for all)")
    zeroed = np.flatnonzero(mask == 0)
    say(f"    zeroed here: {len(zeroed)} of {C} numbers"
        + (f", at {', '.join(map(str, zeroed[:24]))}" + (" …" if len(zeroed) > 24 else "") if len(zeroed) else ""))
    kept = mask == 1
    if kept.any():
        diff = np.abs(after[kept] * (1 - p) - before[kept]).max()
        say(f"    check: after × (1 − p) = before for every kept number (largest difference {diff:.1e}, "
            "float32 rounding)")

    say("")
    at_site = tr[f"{site}.mask"]
    every = np.concatenate([tr[f"{s}.mask"].reshape(-1) for s in sites])
    spread = np.sqrt(p * (1 - p) / every.size)
    say(f"Step 3. How many were dropped, against p = {p:g}: each number is dropped on its own, so the fraction "
        "comes near p as the count grows")
    rows = [(f"position {P} of {site}", mask), (site, at_site), ("the whole pass", every)]
    width = max(len(r[0]) for r in rows) + 2
    say(f"    {'where':<{width}}{'dropped':>9}{'of':>9}{'fraction':>10}")
    for where, m in rows:
        say(f"    {where:<{width}}{int(m.size - m.sum()):>9}{m.size:>9}{1 - m.mean():>10.4f}")
    say(f"    p = {p:g}; over {every.size} numbers chance alone moves the fraction by about ±{spread:.4f}")

    e_before, e_after = ev[f"{site}.in"][0, P], ev[f"{site}.out"][0, P]
    say("")
    say(f"Step 4. Evaluation mode (model.eval(): generate, translate, the validation loss and explain gpt use it): "
        f"the same text, {site} at position {P}: Dropout hands its input on untouched — no mask, no zeros, no "
        "rescaling")
    say(f"    before  {vec(e_before, full)}")
    say(f"    after   {vec(e_after, full)}")
    same = int(np.sum(e_before == e_after))
    say(f"    after = before in {same} of {C} numbers; zeroed: {int(np.sum((e_after == 0) & (e_before != 0)))}")
    if not np.array_equal(e_before, tr[f"{site}.in"][0, P]):
        say("    (its input differs from the training pass's: dropout earlier in that pass had already changed "
            "the numbers flowing in)")

    probs_t, probs_e = tr["probs"][0, -1].astype(np.float64), ev["probs"][0, -1].astype(np.float64)
    order = np.argsort(-probs_e, kind="stable")[:5]
    say("")
    last = "at the decoder's last step" if model.is_encoder_decoder else f"after {labels[-1]}"
    say(f"Step 5. What the masks did to the output: the next-token probabilities {last}, in evaluation "
        "and in this training pass")
    tw = max(w, max(len(token_text(tokenizer, i)) for i in order) + 1)
    say(f"    {'token':<{tw}}{'id':>7}{'evaluation':>12}{'training':>12}")
    for i in order:
        say(f"    {token_text(tokenizer, i):<{tw}}{int(i):>7}{probs_e[i]:>12.6f}{probs_t[i]:>12.6f}")
    return "\n".join(out)
