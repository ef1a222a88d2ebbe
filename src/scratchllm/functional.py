"""Neural-network ops: each forward, and beside it the backward that uses what
the forward cached.

Ops are coarse on purpose (linear = matmul + bias, layer_norm, softmax +
cross-entropy, attention): one Python call and few temporaries per layer.
Every op keeps the floating dtype it is given (float32 for training, float64
for gradient checks). Shape comments use B batch, T time, C channels,
H heads, D head size, V vocabulary, N = all leading axes flattened.
"""
from __future__ import annotations

import math

from .backend import xp
from .tensor import (  # noqa: F401  (re-exported: the basic ops are functional too)
    Tensor,
    _op,
    add,
    concatenate,
    div,
    exp,
    log,
    matmul,
    mean,
    mul,
    neg,
    reshape,
    split,
    stack,
    sub,
    tensor,
    transpose,
    unbroadcast,
    where,
)
from .tensor import tape as _tape

_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_K = 0.044715
_LOG2_E = 1 / math.log(2)
_BLOCK = 1 << 16  # elements per block of a fused elementwise chain (256 KB of float32)


def _blocks(n: int):
    """Slices covering range(n) in blocks of _BLOCK elements: a chain of in-place
    ufuncs applied block by block reads and writes cache, not main memory."""
    return [slice(i, i + _BLOCK) for i in range(0, n, _BLOCK)]


def _data(x):
    return x.data if isinstance(x, Tensor) else xp.asarray(x)


# ---- linear ---------------------------------------------------------------
def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias`` with ``weight`` stored (out, in) as in PyTorch."""
    n_out, n_in = weight.shape
    x2 = x.data.reshape(-1, n_in)  # (N, in)
    out = x2 @ weight.data.T  # (N, out)
    if bias is not None:
        out += bias.data

    def backward(g):
        g2 = g.reshape(-1, n_out)  # (N, out)
        gx = (g2 @ weight.data).reshape(x.shape) if x.requires_grad else None  # (..., in)
        gw = g2.T @ x2 if weight.requires_grad else None  # (out, in)
        gb = xp.ones(g2.shape[0], dtype=g2.dtype) @ g2 if bias is not None and bias.requires_grad else None  # (out,) by BLAS
        return gx, gw, gb

    parents = (x, weight) if bias is None else (x, weight, bias)
    return _op(out.reshape(x.shape[:-1] + (n_out,)), parents, backward)


# ---- activations ------------------------------------------------------------
def relu(x: Tensor) -> Tensor:
    out = xp.maximum(x.data, 0)
    return _op(out, (x,), lambda g: (g * (x.data > 0),))


def gelu(x: Tensor) -> Tensor:
    """GELU, tanh form as in GPT-2: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).

    Computed as x·σ(2u) = x / (1 + e^(−2u)), u = √(2/π)·(x + 0.044715·x³): the
    same function, since 0.5·(1 + tanh u) = σ(2u), but without the cancellation
    in 1 + tanh u for negative x, and with 1 − σ = e^(−2u)·σ exact for the
    backward. e^(−2u) is taken as 2^(−2u·log₂e), the log₂e folded into the
    polynomial (NumPy's float32 exp2 is twice as fast as its exp, as accurate).
    The chain of in-place ufuncs runs block by block, so each block stays in
    cache across its passes.
    """
    a = x.data.reshape(-1)  # (N,) flat
    out, e = xp.empty_like(a), xp.empty_like(a)
    tmp = xp.empty(min(a.size, _BLOCK), dtype=a.dtype)
    for b in _blocks(a.size):
        ab, eb = a[b], e[b]
        xp.multiply(ab, ab, out=eb)
        eb *= -2 * _GELU_C * _GELU_K * _LOG2_E
        eb -= 2 * _GELU_C * _LOG2_E
        eb *= ab  # −2u·log₂e
        # 2^115 is finite in float32 (σ(2u) < 3e-35 above it anyway), and below 2^-125 σ(2u)
        # is 1 to float32 precision; clipping also keeps exp2 off its slow path for huge |u|
        xp.clip(eb, -125.0, 115.0, out=eb)
        xp.exp2(eb, out=eb)  # e = e^(−2u), kept for the backward
        tb = tmp[: ab.size]
        xp.add(eb, 1, out=tb)
        xp.divide(ab, tb, out=out[b])  # x·σ(2u)

    def backward(g):
        # d/dx x·σ(2u) = σ·(1 + (1 − σ)·2x·u'),  2x·u' = x·(2c + 6c·k·x²),  1 − σ = e·σ
        g = g.reshape(-1)
        d = xp.empty_like(a)
        for b in _blocks(a.size):
            ab, db, eb = a[b], d[b], e[b]
            sb = tmp[: ab.size]
            xp.add(eb, 1, out=sb)
            xp.divide(1, sb, out=sb)  # σ(2u)
            xp.multiply(ab, ab, out=db)
            db *= 6 * _GELU_C * _GELU_K
            db += 2 * _GELU_C
            db *= ab
            db *= sb
            db *= eb
            db += 1
            db *= sb
            db *= g[b]
        return (d.reshape(x.shape),)

    return _op(out.reshape(x.shape), (x,), backward)


def tanh(x: Tensor) -> Tensor:
    out = xp.tanh(x.data)
    return _op(out, (x,), lambda g: (g * (1 - out * out),))


def sigmoid(x: Tensor) -> Tensor:
    e = xp.exp(-xp.abs(x.data))  # never overflows
    out = xp.where(x.data >= 0, 1 / (1 + e), e / (1 + e))
    return _op(out, (x,), lambda g: (g * out * (1 - out),))


# ---- softmax family -------------------------------------------------------
def softmax(x: Tensor, axis: int = -1) -> Tensor:
    out = x.data - x.data.max(axis=axis, keepdims=True)
    xp.exp(out, out=out)
    out /= out.sum(axis=axis, keepdims=True)

    def backward(g):
        gx = g * out
        gx -= out * gx.sum(axis=axis, keepdims=True)  # out·(g − Σ g·out)
        return (gx,)

    return _op(out, (x,), backward)


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    shifted = x.data - x.data.max(axis=axis, keepdims=True)
    out = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))

    def backward(g):
        return (g - xp.exp(out) * g.sum(axis=axis, keepdims=True),)

    return _op(out, (x,), backward)


def cross_entropy(logits: Tensor, targets, ignore_index: int = -100, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy over the targets that are not ``ignore_index``.

    logits (..., V) and integer targets (...). With label smoothing ε the target
    distribution is (1 − ε)·one_hot + ε/V, as in PyTorch.
    """
    V = logits.shape[-1]
    z = logits.data.reshape(-1, V)  # (N, V)
    t = _data(targets).reshape(-1)  # (N,)
    if t.shape[0] != z.shape[0]:
        raise ValueError(f"cross_entropy: {z.shape[0]} rows of logits but {t.shape[0]} targets")
    valid = t != ignore_index  # (N,)
    safe_t = xp.where(valid, t, 0)
    if ((safe_t < 0) | (safe_t >= V)).any():
        raise ValueError(f"cross_entropy: target ids must lie in [0, {V}) or equal ignore_index")
    rows = xp.arange(z.shape[0])
    dtype = logits.dtype
    ones_v = xp.ones(V, dtype=dtype)
    probs = z - z.max(axis=1, keepdims=True)  # (N, V) shifted logits, stable for logits of any size
    nll = -probs[rows, safe_t]  # (N,) −shifted logit of the target
    if label_smoothing:
        mean_z = probs @ ones_v  # (N,) row sums by BLAS
        mean_z *= dtype.type(1.0 / V)
    xp.exp(probs, out=probs)  # (N, V) unnormalised
    sum_e = probs @ ones_v  # (N,)
    lse = xp.log(sum_e)  # (N,)
    nll += lse  # −log p[target]
    if label_smoothing:  # (1 − ε)·(−log p[target]) + ε·(−mean_j log p_j)
        nll *= 1 - label_smoothing
        nll += label_smoothing * (lse - mean_z)
    count = int(valid.sum())
    loss = xp.asarray(nll[valid].sum() / count if count else xp.nan, dtype=dtype)

    def backward(g):
        w = valid * (g / max(count, 1))  # (N,) each row's weight in the mean
        grad = probs  # the forward's buffer
        grad *= (w / sum_e)[:, None]  # softmax · weight, one pass
        grad[rows, safe_t] -= (1 - label_smoothing) * w
        if label_smoothing:
            grad -= (label_smoothing / V * w)[:, None]
        return (grad.reshape(logits.shape),)

    return _op(loss, (logits,), backward)


def mse_loss(pred: Tensor, target) -> Tensor:
    """Mean of squared differences. ``target`` may be an array or a Tensor;
    a Tensor that requires grad gets its gradient too, as in PyTorch."""
    diff = pred.data - xp.asarray(_data(target), dtype=pred.dtype)  # broadcast shape
    loss = xp.asarray((diff * diff).mean(), dtype=pred.dtype)

    def backward(g):
        gd = diff * (2 * g / diff.size)
        gt = unbroadcast(-gd, target.shape) if isinstance(target, Tensor) and target.requires_grad else None
        return unbroadcast(gd, pred.shape), gt

    parents = (pred, target) if isinstance(target, Tensor) else (pred,)
    return _op(loss, parents, backward)


# ---- normalisation and regularisation -------------------------------------
def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5) -> Tensor:
    """Normalise the last axis to mean 0, variance 1, then scale and shift."""
    C = x.shape[-1]
    a = x.data.reshape(-1, C)  # (N, C)
    inv_c = a.dtype.type(1.0 / C)
    ones_c = xp.ones(C, dtype=a.dtype)
    mean = a @ ones_c  # (N,) row sums by BLAS: NumPy's reductions along a short last axis are slow
    mean *= inv_c
    xhat = a - mean[:, None]  # (N, C)
    var = xp.vecdot(xhat, xhat)  # (N,)
    var *= inv_c
    var += eps
    rstd = xp.sqrt(var, out=var)
    xp.reciprocal(rstd, out=rstd)  # (N,)
    xhat *= rstd[:, None]
    out = xhat * weight.data if weight is not None else xhat.copy()
    if bias is not None:
        out += bias.data

    def backward(g):
        g2 = g.reshape(-1, C)  # (N, C)
        ones_n = xp.ones(g2.shape[0], dtype=g2.dtype)
        w = weight.data if weight is not None else ones_c
        gw = gb = gx = None
        gxh = g2 * xhat if weight is not None or x.requires_grad else None  # (N, C)
        if weight is not None and weight.requires_grad:
            gw = ones_n @ gxh  # (C,) column sums by BLAS
        if bias is not None and bias.requires_grad:
            gb = ones_n @ g2  # (C,)
        if x.requires_grad:
            # dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) with ĝ = g·weight; both means are
            # products with the weight: mean(ĝ) = g·w / C, mean(ĝ·x̂) = (g·x̂)·w / C.
            proj = gxh @ w  # (N,)
            proj *= inv_c
            shift = g2 @ w  # (N,)
            shift *= inv_c
            gx = g2 * weight.data if weight is not None else g2.copy()  # (N, C)
            gx -= shift[:, None]
            xp.multiply(xhat, proj[:, None], out=gxh)  # x̂·mean(ĝ·x̂), reusing the buffer
            gx -= gxh
            gx *= rstd[:, None]
            gx = gx.reshape(x.shape)
        return tuple(gr for gr, p in zip((gx, gw, gb), (x, weight, bias)) if p is not None)

    parents = tuple(p for p in (x, weight, bias) if p is not None)
    return _op(out.reshape(x.shape), parents, backward)


def dropout(x: Tensor, p: float, training: bool = True, rng=None) -> Tensor:
    """Inverted dropout: zero each element with probability ``p``, scale the rest by 1/(1−p)."""
    if not training or p == 0:
        return x
    if not 0 <= p < 1:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if rng is None:
        raise ValueError("dropout in training needs an explicit numpy.random.Generator (rng=...)")
    keep = rng.random(x.shape, dtype=xp.float32) >= p
    if _tape.active is not None:  # a trace of a training pass keeps the mask drawn
        _tape.active.dropout_mask(keep, x.dtype)
    mask = keep.astype(x.dtype)
    mask *= 1 / (1 - p)
    return _op(x.data * mask, (x,), lambda g: (g * mask,))


# ---- embedding ------------------------------------------------------------
def embedding(ids, weight: Tensor) -> Tensor:
    """Rows of ``weight`` (V, C) picked by integer ``ids`` (...) -> (..., C)."""
    idx = _data(ids)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"embedding ids must be integers, got {idx.dtype}")
    V, C = weight.shape
    if idx.size and (idx.min() < 0 or idx.max() >= V):
        raise IndexError(f"embedding id out of range [0, {V}): min {idx.min()}, max {idx.max()}")

    def backward(g):
        gw = xp.zeros_like(weight.data)
        xp.add.at(gw, idx.reshape(-1), g.reshape(-1, C))  # repeated ids accumulate
        return (gw,)

    return _op(weight.data[idx], (weight,), backward)


# ---- attention ------------------------------------------------------------
_causal_cache: dict = {}


def _causal_bias_t(Tq: int, Tk: int, dtype, groups: int = 1):
    """(Tk, Tq): 0 where key j is visible to query i, −inf where it is not.
    Queries are the last Tq of Tk positions, so a KV cache (Tq < Tk) lines up
    at the bottom right of the (Tq, Tk) picture. Stored keys-first, as the scores are.
    With ``groups`` G the picture is repeated side by side, (Tk, G·Tq): the G
    query heads that share one key/value head (grouped-query attention)."""
    key = (Tq, Tk, xp.dtype(dtype).str, groups)
    if key not in _causal_cache:
        blocked = xp.triu(xp.ones((Tq, Tk), dtype=bool), k=Tk - Tq + 1).T  # (Tk, Tq)
        _causal_cache[key] = xp.tile(xp.where(blocked, -xp.inf, 0).astype(dtype), (1, groups))
    return _causal_cache[key]


def _grouped_mask_t(m, groups: int, Tq: int, Tk: int):
    """A mask (…, H or 1, Tq, Tk) of H = Hkv·G query heads, rearranged keys-first
    for grouped queries: (…, Hkv or 1, Tk, G·Tq). A copy: masks are the rare path."""
    m = m.reshape((1,) * (4 - m.ndim) + m.shape)  # (b, h, Tq, Tk)
    b, h = m.shape[:2]
    if h == 1:
        m = xp.broadcast_to(m[:, :, None], (b, 1, groups, Tq, Tk))
    else:
        m = xp.broadcast_to(m, (b, h, Tq, Tk)).reshape(b, h // groups, groups, Tq, Tk)
    m = xp.broadcast_to(m, m.shape[:3] + (Tq, Tk))
    return xp.ascontiguousarray(m.transpose(0, 1, 4, 2, 3)).reshape(m.shape[0], m.shape[1], Tk, groups * Tq)


def _attention_weights(q, k, scale, causal, mask, keep=None, groups: int = 1):
    """softmax(q kᵀ · scale + mask) for arrays q (…, Tq, D), k (…, Tk, D) -> (…, Tq, Tk).
    With ``keep`` (a dict, for a trace) a copy of the scores is put there
    before the softmax overwrites them.

    Grouped-query attention: with ``groups`` G, q (…, G·Tq, D) holds the
    queries of the G heads that read one key/value head, one after the other
    (a free reshape of (B, H, Tq, D) into (B, Hkv, G·Tq, D)); the causal
    pattern and the mask repeat per group. The keys are then read once by one
    product G times as wide, never copied per query head.

    The result is a transposed view of a contiguous (…, Tk, Tq) array: with keys
    on axis −2 the softmax's max and shifts run across contiguous rows (NumPy's
    reductions along a short last axis are several times slower), and both
    products, k·(q·scale)ᵀ here and aᵀ·v after, have the layouts BLAS reads
    without copies. Callers use it as (…, Tq, Tk) as usual.
    """
    GTq, Tk, D = q.shape[-2], k.shape[-2], q.shape[-1]
    Tq = GTq // groups
    qt = xp.empty(q.shape[:-2] + (D, GTq), dtype=q.dtype)  # (…, D, G·Tq)
    xp.multiply(xp.swapaxes(q, -1, -2), scale, out=qt)  # scaled and transposed in one pass
    s = k @ qt  # (…, Tk, G·Tq) = scoresᵀ
    bias = _causal_bias_t(Tq, Tk, s.dtype, groups) if causal else None  # (Tk, G·Tq)
    if mask is not None:
        m = _data(mask)
        m = xp.where(m, 0, -xp.inf).astype(s.dtype) if m.dtype == bool else m.astype(s.dtype)
        if groups > 1:
            m = _grouped_mask_t(m, groups, Tq, Tk)  # (…, Tk, G·Tq)
        else:
            m = xp.swapaxes(m.reshape((1,) * (2 - m.ndim) + m.shape), -1, -2)  # (…, Tk, Tq) view
        bias = m if bias is None else bias + m
    if bias is not None:
        if xp.broadcast_shapes(s.shape, bias.shape) == s.shape:
            s += bias  # in place: the usual case
        else:
            s = s + bias  # the mask widens the scores (e.g. k broadcast over batch)
    if keep is not None:
        keep["scores"] = xp.swapaxes(s, -1, -2).copy()  # (…, Tq, Tk), masked entries −inf
    a = s  # softmax in place over the keys (axis −2)
    top = a.max(axis=-2, keepdims=True)  # (…, 1, Tq)
    may_block_all = mask is not None or (causal and Tq > Tk)
    if may_block_all:
        top[~xp.isfinite(top)] = 0  # queries with every key blocked
    a -= top
    xp.exp(a, out=a)  # (not exp2: NumPy's exp2 is slow on the −inf of blocked keys)
    denom = xp.matmul(xp.ones(Tk, dtype=a.dtype), a)  # (…, Tq) column sums by BLAS
    if may_block_all:
        denom[denom == 0] = 1  # those queries get zeros, not NaN
    xp.divide(1, denom, out=denom)
    a *= denom[..., None, :]
    return xp.swapaxes(a, -1, -2)  # (…, Tq, Tk) view


def _attention_grads(g, q, k, v, a, scale, gq=None, gk=None, gv=None, out=None, keep=None):
    """Gradients of out = a·v with a = softmax(q kᵀ · scale); ``gq/gk/gv`` may
    be given as output buffers (views into a packed gradient). ``out`` (the
    forward result) saves a product: Σⱼ ga·a over keys equals Σ_d g·out.
    With ``keep`` (a dict, for a trace) copies of the gradients of the weights
    and of the scores are put there as they pass."""
    at = xp.swapaxes(a, -1, -2)  # (…, Tk, Tq), contiguous when made by _attention_weights
    gv = xp.matmul(at, g, out=gv)  # (B, H, Tk, D)
    gt = xp.empty(g.shape[:-2] + (g.shape[-1], g.shape[-2]), dtype=g.dtype)
    gt[...] = xp.swapaxes(g, -1, -2)  # (B, H, D, Tq) contiguous, so the next product needs no copy
    ds = v @ gt  # (B, H, Tk, Tq) = (g vᵀ)ᵀ
    if keep is not None:
        keep["weights"] = xp.swapaxes(ds, -1, -2).copy()  # (B, H, Tq, Tk)
    if out is None:
        out = a @ v
    ds -= xp.vecdot(g, out)[..., None, :]  # softmax backward: a·(ga − Σ ga·a)
    ds *= at
    if keep is not None:
        keep["scores"] = xp.swapaxes(ds, -1, -2).copy()  # (B, H, Tq, Tk)
    gq = xp.matmul(xp.swapaxes(ds, -1, -2), k, out=gq)  # (B, H, Tq, D)
    gq *= scale
    gk = xp.matmul(ds, q, out=gk)  # (B, H, Tk, D)
    gk *= scale
    return gq, gk, gv


def attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, mask=None) -> Tensor:
    """Scaled dot-product attention, forward and backward as one op.

    q (B, H, Tq, D), k and v (B, Hkv, Tk, D) -> (B, H, Tq, D), where Hkv
    divides H: query head h reads key/value head h // (H / Hkv), as Hugging
    Face's ``repeat_kv`` (grouped-query attention; Hkv = 1 is multi-query,
    Hkv = H the usual multi-head attention).
    ``mask``: a boolean array broadcastable to (B, H, Tq, Tk), True where
    attention is allowed (as PyTorch's ``scaled_dot_product_attention``), or a
    float array added to the scores. A query that may see no key at all gets
    zeros instead of NaN.

    With Hkv < H the G = H / Hkv query heads of a group are laid one after the
    other along the query axis, (B, Hkv, G·Tq, D), so each key/value head
    meets all its queries in one product and the backward's products sum the
    group's key and value gradients as they go. Measured against repeating
    k and v G times (and summing their gradients after), forward + backward,
    causal, float32, BLAS on one thread: B 12, H 8, Hkv 2, T 64, D 32 took
    20 ms instead of 33; MQA (Hkv 1) 26 instead of 36; SmolLM2's heads
    (B 4, H 9, Hkv 3, T 256, D 64) 150 instead of 199.
    """
    H, Tq, D = q.shape[-3:] if q.ndim >= 3 else (1,) + q.shape
    Hkv = k.shape[-3] if k.ndim >= 3 else 1
    if H % Hkv or v.shape[:-1] != k.shape[:-1]:
        raise ValueError(f"attention: {Hkv} key/value heads cannot serve {H} query heads (it must divide them)")
    G = H // Hkv
    # (B, Hkv, G·Tq, D): the queries of each group one after the other, a view when q is contiguous
    qg = q.data if G == 1 else q.data.reshape(q.shape[:-3] + (Hkv, G * Tq, D))
    scale = q.dtype.type(1.0 / math.sqrt(D))
    kept = {} if _tape.active is not None else None
    a = _attention_weights(qg, k.data, scale, causal, mask, kept, G)  # (B, Hkv, G·Tq, Tk)
    out = a @ v.data  # (B, Hkv, G·Tq, D)
    ungroup = out.shape if G == 1 else out.shape[:-3] + (H, Tq, D)  # (B, H, Tq, D)
    out = out.reshape(ungroup)
    site = None
    if kept is not None:
        weights = a.reshape(ungroup[:-1] + (a.shape[-1],))  # (B, H, Tq, Tk): splitting an axis needs no copy
        site = _tape.active.attention(q.data, k.data, v.data, kept["scores"].reshape(weights.shape), weights)

    def backward(g):
        grads = {} if site is not None else None
        gq, gk, gv = _attention_grads(g.reshape(a.shape[:-1] + (D,)), qg, k.data, v.data, a, scale,
                                      out=out.reshape(a.shape[:-1] + (D,)), keep=grads)
        gq = gq.reshape(ungroup)  # (B, H, Tq, D)
        if site is not None:  # a trace takes the gradients of its internals as they pass
            site(q=gq, k=gk, v=gv, **{n: x.reshape(ungroup[:-1] + (x.shape[-1],)) for n, x in grads.items()})
        return unbroadcast(gq, q.shape), unbroadcast(gk, k.shape), unbroadcast(gv, v.shape)

    return _op(out, (q, k, v), backward)


def self_attention(qkv: Tensor, n_head: int, causal: bool = True, mask=None) -> Tensor:
    """Multi-head self-attention on packed projections, heads merged on output.

    qkv (B, T, 3C) holds [queries | keys | values] as GPT-2's ``c_attn``
    produces them -> (B, T, C), the heads side by side. The per-head views
    need no copies: BLAS reads them with a row stride of 3C.
    """
    B, T, C3 = qkv.shape
    C = C3 // 3
    D = C // n_head
    heads = qkv.data.reshape(B, T, 3, n_head, D).transpose(2, 0, 3, 1, 4)  # (3, B, H, T, D) view
    q, k, v = heads[0], heads[1], heads[2]
    scale = qkv.dtype.type(1.0 / math.sqrt(D))
    kept = {} if _tape.active is not None else None
    a = _attention_weights(q, k, scale, causal, mask, kept)  # (B, H, T, T)
    out = xp.empty((B, T, n_head, D), dtype=qkv.dtype)
    xp.matmul(a, v, out=out.transpose(0, 2, 1, 3))  # written straight into (B, T, H, D)
    site = _tape.active.attention(q, k, v, kept["scores"], a) if kept is not None else None

    def backward(g):
        g = xp.ascontiguousarray(g).reshape(B, T, n_head, D).transpose(0, 2, 1, 3)  # (B, H, T, D)
        gqkv = xp.empty((B, T, 3, n_head, D), dtype=qkv.dtype)
        gheads = gqkv.transpose(2, 0, 3, 1, 4)  # (3, B, H, T, D) view
        grads = {} if site is not None else None
        _attention_grads(g, q, k, v, a, scale, gheads[0], gheads[1], gheads[2], out=out.transpose(0, 2, 1, 3),
                         keep=grads)
        if site is not None:  # a trace takes the gradients of its internals as they pass
            site(q=gheads[0], k=gheads[1], v=gheads[2], **grads)
        return (gqkv.reshape(B, T, C3),)

    return _op(out.reshape(B, T, C), (qkv,), backward)


# ---- the Llama family: RMSNorm, rotary positions, SwiGLU -------------------------
def rms_norm(x: Tensor, weight: Tensor | None, eps: float = 1e-6) -> Tensor:
    """x / rms(x) · weight over the last axis, rms(x) = √(mean(x²) + eps).

    LayerNorm without the mean and the shift (Zhang & Sennrich, 2019): the
    scale of each vector is normalised, its direction kept."""
    C = x.shape[-1]
    a = x.data.reshape(-1, C)  # (N, C)
    inv_c = a.dtype.type(1.0 / C)
    rstd = xp.vecdot(a, a)  # (N,) sums of squares
    rstd *= inv_c
    rstd += eps
    xp.sqrt(rstd, out=rstd)
    xp.reciprocal(rstd, out=rstd)  # (N,) 1 / rms
    xhat = a * rstd[:, None]  # (N, C)
    out = xhat * weight.data if weight is not None else xhat.copy()

    def backward(g):
        g2 = g.reshape(-1, C)  # (N, C)
        gw = gx = None
        if weight is not None and weight.requires_grad:
            gw = xp.ones(g2.shape[0], dtype=g2.dtype) @ (g2 * xhat)  # (C,) column sums by BLAS
        if x.requires_grad:
            # dx = rstd·(ĝ − x̂·mean(ĝ·x̂)) with ĝ = g·weight
            gx = g2 * weight.data if weight is not None else g2.copy()  # ĝ (N, C)
            proj = xp.vecdot(gx, xhat)  # (N,)
            proj *= inv_c
            gx -= xhat * proj[:, None]
            gx *= rstd[:, None]
            gx = gx.reshape(x.shape)
        return (gx, gw) if weight is not None else (gx,)

    return _op(out.reshape(x.shape), (x, weight) if weight is not None else (x,), backward)


def rope_frequencies(head_dim: int, theta: float = 10000.0, scaling: dict | None = None):
    """The rotation speeds θᵢ = theta^(−2i/D), i < D/2, of rotary position
    embeddings (Su et al., 2021), float64 (D/2,): the pair i turns by m·θᵢ at
    position m, fast pairs first.

    ``scaling`` ``{"rope_type": "llama3", "factor", "low_freq_factor",
    "high_freq_factor", "original_max_position_embeddings"}`` slows the slow
    pairs down as Llama 3.1 does: wavelengths longer than
    original/low_freq_factor are divided by ``factor``, those shorter than
    original/high_freq_factor kept, those between blended smoothly."""
    inv_freq = theta ** -(xp.arange(0, head_dim, 2, dtype=xp.float64) / head_dim)  # (D/2,)
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind != "llama3":
        raise ValueError(f"rope_type {kind!r} is not supported (only 'default' and 'llama3')")
    factor, lo, hi = (float(scaling[n]) for n in ("factor", "low_freq_factor", "high_freq_factor"))
    old_len = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_len / wavelen - lo) / (hi - lo)  # 0 at the long end of the blend, 1 at the short end
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    return xp.where(wavelen < old_len / hi, inv_freq, xp.where(wavelen > old_len / lo, inv_freq / factor, blended))


def rope_cos_sin(inv_freq, start: int, T: int, dtype=xp.float32):
    """cos and sin of the angles m·θᵢ for positions m = start … start+T−1, each (T, D/2)."""
    angles = xp.arange(start, start + T, dtype=xp.float64)[:, None] * inv_freq  # (T, D/2), exact in float64
    return xp.cos(angles).astype(dtype), xp.sin(angles).astype(dtype)


def rope(x: Tensor, cos, sin) -> Tensor:
    """Rotary position embedding as Hugging Face pairs the dimensions: i with
    i + D/2 ("rotate half"), each pair turned by its angle.

    x (…, T, D) (any layout, e.g. heads as a transposed view), cos and sin
    (T, D/2) -> (…, T, D), contiguous. With x = [x₁ | x₂]:
    out = [x₁·cos − x₂·sin | x₂·cos + x₁·sin]. A rotation's backward is the
    rotation by the opposite angle."""
    h = x.shape[-1] // 2
    out = _rotate(x.data, cos, sin, h)

    def backward(g):
        return (_rotate(g, cos, -sin, h),)

    return _op(out, (x,), backward)


def _rotate(a, cos, sin, h):
    out = xp.empty(a.shape, dtype=a.dtype)  # (…, T, D)
    a1, a2, o1, o2 = a[..., :h], a[..., h:], out[..., :h], out[..., h:]
    tmp = xp.multiply(a2, sin)
    xp.multiply(a1, cos, out=o1)
    o1 -= tmp
    xp.multiply(a1, sin, out=tmp)
    xp.multiply(a2, cos, out=o2)
    o2 += tmp
    return out


def _sigmoid_into(a, out):
    """σ(a) written into ``out``, as 1 / (1 + 2^(−a·log₂e)) (NumPy's float32
    exp2 is faster than its exp); clipped so it neither overflows nor slows."""
    xp.multiply(a, -_LOG2_E, out=out)
    xp.clip(out, -125.0, 125.0, out=out)
    xp.exp2(out, out=out)
    out += 1
    xp.reciprocal(out, out=out)
    return out


def silu(x: Tensor) -> Tensor:
    """SiLU (swish): x·σ(x); d/dx = σ·(1 + x·(1 − σ))."""
    a = x.data.reshape(-1)
    s = _sigmoid_into(a, xp.empty_like(a))
    out = a * s

    def backward(g):
        d = 1 - s
        d *= a
        d += 1
        d *= s
        d *= g.reshape(-1)
        return (d.reshape(x.shape),)

    return _op(out.reshape(x.shape), (x,), backward)


def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    """SwiGLU's product silu(gate)·up (Shazeer, 2020), one fused op: the gate
    decides, element by element, how much of the up projection passes.
    gate, up (…, I) -> (…, I). Runs block by block so each block stays in cache.
    Only σ(gate) is kept for the backward (keeping silu(gate) too saved no
    measurable time and costs an (…, I) array per layer)."""
    a, u = gate.data.reshape(-1), up.data.reshape(-1)  # (N,) flat
    s, out = xp.empty_like(a), xp.empty_like(a)
    for b in _blocks(a.size):
        sb = _sigmoid_into(a[b], s[b])  # σ(gate), kept for the backward
        xp.multiply(a[b], sb, out=out[b])  # silu(gate)
        out[b] *= u[b]

    def backward(g):
        g = g.reshape(-1)
        gg, gu = xp.empty_like(a), xp.empty_like(a)
        for b in _blocks(a.size):
            ab, sb, ggb, gub = a[b], s[b], gg[b], gu[b]
            xp.multiply(ab, sb, out=gub)  # silu(gate)
            gub *= g[b]  # d/d up = g·silu(gate)
            xp.subtract(1, sb, out=ggb)
            ggb *= ab
            ggb += 1
            ggb *= sb  # silu'(gate) = σ·(1 + gate·(1 − σ))
            ggb *= u[b]
            ggb *= g[b]
        return gg.reshape(gate.shape), gu.reshape(up.shape)

    return _op(out.reshape(gate.shape), (gate, up), backward)
