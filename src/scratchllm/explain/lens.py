"""The logit lens: what the model would predict if it stopped after each layer.

The residual stream after block i is a vector of the same width as the one the
final norm and the unembedding turn into the prediction, so it can be read
the same way before the last block::

    probs = logit_lens(model, ids)         # (n_layer + 1, B, T, V)
    probs[0]                               # from what enters block 0 (the embeddings)
    probs[i]                               # after i blocks (h.0 … h.{i-1})
    probs[-1]                              # the model's own next-token distribution

Row i is softmax(final_norm(h_i) · Wᵤᵀ), with h_0 what enters the first block
and h_i the stream after block i, read from :func:`scratchllm.explain.trace`
(``emb``, ``h.{i}.resid_2``; a Transformer's decoder: ``dec.in``,
``dec.{i}.out``); ``final_norm`` and the unembedding Wᵤ are the model's own
(``model.final_norm``, ``model.unembedding()``), so any language model
answering that interface has a lens. A layer whose top token is already the
final answer has, in this reading, "made up its mind" there.
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from ..backend import to_numpy
from ..tensor import Tensor, no_grad
from .trace import trace

__all__ = ["logit_lens", "stream_names", "first_top_layer", "explain_lens", "lens_figure"]


def stream_names(model) -> list[str]:
    """The trace names of the residual stream entering block 0 and leaving each block."""
    if getattr(model, "is_encoder_decoder", False):
        return ["dec.in"] + [f"dec.{i}.out" for i in range(model.n_layer)]
    return ["emb"] + [f"h.{i}.resid_2" for i in range(model.n_layer)]


def logit_lens(model, ids, *, trace_=None) -> np.ndarray:
    """(n_layer + 1, B, T, V) next-token probabilities read from the residual stream
    before the first block and after each block. ``ids`` as :func:`trace` takes them
    ((B, T) or (T,); a Transformer: the pair (src_ids, tgt_in_ids)); an existing
    trace of them may be passed as ``trace_``."""
    tr = trace_ if trace_ is not None else trace(model, ids)
    W = model.unembedding()  # (V, C)
    rows = []
    with no_grad():
        for name in stream_names(model):
            h = Tensor(tr[name])  # (B, T, C)
            logits = F.linear(model.final_norm(h), W)  # (B, T, V)
            rows.append(to_numpy(F.softmax(logits).data))
    return np.stack(rows)  # (L + 1, B, T, V)


def first_top_layer(probs) -> np.ndarray:
    """(B, T): the first row of a lens whose top token is the final row's top token
    (0: the embeddings already; n_layer: only the last block gets there)."""
    top = np.asarray(probs).argmax(-1)  # (L + 1, B, T)
    return (top == top[-1]).argmax(0)  # the first True; the last row is always True


def explain_lens(model, tokenizer, ids, top: int = 3, positions=None) -> str:
    """The lens as text: for each position, each layer's ``top`` tokens and their
    probabilities, and the layer where the final answer first comes out on top."""
    from .gpt import token_text

    ids = np.asarray(ids).reshape(-1)
    probs = logit_lens(model, ids[None])[:, 0]  # (L + 1, T, V)
    L, T = probs.shape[0] - 1, probs.shape[1]
    first = first_top_layer(probs[:, None])[0]  # (T,)
    names = ["embeddings"] + [f"after block {i}" for i in range(L)]
    w = max(len(n) for n in names)
    out = [f"Logit lens: each layer's residual stream through the final norm and the unembedding "
           f"({L} blocks, {T} positions); the last row is the model's own prediction."]
    for t in (range(T) if positions is None else positions):
        answer = int(probs[-1, t].argmax())
        out.append(f"\nposition {t}: {token_text(tokenizer, ids[t])} -> next token")
        for layer in range(L + 1):
            order = np.argsort(-probs[layer, t], kind="stable")[:top]
            shown = "  ".join(f"{token_text(tokenizer, i)} {probs[layer, t, i]:.3f}" for i in order)
            out.append(f"  {names[layer]:<{w}}  {shown}")
        where = "the embeddings" if first[t] == 0 else f"block {first[t] - 1}"
        out.append(f"  the final answer {token_text(tokenizer, answer)} is first on top after {where}")
    return "\n".join(out)


def lens_figure(probs, labels=None, batch: int = 0):
    """A plotly heatmap, layer × position: each cell the top token (as text, if ``labels``
    maps ids to strings) coloured by its probability."""
    import plotly.graph_objects as go

    probs = np.asarray(probs)[:, batch]  # (L + 1, T, V)
    top = probs.argmax(-1)  # (L + 1, T)
    p = np.take_along_axis(probs, top[..., None], -1)[..., 0]
    text = [[labels(int(i)) if labels else str(int(i)) for i in row] for row in top]
    y = ["emb"] + [f"block {i}" for i in range(probs.shape[0] - 1)]
    fig = go.Figure(go.Heatmap(z=p, text=text, texttemplate="%{text}", y=y, zmin=0, zmax=1,
                               colorscale="Blues", colorbar=dict(title="p(top)"),
                               hovertemplate="position %{x}, %{y}: %{text} p=%{z:.3f}<extra></extra>"))
    fig.update_layout(title="Logit lens: the top next token after each layer", xaxis_title="position",
                      yaxis_title="layer")
    return fig
