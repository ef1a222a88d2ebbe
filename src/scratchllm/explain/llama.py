"""What a Llama-family model (Llama, Mistral, Qwen, SmolLM2) does that the GPT
does not, number by number, from the model's own trace: RMSNorm, rotary
positions (RoPE), grouped-query attention (GQA) and the SwiGLU feed-forward.

The ``*_view`` functions return plain dicts of numbers and NumPy arrays (the
model's own values beside the arithmetic redone here in float64), so that a
printout (:func:`explain_llama`) and a web page can show the same numbers.
"""
from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from ..errors import ScratchError
from .gpt import _backward, _norm_module, traced_text, vec

SECTIONS = ("rmsnorm", "rope", "gqa", "swiglu")
NORMS = ("ln_1", "ln_2", "ln_f")


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def _silu(x):
    return x / (1 + np.exp(-x))  # x·σ(x)


# ---- RMSNorm ------------------------------------------------------------------------
def norm_input_name(model, norm: str, layer: int) -> str:
    """The trace name of what the RMSNorm ``norm`` ("ln_1", "ln_2", "ln_f") of ``layer`` reads: the residual stream."""
    if norm == "ln_1":
        return "emb" if layer == 0 else f"h.{layer - 1}.resid_2"
    if norm == "ln_2":
        return f"h.{layer}.resid_1"
    return f"h.{model.n_layer - 1}.resid_2"


def rmsnorm_view(tr, model, layer: int = 0, position: int = -1, norm: str = "ln_1") -> dict:
    """One token's RMSNorm: out = x / √(mean(x²) + eps) × weight.

    ``norm`` "ln_1" (input_layernorm of ``layer``), "ln_2" (post_attention_layernorm) or "ln_f" (the final
    norm; ``layer`` ignored). Returns {name, input_name, position, x (C,) the residual entering it,
    mean (what a layer norm would subtract; RMSNorm does not), mean_square, eps, rms, xhat = x / rms,
    weight (C,) the learned scale, out (C,) = xhat × weight computed here, model_out (C,) the model's own
    (the trace's ``name``), max_diff}. Arrays are float64."""
    name = "ln_f" if norm == "ln_f" else f"h.{layer}.{norm}"
    module = _norm_module(model, name)
    in_name = norm_input_name(model, norm, layer)
    x = _f64(tr[in_name][0, position])
    mean_square = float(np.mean(x * x))
    rms = math.sqrt(mean_square + module.eps)
    xhat = x / rms
    weight = _f64(module.weight.data)
    out = xhat * weight
    model_out = _f64(tr[name][0, position])
    return {"name": name, "input_name": in_name, "position": position % tr[in_name].shape[1],
            "x": x, "mean": float(x.mean()), "mean_square": mean_square, "eps": float(module.eps), "rms": rms,
            "xhat": xhat, "weight": weight, "out": out, "model_out": model_out,
            "max_diff": float(np.abs(out - model_out).max())}


# ---- rotary positions ----------------------------------------------------------------
def rope_thetas(model):
    """(θ, θ before scaling), each (D/2,) float64: the speeds θᵢ = rope_theta^(−2i/D) from the config, and
    what Llama 3's rope_scaling (when the config has one) makes of them."""
    cfg = model.config
    return (F.rope_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling),
            F.rope_frequencies(cfg.head_dim, cfg.rope_theta, None))


def rotate(x, position, theta):
    """``x`` (D,) turned as the model turns a query or key at ``position``: the pair (xᵢ, xᵢ₊D/2) by the angle
    position·θᵢ. float64."""
    x = _f64(x)
    h = x.size // 2
    a = position * theta
    c, s = np.cos(a), np.sin(a)
    return np.concatenate([x[:h] * c - x[h:] * s, x[h:] * c + x[:h] * s])


def _score(q_pre, k_pre, q_pos, k_pos, theta):
    return float(rotate(q_pre, q_pos, theta) @ rotate(k_pre, k_pos, theta)) / math.sqrt(q_pre.size)


def default_shift(context: int, q_pos: int, k_pos: int) -> int:
    """A shift that keeps both positions inside the context: forward by up to 100, else back."""
    ahead = min(100, context - 1 - q_pos)
    return ahead if ahead > 0 else -min(100, k_pos)


def rope_view(tr, model, layer: int = 0, head: int = 0, q_pos: int = -1, k_pos: int = 0, shift=None) -> dict:
    """Rotary positions for query ``q_pos`` and key ``k_pos`` (≤ q_pos) in ``head`` of ``layer``.

    Returns {layer, head, kv_head (the key/value head this query head reads), q_pos, k_pos, shift,
    head_dim D, rope_theta, scaling (the config's rope_scaling or None),
    theta (D/2,) each pair's speed θᵢ (after scaling), theta_unscaled (D/2,),
    q_angle / k_angle (D/2,) the angles q_pos·θᵢ and k_pos·θᵢ in radians,
    q_pre / k_pre (D,) what RoPE receives (the trace's attn.q_pre / k_pre),
    q / k (D,) rotated here, q_model / k_model (D,) the model's rotated q and k (the trace's attn.q / k),
    pair_dot (D/2,) each pair's share of q·k (qᵢkᵢ + qᵢ₊D/2 kᵢ₊D/2), pair_dot_shifted (D/2,) the same with both
    positions shifted (equal: it depends on (q_pos − k_pos)·θᵢ only),
    score = q·k / √D computed here, model_score (the trace's attn.scores),
    rows: [{q_pos, k_pos, distance, score, what}] the same q_pre and k_pre placed at other positions: as given,
    both shifted by ``shift``, both shifted by 1, and at other distances}.
    Pair i is dimensions (i, i + D/2), as Hugging Face pairs them. Arrays float64."""
    T = tr["h.0.attn.q"].shape[2]
    q_pos = q_pos % T
    if not 0 <= k_pos <= q_pos:
        raise ScratchError(f"the key position must be between 0 and the query position {q_pos}, got {k_pos}")
    H, Hkv, D, ctx = model.n_head, model.n_kv_head, model.head_dim, model.context_length
    if shift is None:
        shift = default_shift(ctx, q_pos, k_pos)
    if not (0 <= q_pos + shift < ctx and 0 <= k_pos + shift < ctx):
        raise ScratchError(f"shift {shift} moves the positions {k_pos} and {q_pos} outside the model's context "
                           f"0 … {ctx - 1}")
    g = head * Hkv // H
    theta, theta0 = rope_thetas(model)
    q_pre = _f64(tr[f"h.{layer}.attn.q_pre"][0, head, q_pos])
    k_pre = _f64(tr[f"h.{layer}.attn.k_pre"][0, g, k_pos])
    q, k = rotate(q_pre, q_pos, theta), rotate(k_pre, k_pos, theta)
    h = D // 2
    qs, ks = rotate(q_pre, q_pos + shift, theta), rotate(k_pre, k_pos + shift, theta)
    rows = [(q_pos, k_pos, "as in the text"), (q_pos + shift, k_pos + shift, f"both shifted by {shift}")]
    one = 1 if q_pos + 1 < ctx else -1 if k_pos > 0 else 0
    if one:
        rows.append((q_pos + one, k_pos + one, f"both shifted by {one}"))
    for other in (k_pos - 1, k_pos + 1):  # the key moved: another distance
        if 0 <= other <= q_pos:
            rows.append((q_pos, other, "the key moved: another distance"))
    if shift:
        rows.append((q_pos + shift, k_pos, "only the query shifted"))
    return {"layer": layer, "head": head, "kv_head": g, "q_pos": q_pos, "k_pos": k_pos, "shift": shift,
            "head_dim": D, "rope_theta": float(model.config.rope_theta), "scaling": model.config.rope_scaling,
            "theta": theta, "theta_unscaled": theta0, "q_angle": q_pos * theta, "k_angle": k_pos * theta,
            "q_pre": q_pre, "k_pre": k_pre, "q": q, "k": k,
            "q_model": _f64(tr[f"h.{layer}.attn.q"][0, head, q_pos]),
            "k_model": _f64(tr[f"h.{layer}.attn.k"][0, g, k_pos]),
            "pair_dot": q[:h] * k[:h] + q[h:] * k[h:], "pair_dot_shifted": qs[:h] * ks[:h] + qs[h:] * ks[h:],
            "score": float(q @ k) / math.sqrt(D),
            "model_score": float(tr[f"h.{layer}.attn.scores"][0, head, q_pos, k_pos]),
            "rows": [{"q_pos": a, "k_pos": b, "distance": a - b, "score": _score(q_pre, k_pre, a, b, theta),
                      "what": what} for a, b, what in rows]}


# ---- grouped-query attention ---------------------------------------------------------
def gqa_view(model) -> dict:
    """Which query heads share each key/value head, and the KV cache's size.

    Returns {n_head, n_kv_head, group_size, head_dim, n_layer, context_length, bytes_per_number (the model's
    dtype), groups: [{kv_head, query_heads: [...]}], bytes_per_token = 2 (k and v) × layers × n_kv_head ×
    head_dim × bytes, bytes_per_token_mha (one key/value head per query head), bytes_context and
    bytes_context_mha (× context_length), ratio = n_head / n_kv_head}."""
    H, Hkv, D, L, ctx = model.n_head, model.n_kv_head, model.head_dim, model.n_layer, model.context_length
    b = int(model.token_embedding().data.dtype.itemsize)
    G = H // Hkv
    per, per_mha = 2 * L * Hkv * D * b, 2 * L * H * D * b
    return {"n_head": H, "n_kv_head": Hkv, "group_size": G, "head_dim": D, "n_layer": L, "context_length": ctx,
            "bytes_per_number": b,
            "groups": [{"kv_head": g, "query_heads": list(range(g * G, (g + 1) * G))} for g in range(Hkv)],
            "bytes_per_token": per, "bytes_per_token_mha": per_mha,
            "bytes_context": per * ctx, "bytes_context_mha": per_mha * ctx, "ratio": H / Hkv}


# ---- SwiGLU --------------------------------------------------------------------------
def swiglu_view(tr, model, layer: int = 0, position: int = -1) -> dict:
    """One token's gated feed-forward: down(silu(gate(x)) × up(x)).

    Returns {layer, position, x (C,) its input (the trace's h.{layer}.ln_2), gate (I,) the model's
    (h.{layer}.mlp.gate), gate_computed (I,) = x · W_gateᵀ (+ b) here, sigmoid (I,) σ(gate) = 1/(1 + e^−gate),
    silu (I,) = gate × σ(gate) computed here, silu_model (I,) (mlp.silu), up (I,) the model's (mlp.up),
    prod (I,) = silu × up computed here, prod_model (I,) (mlp.prod), out (C,) = prod_model · W_downᵀ (+ b)
    computed here, out_model (C,) (mlp.out), max_diff {gate, silu, prod, out}}. Arrays float64."""
    mlp = model.model.layers[layer].mlp

    def project(lin, a):
        y = a @ _f64(lin.weight.data).T
        return y + _f64(lin.bias.data) if getattr(lin, "bias", None) is not None else y

    p = f"h.{layer}.mlp."
    x = _f64(tr[f"h.{layer}.ln_2"][0, position])
    gate, up = _f64(tr[p + "gate"][0, position]), _f64(tr[p + "up"][0, position])
    sig = 1 / (1 + np.exp(-gate))
    silu = gate * sig
    prod = silu * up
    prod_model = _f64(tr[p + "prod"][0, position])
    out = project(mlp.down_proj, prod_model)
    view = {"layer": layer, "position": position, "x": x, "gate": gate, "gate_computed": project(mlp.gate_proj, x),
            "sigmoid": sig, "silu": silu, "silu_model": _f64(tr[p + "silu"][0, position]), "up": up, "prod": prod,
            "prod_model": prod_model, "out": out, "out_model": _f64(tr[p + "out"][0, position])}
    view["max_diff"] = {"gate": float(np.abs(view["gate_computed"] - gate).max()),
                        "silu": float(np.abs(silu - view["silu_model"]).max()),
                        "prod": float(np.abs(prod - prod_model).max()),
                        "out": float(np.abs(out - view["out_model"]).max())}
    return view


def plain(view):
    """A view with its arrays as lists of floats (for JSON)."""
    if isinstance(view, dict):
        return {k: plain(v) for k, v in view.items()}
    if isinstance(view, (list, tuple)):
        return [plain(v) for v in view]
    if isinstance(view, np.ndarray):
        return view.astype(float).tolist()
    return view.item() if isinstance(view, np.generic) else view


# ---- the printout ----------------------------------------------------------------------
def _bytes(n: int) -> str:
    """Exact bytes, and in KB / MB / GB (powers of 1000) when that many."""
    exact, size = f"{n:,} bytes", float(n)
    for unit in ("KB", "MB", "GB"):
        size /= 1000
        if size < 1000 or unit == "GB":
            return exact if n < 1000 else f"{exact} ({size:,.1f} {unit})"


def _indices(n, full, shown=8):
    return range(n) if full else range(min(n, shown))


def explain_llama(model, tokenizer, ids, layer=0, head=0, position=None, key_position=None, shift=None,
                  show=SECTIONS, norm="ln_1", full=False, target=None, lr=None, source="") -> str:
    """The printout of ``scratchllm explain llama`` for token ``ids``: the sections in ``show`` (of
    :data:`SECTIONS`; ``norm`` of :data:`NORMS` picks the RMSNorm shown), then, with ``target`` (the id that
    should follow ``position``), the backward pass and one SGD step."""
    ids = np.asarray(ids, dtype=np.int64)
    T, L, C = len(ids), model.n_layer, model.n_embd
    P = T - 1 if position is None else position
    K = 0 if key_position is None else key_position
    tr, names, w = traced_text(model, tokenizer, ids, P, target)
    out = []
    say = out.append
    cfg = model.config
    say(f"{model.title}: {L} layers, {model.n_head} query heads and {model.n_kv_head} key/value heads of "
        f"{model.head_dim} numbers, width {C}, MLP {cfg.intermediate_size}, vocabulary {model.vocab_size}, "
        f"context {model.context_length} tokens" + (f"; checkpoint {source}" if source else "") + ".")
    say("It is the GPT with four changes: RMSNorm, rotary positions (RoPE), grouped-query attention, SwiGLU. "
        "Every number is the model's own (a trace of its forward pass), with the arithmetic redone beside it; "
        "first 8 numbers of each vector, --full for all. `scratchllm explain gpt` shows the rest (attention "
        "head by head, the next token).")
    say("    " + "  ".join(f"{t}:{s}" for t, s in enumerate(names)))
    step = 0

    if "rmsnorm" in show:
        step += 1
        v = rmsnorm_view(tr, model, layer, P, norm)
        which = {"ln_1": f"layer {layer}'s input_layernorm", "ln_2": f"layer {layer}'s post_attention_layernorm",
                 "ln_f": "the final norm"}[norm]
        say("")
        say(f"Step {step}. RMSNorm: {which} ({v['name']}) at position {P} {names[P]} (--norm, --layer). "
            "A layer norm subtracts the mean and divides by the std; RMSNorm only divides by the root mean square, "
            "then multiplies by a learned scale (no shift)")
        say(f"    its input x is the residual stream ({v['input_name']}), {C} numbers: {vec(v['x'], full)}")
        say(f"    mean(x²) = (x₀² + x₁² + … + x_{C - 1}²) / {C} = {v['mean_square']:.6f}")
        say(f"    rms = √(mean(x²) + eps) = √({v['mean_square']:.6f} + {v['eps']:g}) = {v['rms']:.6f}"
            f"   (the mean {v['mean']:+.6f} is not subtracted)")
        say(f"    {'i':>5}{'x':>12}{'x²':>12}{'x / rms':>12}{'× weight':>12}{'= out':>12}{'model':>12}")
        for i in _indices(C, full):
            say(f"    {i:>5}{v['x'][i]:>+12.6f}{v['x'][i] ** 2:>12.6f}{v['xhat'][i]:>+12.6f}{v['weight'][i]:>+12.6f}"
                f"{v['out'][i]:>+12.6f}{v['model_out'][i]:>+12.6f}")
        if not full and C > 8:
            say(f"    … ({C - 8} more; --full for all)")
        xr = math.sqrt(float(np.mean(v['xhat'] ** 2)))
        say(f"    x / rms has root mean square {xr:.6f}; the output differs from the model's by at most "
            f"{v['max_diff']:.1e}")

    if "rope" in show:
        step += 1
        v = rope_view(tr, model, layer, head, P, K, shift)
        D, h = v["head_dim"], v["head_dim"] // 2
        say("")
        say(f"Step {step}. Rotary positions (RoPE), layer {layer}, query head {head} (reads key/value head "
            f"{v['kv_head']}), query at position {P} {names[P]}, key at position {K} {names[K]} (--position, "
            "--key-position). No position vector is added to the tokens: each query and key is turned, pair of "
            f"numbers by pair, by an angle position × θᵢ. Pair i is dimensions (i, i + {h}).")
        scaling = v["scaling"]
        say(f"    θᵢ = rope_theta^(−2i/D) = {v['rope_theta']:g}^(−2i/{D})"
            + (f", then Llama 3 scaling ({scaling.get('rope_type', scaling.get('type'))}: factor "
               f"{scaling['factor']:g}, slow pairs slowed; the column 'unscaled' is before it)" if scaling else ""))
        say(f"    {'pair':>5}{'θᵢ':>12}" + (f"{'unscaled':>12}" if scaling else "")
            + f"{'q angle':>11}{'k angle':>11}   q before → after (model's)          k before → after (model's)")
        for i in _indices(h, full):
            qb, kb = (v["q_pre"][i], v["q_pre"][i + h]), (v["k_pre"][i], v["k_pre"][i + h])
            qa, ka = (v["q"][i], v["q"][i + h]), (v["k"][i], v["k"][i + h])
            qm, km = (v["q_model"][i], v["q_model"][i + h]), (v["k_model"][i], v["k_model"][i + h])
            say(f"    {i:>5}{v['theta'][i]:>12.6g}" + (f"{v['theta_unscaled'][i]:>12.6g}" if scaling else "")
                + f"{v['q_angle'][i]:>11.4f}{v['k_angle'][i]:>11.4f}"
                f"   ({qb[0]:+.3f},{qb[1]:+.3f})→({qa[0]:+.3f},{qa[1]:+.3f}) ({qm[0]:+.3f},{qm[1]:+.3f})"
                f"   ({kb[0]:+.3f},{kb[1]:+.3f})→({ka[0]:+.3f},{ka[1]:+.3f}) ({km[0]:+.3f},{km[1]:+.3f})")
        if not full and h > 8:
            say(f"    … ({h - 8} more pairs; --full for all)")
        say("    a pair (a, b) turned by angle φ: (a·cos φ − b·sin φ, b·cos φ + a·sin φ); the model's rotated q and k "
            f"differ from this by at most {max(np.abs(v['q'] - v['q_model']).max(), np.abs(v['k'] - v['k_model']).max()):.1e}")
        say(f"    score = q·k / √{D} = {v['score']:+.6f}   (the model's score {v['model_score']:+.6f})")
        group = [h for h in range(model.n_head) if h * model.n_kv_head // model.n_head == v["kv_head"]]
        if len(group) > 1:
            say(f"    query heads {', '.join(map(str, group))} all score against this same key "
                f"(key/value head {v['kv_head']}: grouped-query attention)")
        say(f"    Why only the distance counts: turning q by m·θᵢ and k by n·θᵢ changes each pair's share of q·k by "
            f"the difference (m − n)·θᵢ only. Each pair's share at positions ({P}, {K}) and shifted by {v['shift']}:")
        say(f"    {'pair':>5}{'(m − n)·θᵢ':>14}{'at ' + str((P, K)):>16}{'at ' + str((P + v['shift'], K + v['shift'])):>16}")
        for i in _indices(h, full):
            say(f"    {i:>5}{v['q_angle'][i] - v['k_angle'][i]:>14.4f}{v['pair_dot'][i]:>+16.6f}"
                f"{v['pair_dot_shifted'][i]:>+16.6f}")
        if not full and h > 8:
            say(f"    … ({h - 8} more pairs)")
        say("    The same q and k (before rotation) placed at other positions, the score computed again:")
        say(f"    {'query pos':>9}{'key pos':>9}{'distance':>10}{'score':>14}   ")
        for r in v["rows"]:
            say(f"    {r['q_pos']:>9}{r['k_pos']:>9}{r['distance']:>10}{r['score']:>+14.6f}   {r['what']}")
        say("    same distance, same score; another distance, another score")

    if "gqa" in show:
        step += 1
        v = gqa_view(model)
        say("")
        say(f"Step {step}. Grouped-query attention: {v['n_head']} query heads read {v['n_kv_head']} key/value heads, "
            f"{v['group_size']} query heads per key/value head"
            + (" (every head its own: ordinary multi-head attention)" if v["group_size"] == 1 else
               " (one key/value head for all: multi-query attention)" if v["n_kv_head"] == 1 else ""))
        for grp in v["groups"]:
            say(f"    key/value head {grp['kv_head']}: query heads {', '.join(map(str, grp['query_heads']))}")
        b, ctx = v["bytes_per_number"], v["context_length"]
        say(f"    the KV cache keeps, per token, a key and a value per key/value head in each layer: "
            f"2 × {v['n_layer']} layers × {v['n_kv_head']} heads × {v['head_dim']} numbers × {b} bytes = "
            f"{_bytes(v['bytes_per_token'])}")
        say(f"    with one key/value head per query head it would be 2 × {v['n_layer']} × {v['n_head']} × "
            f"{v['head_dim']} × {b} = {_bytes(v['bytes_per_token_mha'])}")
        say(f"    for the full context of {ctx:,} tokens: {_bytes(v['bytes_context'])} instead of "
            f"{_bytes(v['bytes_context_mha'])}, {v['ratio']:g}× smaller")

    if "swiglu" in show:
        step += 1
        v = swiglu_view(tr, model, layer, P)
        I = v["gate"].size
        say("")
        say(f"Step {step}. SwiGLU, layer {layer}'s MLP at position {P} {names[P]}: two projections of the token "
            f"(x = ln_2's output, {C} numbers → {I} each); silu(gate) decides how much of up passes; then down "
            f"projects the product back to {C}")
        say(f"    x = {vec(v['x'], full)}")
        say("    silu(g) = g × σ(g), σ(g) = 1 / (1 + e^−g)")
        say(f"    {'j':>5}{'gate':>11}{'σ(gate)':>11}{'silu':>11}{'model':>11}{'up':>11}{'silu×up':>11}"
            f"{'model':>11}")
        for j in _indices(I, full):
            say(f"    {j:>5}{v['gate'][j]:>+11.5f}{v['sigmoid'][j]:>11.5f}{v['silu'][j]:>+11.5f}"
                f"{v['silu_model'][j]:>+11.5f}{v['up'][j]:>+11.5f}{v['prod'][j]:>+11.5f}{v['prod_model'][j]:>+11.5f}")
        if not full and I > 8:
            say(f"    … ({I - 8} more; --full for all)")
        closed = int(np.sum(np.abs(v["silu"]) < 0.05 * np.abs(v["silu"]).max()))
        say(f"    {closed} of {I} gates are nearly shut (|silu| under 5% of the largest); silu lets a little "
            f"through below 0 (its minimum is −0.2785 at g = −1.2785)")
        say(f"    down: out = (silu × up) · W_downᵀ = {vec(v['out'], full)}")
        say(f"          the model's mlp.out     = {vec(v['out_model'], full)}")
        d = v["max_diff"]
        say(f"    largest differences from the model: gate {d['gate']:.1e} (x · W_gateᵀ), silu {d['silu']:.1e}, "
            f"product {d['prod']:.1e}, out {d['out']:.1e}")

    if target is not None:
        out += _backward(model, tr, tokenizer, ids, tr.targets[0], names, P, target, lr, full, 10, w,
                         first=step + 1)
    return "\n".join(out)
