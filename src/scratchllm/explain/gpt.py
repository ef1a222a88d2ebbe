"""A GPT — or any decoder-only language model (a Llama, Qwen, Mistral …: no
position vectors, key/value heads shared by groups of query heads, a gated
MLP) — worked out for one text, in the order of the article: tokens, embeddings,
each block, one attention head number by number, the final layer norm, the
next-token distribution and how sampling reshapes it; with a target, the
backward pass and one SGD step.

Every number shown is the model's own, read from :func:`scratchllm.explain.trace`;
where arithmetic is written out (q·k term by term, the softmax's exponentials,
the weighted sum of values) the model's own result is printed beside it.
"""
from __future__ import annotations

import math
import unicodedata

import numpy as np

from ..generate import distribution
from .step import chosen_lr, loss_curve, plot_curve, step_copy, verdict
from .trace import trace


def token_text(tokenizer, i: int) -> str:
    return repr(tokenizer.decode([int(i)]))


def vec(v, full=False, n=8, fmt="{:+.4f}") -> str:
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    shown = v if full else v[:n]
    text = " ".join(fmt.format(x) for x in shown)
    return text + (f" … ({len(v) - n} more)" if len(v) > len(shown) else "")


def attention_arithmetic(q, k, v, scores, weights, y, head, query_label, key_labels, w, full=False) -> list:
    """One query's attention written out, as lines: the query ``q`` (D,), each
    key ``k`` (N, D), the products q·k term by term, × 1/√D, the softmax, and
    the weighted sum of the values ``v`` (N, D). ``scores``, ``weights`` (N,)
    and ``y`` (D,) are the model's own (from a trace), printed beside the
    arithmetic done here; ``w`` is the width of the label column."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    D, n = len(q), len(k)
    out = []
    say = out.append
    say(f"    query of {query_label}:  q = {vec(q, full)}")
    for j in range(n):
        say(f"    key   {j:>3} {key_labels[j]:<{w}} k = {vec(k[j], full)}")
    scale = 1 / math.sqrt(D)
    say(f"  scores: q·k = Σ q_d × k_d over the {D} numbers, then × 1/√{D} = {scale:.6f}")
    for j in range(n):
        terms = [f"({a:+.3f}×{b:+.3f})" for a, b in zip(q, k[j])]
        shown = " + ".join(terms if full else terms[:3]) + ("" if full or D <= 3 else f" + … ({D - 3} more)")
        dot = float(q @ k[j])
        say(f"    key {j:>3} {key_labels[j]:<{w}} {shown} = {dot:+.4f};  × {scale:.4f} = {dot * scale:+.4f}"
            f"   model's score {float(scores[j]):+.6f}")
    top_s = float(np.max(scores))
    e = np.exp(scores.astype(np.float64) - top_s)
    say(f"  softmax: weight = e^(score − max) / Σ e^(score − max), max = {top_s:+.4f}, Σ = {e.sum():.6f}")
    for j in range(n):
        say(f"    key {j:>3} {key_labels[j]:<{w}} score {float(scores[j]):+.6f}  e^(score−max) {e[j]:.6f}  "
            f"weight {float(weights[j]):.6f}")
    say(f"    the weights sum to {float(np.asarray(weights, dtype=np.float64).sum()):.6f}")
    say("  the weighted sum of the values: y = Σ weight × v")
    for j in range(n):
        say(f"    {float(weights[j]):.6f} × v {j:>3} {key_labels[j]:<{w}} {vec(v[j], full)}")
    say(f"    = y of head {head}:            {vec(y, full)}")
    return out


def _param_name(model, param) -> str:
    """The short name of a parameter of ``model`` (its module's name: "wte", "embed_tokens", "lm_head")."""
    name = next(n for n, p in model.named_parameters() if p is param)
    return name.rsplit(".", 2)[-2] if "." in name else name


def _rms(v):
    v = np.asarray(v, dtype=np.float64)
    return float(np.sqrt(np.mean(v * v)))


def _mean_std(v):
    v = np.asarray(v, dtype=np.float64)
    return v.mean(), v.std()


def _norm_module(model, name: str):
    """The LayerNorm or RMSNorm recorded under the trace name ``name`` ("ln_f", "h.0.ln_1")."""
    for path, module in model.named_modules():
        if path and model.public_name(path) == name:
            return module
    raise KeyError(name)


def _normalised(x, norm):
    """(x̂, divisor): a layer norm's (x − mean) / √(var + eps), or an RMSNorm's x / √(mean(x²) + eps),
    before the learned scale (and shift). Written out here; the model's own output is printed beside."""
    x = np.asarray(x, dtype=np.float64)
    if getattr(norm, "bias", "rms") == "rms":  # an RMSNorm has a scale and no shift
        d = math.sqrt(float(np.mean(x * x)) + norm.eps)
        return x / d, d
    d = math.sqrt(float(x.var()) + norm.eps)
    return (x - x.mean()) / d, d


def _is_rms(norm) -> bool:
    return getattr(norm, "bias", "rms") == "rms"


def _stats(v, rms: bool) -> str:
    """A vector's mean and std (a layer norm's view), or its root mean square (an RMSNorm's)."""
    return f"rms {_rms(v):.4f}" if rms else "mean {:+.4f} std {:.4f}".format(*_mean_std(v))


def _row(label: str, stats: str, v, full) -> str:
    pad = 34 + sum(1 for c in label if unicodedata.combining(c))  # x̂ is two code points, one column
    return f"    {label:<{pad}}{stats:<28}{vec(v, full)}"


def norm_arithmetic(x, norm, out, full=False) -> list:
    """A norm worked out on one token's vector in the order it happens: the input; the normalised
    vector x̂ (a layer norm: mean 0, std 1; an RMSNorm: root mean square 1); the learned scale; the
    learned shift (a layer norm with a bias). The model's own output ``out`` closes it, with the
    largest difference from the arithmetic."""
    x = np.asarray(x, dtype=np.float64)
    xhat, d = _normalised(x, norm)
    rms = _is_rms(norm)
    lines = [_row("1. its input x", _stats(x, rms), x, full)]
    if rms:
        lines.append(f"    2. divide by the root mean square √(mean(x²) + eps) = {d:.4f}:")
        lines.append(_row("   x̂ = x / rms", _stats(xhat, rms), xhat, full))
    else:
        lines.append(f"    2. subtract the mean {x.mean():+.4f}, divide by the std √(var + eps) = {d:.4f}:")
        lines.append(_row("   x̂ = (x − mean) / std", _stats(xhat, rms), xhat, full))
    result = xhat * norm.weight.data.astype(np.float64)
    lines.append(_row("3. scale: x̂ × weight (learned)", _stats(result, rms), result, full))
    if not rms and norm.bias is not None:
        result = result + norm.bias.data.astype(np.float64)
        lines.append(_row("4. shift: + bias (learned)", _stats(result, rms), result, full))
    out = np.asarray(out, dtype=np.float64)
    lines.append(_row("   the model's own output", "", out, full)
                 + f"   (largest difference {np.abs(out - result).max():.1e})")
    return lines


def traced_text(model, tokenizer, ids, position, target=None):
    """The trace of ``ids`` (B = 1), its loss that of ``target`` after ``position`` alone (none without
    one); the tokens as printed, and the width of a column that holds each."""
    targets = None
    if target is not None:
        targets = np.full(len(ids), -100, dtype=np.int64)
        targets[position] = target
    names = [token_text(tokenizer, i) for i in ids]
    return trace(model, ids, targets), names, max(6, max(len(s) for s in names) + 1)


def explain_gpt(model, tokenizer, ids, layer=0, head=0, position=None, full=False, target=None, lr=None,
                temperature=1.0, top_k=None, top_p=None, top=10, source="") -> str:
    """The printout of ``scratchllm explain gpt`` for token ``ids`` (a list);
    ``target`` is the id of the token that should come after ``position``; ``lr``
    the learning rate of its SGD step (None: the one that lowers the loss most)."""
    ids = np.asarray(ids, dtype=np.int64)
    T, C, H, L, V = len(ids), model.n_embd, model.n_head, model.n_layer, model.vocab_size
    D, H_kv = model.head_dim, model.n_kv_head
    P = T - 1 if position is None else position
    tr, names, w = traced_text(model, tokenizer, ids, P, target)
    out = []
    say = out.append
    learned = getattr(getattr(model, "config", None), "positional", None) == "learned"
    table, head_table = _param_name(model, model.token_embedding()), _param_name(model, model.unembedding())
    kv = f" sharing {H_kv} key/value heads" if H_kv != H else ""

    say(f"{model.title}: {L} layers, {H} heads of {D} numbers{kv} (width C = {C}), vocabulary {V}, "
        f"block {model.context_length} tokens" + (f"; checkpoint {source}" if source else "") + ".")
    say(f"Every number below is the model's own (a trace of its forward{' and backward' if target is not None else ''} "
        "pass, in evaluation mode); first 8 numbers of each vector, --full for all.")

    say("")
    say("Step 1. The text as tokens, each with its id (its row in the embedding table)")
    say(f"    {'position':>8}  {'token':<{w}}{'id':>7}")
    for t, (s, i) in enumerate(zip(names, ids)):
        say(f"    {t:>8}  {s:<{w}}{int(i):>7}")

    say("")
    if "pos_emb" in tr:
        pos_what = "its row of the learned table wpe" if learned else "the fixed sinusoidal row of its position"
        say(f"Step 2. Embeddings: each token's row of {table} ({V} × {C}) plus {pos_what} = the row entering block 0")
    else:
        say(f"Step 2. Embeddings: each token's row of {table} ({V} × {C}) is the row entering block 0; no position "
            "vector is added (positions enter inside attention, where q and k are rotated by their position)")
    for t, s in enumerate(names):
        say(f"    {t:>3} {s:<{w}} token     {vec(tr['tok_emb'][0, t], full)}")
        if "pos_emb" in tr:
            say(f"    {'':>3} {'':<{w}} position  {vec(tr['pos_emb'][t], full)}")
        say(f"    {'':>3} {'':<{w}} = x       {vec(tr['emb'][0, t], full)}")

    say("")
    ln_1 = [_norm_module(model, f"h.{i}.ln_1") for i in range(L)]
    rms = _is_rms(ln_1[0])
    what = "root mean square" if rms else "mean and std"
    say(f"Step 3. The {L} blocks at position {P} {names[P]}: x + attention(ln_1(x)), then + MLP(ln_2(x)); "
        f"the residual stream's length |x|, and ln_1 in the order it happens: its input's {what}, the "
        f"normalised x̂ ({'root mean square 1' if rms else 'mean 0, std 1'}), then after the learned scale"
        f"{'' if rms else ' and shift'}")
    x_in = tr["emb"][0, P]
    short = []  # layers whose x̂ falls short of std 1: eps matters next to a tiny variance
    for i in range(L):
        xhat, _ = _normalised(x_in, ln_1[i])
        x_out = tr[f"h.{i}.resid_2"][0, P]
        say(f"    layer {i}: |x| {np.linalg.norm(x_in):9.4f} → {np.linalg.norm(x_out):9.4f}   "
            f"ln_1: x {_stats(x_in, rms)} → x̂ {_stats(xhat, rms)} → out {_stats(tr[f'h.{i}.ln_1'][0, P], rms)}")
        if _rms(xhat) < 0.9995:
            short.append(str(i))
        x_in = x_out
    if short:
        say(f"    (layer {', '.join(short)}: x̂ falls short of {'a root mean square' if rms else 'a std'} of 1 "
            f"because eps = {ln_1[0].eps:g} is added under the square root, and this input's numbers are small)")

    say("")
    say(f"Step 4. Attention in layer {layer}, head {head}, for position {P} {names[P]} "
        f"(--layer, --head, --position): it sees positions 0 … {P}")
    g = head * H_kv // H  # the key/value head this query head reads (grouped-query attention: shared)
    if H_kv != H:
        say(f"    query heads {g * H // H_kv} … {(g + 1) * H // H_kv - 1} share key/value head {g}: "
            f"the cache keeps {H_kv} heads of keys and values instead of {H}")
    if f"h.{layer}.attn.q_pre" in tr:  # rotary positions: q and k were turned by their positions' angles
        say(f"    q and k below are rotated by their positions (RoPE), which is how this model sees order; the "
            f"query before its rotation: {vec(tr[f'h.{layer}.attn.q_pre'][0, head, P], full)} "
            "(`scratchllm explain llama` turns it pair by pair)")
    q = tr[f"h.{layer}.attn.q"][0, head, P]  # (D,)
    k = tr[f"h.{layer}.attn.k"][0, g, :P + 1]  # (P+1, D)
    v = tr[f"h.{layer}.attn.v"][0, g, :P + 1]
    scores = tr[f"h.{layer}.attn.scores"][0, head, P, :P + 1]
    weights = tr[f"h.{layer}.attn.weights"][0, head, P, :P + 1]
    y_head = tr[f"h.{layer}.attn.y"][0, P, head * D:(head + 1) * D]
    out += attention_arithmetic(q, k, v, scores, weights, y_head, head, names[P], names[:P + 1], w, full)
    say("")
    say(f"Step 5. The {H} heads side by side (y, {H} × {D} = {H * D} numbers), then the output projection "
        f"({C} × {H * D}) mixes them")
    y = tr[f"h.{layer}.attn.y"][0, P]
    for h in range(H):
        say(f"    head {h}: {vec(y[h * D:(h + 1) * D], full, n=4)}")
    say(f"    out = y · W_oᵀ (+ b) = {vec(tr[f'h.{layer}.attn.out'][0, P], full)}")

    say("")
    say(f"Step 6. The residual add (layer {layer}, position {P}): the block's input plus the attention's output")
    x_prev = tr["emb"] if layer == 0 else tr[f"h.{layer - 1}.resid_2"]
    say(f"    x         {vec(x_prev[0, P], full)}")
    say(f"    + out     {vec(tr[f'h.{layer}.attn.out'][0, P], full)}")
    say(f"    = x       {vec(tr[f'h.{layer}.resid_1'][0, P], full)}")
    if f"h.{layer}.mlp.gate" in tr:  # a gated MLP (SwiGLU): silu(x·W_gateᵀ) × x·W_upᵀ, then W_down
        inner = tr[f"h.{layer}.mlp.up"].shape[-1]
        say(f"    then ln_2, the gated MLP (silu(gate) × up, {C} → {inner} → {C}) and a second residual add:")
    else:
        say(f"    then ln_2, the MLP ({C} → {tr[f'h.{layer}.mlp.fc'].shape[-1]} with GELU → {C}) and a second "
            "residual add:")
    say(f"    + mlp     {vec(tr[f'h.{layer}.mlp.out'][0, P], full)}")
    say(f"    = x       {vec(tr[f'h.{layer}.resid_2'][0, P], full)}")

    say("")
    ln_f = _norm_module(model, "ln_f")
    kind = ("an RMSNorm: divide by the root mean square, then a learned scale" if _is_rms(ln_f) else
            "a layer norm: subtract the mean, divide by the standard deviation, then a learned scale"
            + (" and shift" if ln_f.bias is not None else ""))
    say(f"Step 7. The final norm ln_f at position {P}, {kind}")
    out += norm_arithmetic(tr[f"h.{L - 1}.resid_2"][0, P], ln_f, tr["ln_f"][0, P], full)

    logits = tr["logits"][0, P].astype(np.float64)
    probs = tr["probs"][0, P].astype(np.float64)
    order = np.argsort(-probs, kind="stable")[:top]
    say("")
    say(f"Step 8. The next token after position {P}: logits = ln_f · {head_table}ᵀ (one per token of the vocabulary), "
        f"probability = softmax(logits); the top {len(order)}")
    say(f"    {'rank':>4}  {'token':<{w}}{'id':>7}{'logit':>12}{'probability':>14}")
    for r, i in enumerate(order, 1):
        say(f"    {r:>4}  {token_text(tokenizer, i):<{w}}{int(i):>7}{logits[i]:>+12.4f}{probs[i]:>14.6f}")
    say(f"    the other {V - len(order)} tokens share {max(0.0, 1 - probs[order].sum()):.6f}")

    say("")
    steps = [("÷T", distribution(logits, temperature)), ("top-k", distribution(logits, temperature, top_k)),
             ("sampled", distribution(logits, temperature, top_k, top_p))]
    k_text = "none" if top_k is None else str(top_k)
    p_text = "none" if top_p is None else f"{top_p:g}"
    say(f"Step 9. Sampling reshapes the distribution: temperature {temperature:g} divides the logits, "
        f"top-k {k_text} keeps the k most likely, top-p {p_text} the fewest whose probabilities reach p; "
        "'sampled' is what generate draws from")
    say(f"    {'rank':>4}  {'token':<{w}}{'id':>7}{'p':>11}" + "".join(f"{n:>11}" for n, _ in steps))
    for r, i in enumerate(order, 1):
        say(f"    {r:>4}  {token_text(tokenizer, i):<{w}}{int(i):>7}{probs[i]:>11.6f}"
            + "".join(f"{d[i]:>11.6f}" for _, d in steps))
    final = steps[-1][1]
    say(f"    generate keeps {int((final > 0).sum())} of {V} tokens")
    if temperature == 1 and top_k is None and top_p is None:
        say("    (with the defaults it samples from the softmax itself; try --temperature 0.5, --top-k 5, --top-p 0.9)")

    if target is not None:
        out += _backward(model, tr, tokenizer, ids, tr.targets[0], names, P, target, lr, full, top, w)
    return "\n".join(out)


def _backward(model, tr, tokenizer, ids, targets, names, P, target, lr, full, top, w, first=10):
    """The backward pass and one SGD step, as lines; its steps numbered from ``first``."""
    L = model.n_layer
    probs = tr["probs"][0, P].astype(np.float64)
    g_logits = tr.grad("logits")[0, P].astype(np.float64)
    out = []
    say = out.append
    say("")
    say(f"Step {first}. The loss: the token that should follow is {token_text(tokenizer, target)} (id {target}), "
        f"with probability {probs[target]:.6f}; loss = −log p = {tr.loss:.6f}")
    say("")
    say(f"Step {first + 1}. The backward pass starts at the logits: d loss / d logit = p − one-hot(target), "
        f"the {top} largest in size")
    say(f"    {'token':<{w}}{'id':>7}{'p':>12}{'one-hot':>9}{'gradient':>16}")
    for i in np.argsort(-np.abs(g_logits), kind="stable")[:top]:
        say(f"    {token_text(tokenizer, i):<{w}}{int(i):>7}{probs[i]:>12.6f}{int(i == target):>9}{g_logits[i]:>+16.6e}")

    say("")
    say(f"Step {first + 2}. The gradient reaching the residual stream, |d loss / d x| per token: the loss sits at "
        f"position {P}; earlier tokens are reached only through attention")
    cols = ["emb"] + [f"h.{i}.resid_2" for i in range(L)]
    heads = ["x in"] + [f"after {i}" for i in range(L)]
    say(f"    {'pos':>4} {'token':<{w}}" + "".join(f"{h:>11}" for h in heads))
    for t in range(len(ids)):
        say(f"    {t:>4} {names[t]:<{w}}" + "".join(f"{np.linalg.norm(tr.grad(c)[0, t]):>11.3e}" for c in cols))

    say("")
    entries = []
    for name in [n for n, _ in model.named_parameters()]:
        size = np.abs(tr.grad(name).reshape(-1))
        biggest = np.argpartition(-size, top)[:top] if size.size > top else np.arange(size.size)  # O(n): GPT-2 has 38 M
        entries += [(float(size[j]), name, int(j)) for j in biggest]
    entries.sort(key=lambda e: -e[0])
    params = dict(model.named_parameters())
    # how far to step: the loss after one step of each learning rate of a scan (on copies of the model)
    loss_of = lambda m: m(ids[None], targets[None])[1]  # noqa: E731
    curve = loss_curve(model, loss_of, extra=() if lr is None else (lr,))
    picked = lr is None
    lr = chosen_lr(curve) if picked else lr
    say(f"Step {first + 3}. The {top} weights with the largest gradients, and each one after an SGD step "
        f"(new = old − lr × gradient, lr {lr:g})")
    labels = [f"{name}[{','.join(map(str, np.unravel_index(j, params[name].shape)))}]" for _, name, j in entries[:top]]
    lw = max([44] + [len(s) + 2 for s in labels])  # a Llama's names run long: model.layers.29.post_attention_…
    say(f"    {'weight':<{lw}}{'value':>12}{'gradient':>15}{'new value':>12}")
    for label, (_, name, j) in zip(labels, entries[:top]):
        old = float(params[name].data.reshape(-1)[j])
        g = float(tr.grad(name).reshape(-1)[j])
        say(f"    {label:<{lw}}{old:>+12.6f}{g:>+15.6e}{old - lr * g:>+12.6f}")

    say("")
    say(f"Step {first + 4}. How far to step: the loss after one step for each learning rate (each a real SGD step on a "
        "copy). Too small changes")
    say("    nothing; too large overshoots, because the step is a straight line and the loss curves. "
        + (f"lr {lr:g}, the bottom of the first valley, is the default (--lr to choose)." if picked else f"--lr {lr:g} is marked."))
    out += plot_curve(curve, marked=lr)

    # the step taken for real, on a copy: optim.SGD with the gradients of an ordinary backward
    twin = step_copy(model, loss_of, lr)
    twin_trace = trace(twin, ids, targets)
    new_p = float(twin_trace["probs"][0, P, target])
    say("")
    say(f"Step {first + 5}. One SGD step with lr {lr:g}, taken on a copy of the model: p({token_text(tokenizer, target)}) "
        f"{probs[target]:.6f} → {new_p:.6f}, loss {tr.loss:.6f} → {twin_trace.loss:.6f}")
    out += verdict(curve, lr)
    return out
