"""The next-character model worked out for one text: which characters it sees,
their ids, their embeddings, the hidden layer, and the most likely next characters;
then, if asked, a few steps of generation, each prediction fed back into the window.
"""
from __future__ import annotations

import numpy as np

from ..models.charmlp import pad_id_for
from ..tensor import no_grad


def show(ch: str) -> str:
    """A character as the reader should see it: quoted, with \\n and friends escaped."""
    return repr(ch)


def trace_charmlp(model, tokenizer, text: str, top: int = 10) -> dict:
    """Every step of one forward pass predicting the character after ``text``."""
    ids = tokenizer.encode(text)
    pad = pad_id_for(tokenizer)
    window = model.window([ids], pad)[0]                          # (context,)
    C = model.wte.weight.data.astype(np.float64)                  # (V, n_embd)
    rows = C[window]                                              # (context, n_embd)
    x = rows.reshape(-1)                                          # (context·n_embd,)
    h = np.tanh(model.fc.weight.data.astype(np.float64) @ x + model.fc.bias.data)      # (n_hidden,)
    logits = model.head.weight.data.astype(np.float64) @ h + model.head.bias.data      # (V,)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    best = np.argsort(-probs, kind="stable")[:top]
    with no_grad():
        model_logits = model(window[None, :]).data[0].astype(np.float64)
    return {"ids": ids, "window": window, "n_pad": max(0, model.context - len(ids)), "pad_id": pad,
            "embeddings": rows, "x": x, "hidden": h, "logits": logits, "probs": probs, "top": best,
            "model_logits": model_logits}


def _vector(v, digits=2, limit=16) -> str:
    shown = " ".join(f"{a:+.{digits}f}" for a in v[:limit])
    return shown + (f"  … ({len(v) - limit} more)" if len(v) > limit else "")


def explain_charmlp(model, tokenizer, text: str, top: int = 10, source: str = "", generate: int = 0,
                    temperature: float = 0.0, seed: int = 0) -> str:
    t = trace_charmlp(model, tokenizer, text, top)
    T, E, V, Hn = model.context, model.n_embd, model.vocab_size, model.n_hidden
    chars = [tokenizer.decode([int(i)]) for i in t["window"]]
    lines = [f"What comes after {show(text[-40:])}{' (its last 40 characters)' if len(text) > 40 else ''}?",
             f"CharMLP: context {T} characters, {E} numbers per character, {Hn} hidden neurons (tanh), "
             f"{V} characters in the vocabulary" + (f"; weights: {source}" if source else "") + ".",
             "",
             f"Step 1. The context window: the model sees exactly the last {T} characters, each as its id",
             ""]
    width = max(5, max(len(show(c)) for c in chars) + 1)
    lines.append(f"    {'position':<10}" + "".join(f"{p + 1:>{width}}" for p in range(T)))
    lines.append(f"    {'character':<10}" + "".join(f"{show(c):>{width}}" for c in chars))
    lines.append(f"    {'id':<10}" + "".join(f"{int(i):>{width}}" for i in t["window"]))
    if t["n_pad"]:
        where = "position 1 holds" if t["n_pad"] == 1 else f"positions 1–{t['n_pad']} hold"
        lines.append(f"    (the text is shorter than the window: {where} "
                     f"{show(tokenizer.decode([t['pad_id']]))}, as at the start of a text)")
    lines += ["",
              f"Step 2. Embedding: each id picks its row of the table C ({V} × {E}); "
              f"the {T} rows side by side are x ({T * E} numbers)",
              ""]
    for c, i, row in zip(chars, t["window"], t["embeddings"]):
        lines.append(f"    {show(c):>6} id {int(i):<4} {_vector(row)}")
    h = t["hidden"]
    lines += ["",
              f"Step 3. Hidden layer: h = tanh(x·Hᵀ + d), {Hn} numbers between −1 and 1",
              "",
              f"    h = {_vector(h)}",
              f"    {int((np.abs(h) > 0.99).sum())} of {Hn} neurons are saturated (|h| > 0.99)",
              "",
              f"Step 4. Scores: logits = h·Uᵀ + b, one per character; "
              f"probability = e^logit / Σ e^logit (softmax)",
              "",
              f"    {'rank':>4}  {'next':<6}{'id':>5}{'logit':>10}{'probability':>13}"]
    for rank, i in enumerate(t["top"], 1):
        c = tokenizer.decode([int(i)])
        lines.append(f"    {rank:>4}  {show(c):<6}{int(i):>5}{t['logits'][i]:>+10.4f}{100 * t['probs'][i]:>12.2f}%")
    rest = 1.0 - t["probs"][t["top"]].sum()
    if len(t["top"]) < V:
        lines.append(f"    the other {V - len(t['top'])} characters share {100 * rest:.2f}%")
    best = int(t["top"][0])
    gap = np.abs(t["logits"] - t["model_logits"]).max()
    lines += ["",
              f"Most likely next character: {show(tokenizer.decode([best]))}",
              f"Check: the model's own forward pass gives the same logits (largest difference {gap:.1e})."]
    if generate:
        lines += [""] + generation_steps(model, tokenizer, text, generate, temperature, seed)
    return "\n".join(lines)


def generation_steps(model, tokenizer, text: str, n: int, temperature: float = 0.0, seed=0, shown: int = 3) -> list:
    """Generation one character at a time, as ``CharMLP.generate`` does it: the window, the model's
    top next characters, the one chosen (the most likely at temperature 0, else sampled by
    ``generate.sample_next``), appended to the text, and the window moved on by one."""
    from ..generate import sample_next

    rng = np.random.default_rng(seed)
    pad = pad_id_for(tokenizer)
    ids = list(tokenizer.encode(text))
    how = "the most likely each time; --temperature to sample" if temperature == 0 else \
        f"sampled at temperature {temperature:g}, seed {seed}"
    T = model.context
    lines = [f"Step 5. Generation feeds itself: the chosen character is appended to the text and the window "
             f"moves on by one ({n} steps, {how})", ""]
    width = max(T * 2 + 3, 8)
    lines.append(f"    {'step':>4}  {'window':<{width}}  {'top ' + str(shown) + ' next':<33}chosen")
    for k in range(1, n + 1):
        window = model.window([ids], pad)  # (1, context)
        with no_grad():
            logits = model(window).data.astype(np.float64)  # (1, V)
        p = np.exp(logits[0] - logits[0].max())
        p /= p.sum()
        nxt = int(sample_next(logits, temperature, None, None, rng)[0])
        top = np.argsort(-p, kind="stable")[:shown]
        seen = repr(tokenizer.decode([int(i) for i in window[0]]))
        cands = "  ".join(f"{show(tokenizer.decode([int(i)]))} {100 * p[i]:4.1f}%" for i in top)
        lines.append(f"    {k:>4}  {seen:<{width}}  {cands:<33}{show(tokenizer.decode([nxt]))} ({100 * p[nxt]:.1f}%)")
        ids.append(nxt)
    lines += ["", f"    text: {tokenizer.decode(ids)!r}"]
    return lines
