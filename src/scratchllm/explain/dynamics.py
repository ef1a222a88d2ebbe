"""How a model came to be: its heads, parameters and embeddings across the
snapshots of a training run (``scratchllm train --snapshots N``).

Each view is data (NumPy arrays, plain dicts) and a plotly Figure for a
notebook (``fig.show()``)::

    from scratchllm.explain import dynamics as dyn
    scores = dyn.head_scores_over_training("out")        # per head, at every snapshot
    dyn.head_scores_figure(scores).show()
    dyn.param_changes_figure(dyn.param_changes("out", 0, 2000)).show()
    dyn.embedding_map_figure(dyn.embedding_maps("out"), labels=tokens).show()

**Head scores**, from the attention weights w (…, T, T) of one pass, each a
mean over the query positions that have the key it asks about:

- *previous token*: w[t, t−1], the weight on the token just before (t ≥ 1);
- *induction*: on a random sequence of P tokens repeated once, the weight of a
  query t in the second copy on key t − P + 1, the token that followed the
  same token last time: what a head that completes "A B … A → B" looks at;
- *entropy*: −Σⱼ w[t, j] ln w[t, j] in nats; 0 when one key takes all the
  weight, ln(t + 1) when query t spreads it evenly (t ≥ 1: query 0 has one key).

**Parameter changes** between two steps: for every tensor ‖W_b − W_a‖, and that
over the larger of ‖W_a‖ and ‖W_b‖ (so a bias that starts at 0 counts 1, not
infinity; at most 2), the most changed (relatively) first.

**Embeddings map**: each snapshot's token embeddings, centred, projected on
their first two principal axes; each map is then turned by the orthogonal
matrix R = U Vᵀ (U Σ Vᵀ the SVD of Aᵀ B) that best lays it on the previous
one (orthogonal Procrustes: min ‖A R − B‖ over RᵀR = I), so a principal axis
whose sign or order flips between steps does not flip the picture.
"""
from __future__ import annotations

import numpy as np

from ..backend import to_numpy
from ..errors import ScratchError
from .trace import trace

__all__ = ["prev_token_score", "induction_score", "attention_entropy", "repeated_random_ids", "head_scores",
           "head_scores_over_training", "param_changes", "procrustes", "pca_2d", "embedding_maps",
           "snapshot_models", "head_scores_figure", "param_changes_figure", "embedding_map_figure"]

SCORES = ("previous token", "induction", "entropy")


# ---- scores of one attention pattern ---------------------------------------------------------
def prev_token_score(w) -> np.ndarray:
    """(…, T, T) attention weights -> (…): mean over queries t ≥ 1 of the weight on key t − 1."""
    w = np.asarray(w, dtype=np.float64)
    return np.diagonal(w, offset=-1, axis1=-2, axis2=-1).mean(-1)


def induction_score(w, period: int) -> np.ndarray:
    """(…, T, T) weights over a sequence whose second half repeats its first ``period`` tokens
    -> (…): mean over queries t ≥ period of the weight on key t − period + 1."""
    w = np.asarray(w, dtype=np.float64)
    T = w.shape[-1]
    if not 1 <= period < T:
        raise ScratchError(f"the repeat period must be between 1 and {T - 1} (the sequence's length − 1), not {period}")
    return np.diagonal(w, offset=-(period - 1), axis1=-2, axis2=-1)[..., 1:].mean(-1)  # queries period … T−1


def attention_entropy(w) -> np.ndarray:
    """(…, T, T) weights -> (…): mean over queries t ≥ 1 of −Σ w ln w (nats; 0·ln 0 = 0)."""
    w = np.asarray(w, dtype=np.float64)[..., 1:, :]
    logs = np.log(np.where(w > 0, w, 1.0))
    return -(w * logs).sum(-1).mean(-1)


def repeated_random_ids(vocab_size: int, period: int, seed: int = 0) -> np.ndarray:
    """(1, 2·period) ids: ``period`` random tokens, then the same again."""
    half = np.random.default_rng(seed).integers(0, vocab_size, size=period)
    return np.concatenate([half, half])[None]


# ---- scores of a model, and over training ------------------------------------------------------
def _self_attention_names(model) -> list[str]:
    if getattr(model, "is_encoder_decoder", False):
        return [f"dec.{i}.self_attn.weights" for i in range(model.n_layer)]
    return [f"h.{i}.attn.weights" for i in range(model.n_layer)]


def head_scores(model, period: int | None = None, seed: int = 0) -> dict:
    """{score name: (n_layer, n_head)} for each of :data:`SCORES`, measured on a repeated random
    sequence (``period`` tokens twice; default: as long as the context allows, at most 32)."""
    period = period or min(32, model.context_length // 2)
    ids = repeated_random_ids(model.vocab_size, period, seed)
    tr = trace(model, (ids, ids) if getattr(model, "is_encoder_decoder", False) else ids)
    w = np.stack([to_numpy(tr[n])[0] for n in _self_attention_names(model)])  # (L, H, T, T)
    return {"previous token": prev_token_score(w), "induction": induction_score(w, period),
            "entropy": attention_entropy(w)}


def snapshot_models(run, steps=None):
    """(step, model) for each snapshot of run directory ``run`` (or those in ``steps``), one model
    whose weights are replaced from step to step: use each before asking for the next."""
    from .. import checkpoint
    from ..snapshots import list_snapshots, read_snapshot

    found = list_snapshots(run)
    if not found:
        raise ScratchError(f"{run} has no snapshots: train with --snapshots N (N ≥ 2) to keep some")
    model = checkpoint.load(run)
    for step in (found if steps is None else steps):
        model.load_state_dict(read_snapshot(run, step))
        yield step, model


def head_scores_over_training(run, period: int | None = None, seed: int = 0) -> dict:
    """{"steps": (S,), score name: (S, n_layer, n_head)} over the snapshots of ``run``."""
    steps, rows = [], []
    for step, model in snapshot_models(run):
        steps.append(step)
        rows.append(head_scores(model, period, seed))
    return {"steps": np.array(steps)} | {k: np.stack([r[k] for r in rows]) for k in SCORES}


def param_changes(run, step_a: int, step_b: int) -> list[dict]:
    """For each tensor, how much it moved from snapshot ``step_a`` to ``step_b``: dicts of name,
    shape, change ‖W_b − W_a‖, norm max(‖W_a‖, ‖W_b‖) and relative (change / norm; 0 for a
    tensor 0 at both steps), most changed first."""
    from ..snapshots import read_snapshot

    a, b = read_snapshot(run, step_a), read_snapshot(run, step_b)
    out = []
    for name, wa in a.items():
        wa, wb = wa.astype(np.float64), b[name].astype(np.float64)
        change = float(np.linalg.norm(wb - wa))
        norm = max(float(np.linalg.norm(wa)), float(np.linalg.norm(wb)))
        out.append({"name": name, "shape": tuple(wa.shape), "change": change, "norm": norm,
                    "relative": change / norm if norm else 0.0})
    return sorted(out, key=lambda r: -r["relative"])


# ---- the embeddings map -------------------------------------------------------------------------
def procrustes(A, B) -> np.ndarray:
    """The orthogonal R (k, k) minimising ‖A R − B‖ for A, B (n, k): U Vᵀ of the SVD of Aᵀ B."""
    U, _, Vt = np.linalg.svd(np.asarray(A, np.float64).T @ np.asarray(B, np.float64))
    return U @ Vt


def pca_2d(E) -> np.ndarray:
    """(n, C) -> (n, 2): the centred rows on their first two principal axes."""
    E = np.asarray(E, np.float64)
    E = E - E.mean(0)
    _, _, Vt = np.linalg.svd(E, full_matrices=False)
    return E @ Vt[:2].T


def embedding_maps(run_or_tables) -> dict:
    """{"steps": (S,), "xy": (S, V, 2)}: the token embeddings' 2-D map at each snapshot, each
    turned onto the one before. ``run_or_tables``: a run directory, or {step: (V, C) table}."""
    if isinstance(run_or_tables, dict):
        tables = dict(sorted(run_or_tables.items()))
    else:
        tables = {step: to_numpy(model.token_embedding().data).copy() for step, model in snapshot_models(run_or_tables)}
    maps = []
    for E in tables.values():
        xy = pca_2d(E)
        if maps:
            xy = xy @ procrustes(xy, maps[-1])
        maps.append(xy)
    return {"steps": np.array(list(tables)), "xy": np.stack(maps)}


# ---- figures ---------------------------------------------------------------------------------------
def head_scores_figure(scores: dict):
    """Three panels (previous token, induction, entropy), one line per head over the steps."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    steps = np.asarray(scores["steps"])
    fig = make_subplots(rows=1, cols=3, subplot_titles=[s + (" (nats)" if s == "entropy" else "") for s in SCORES])
    L, H = scores[SCORES[0]].shape[1:]
    for col, name in enumerate(SCORES, start=1):
        for layer in range(L):
            for head in range(H):
                fig.add_trace(go.Scatter(x=steps, y=scores[name][:, layer, head], mode="lines+markers",
                                         name=f"layer {layer} head {head}", legendgroup=f"{layer}.{head}",
                                         showlegend=col == 1), row=1, col=col)
    fig.update_xaxes(title_text="step", type="log" if steps.size and steps.max() > 10 else "linear")
    fig.update_layout(title="Heads over training")
    return fig


def param_changes_figure(changes: list[dict], top: int = 20):
    """A bar per tensor (the ``top`` most changed): ‖ΔW‖ / ‖W‖."""
    import plotly.graph_objects as go

    shown = changes[:top][::-1]  # the largest at the top
    fig = go.Figure(go.Bar(x=[c["relative"] for c in shown], y=[c["name"] for c in shown], orientation="h",
                           customdata=[c["change"] for c in shown],
                           hovertemplate="%{y}: ‖ΔW‖/‖W‖ = %{x:.3g} (‖ΔW‖ = %{customdata:.3g})<extra></extra>"))
    fig.update_layout(title="Which parameters changed most", xaxis_title="‖W_b − W_a‖ / max(‖W_a‖, ‖W_b‖)")
    return fig


def embedding_map_figure(maps: dict, labels=None):
    """The embeddings map with a step slider (and play button): one frame per snapshot."""
    import plotly.graph_objects as go

    steps, xy = maps["steps"], maps["xy"]
    text = [labels(i) if callable(labels) else labels[i] for i in range(xy.shape[1])] if labels is not None else None

    def scatter(k):
        return go.Scatter(x=xy[k, :, 0], y=xy[k, :, 1], mode="markers+text" if text else "markers", text=text,
                          textposition="top center", name=f"step {steps[k]}")

    lim = float(np.abs(xy).max()) * 1.1 if xy.size else 1.0
    frames = [go.Frame(data=[scatter(k)], name=str(steps[k])) for k in range(len(steps))]
    slider = {"steps": [{"label": str(s), "method": "animate",
                         "args": [[str(s)], {"mode": "immediate", "frame": {"duration": 0, "redraw": True}}]}
                        for s in steps], "currentvalue": {"prefix": "step "}}
    play = {"type": "buttons", "buttons": [{"label": "play", "method": "animate",
                                            "args": [None, {"frame": {"duration": 400, "redraw": True}}]}]}
    fig = go.Figure(data=[scatter(0)], frames=frames)
    fig.update_layout(title="Token embeddings over training (aligned step to step)", sliders=[slider],
                      updatemenus=[play], xaxis=dict(range=[-lim, lim]), yaxis=dict(range=[-lim, lim]))
    return fig
