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


def _causal_bias_t(Tq: int, Tk: int, dtype):
    """(Tk, Tq): 0 where key j is visible to query i, −inf where it is not.
    Queries are the last Tq of Tk positions, so a KV cache (Tq < Tk) lines up
    at the bottom right of the (Tq, Tk) picture. Stored keys-first, as the scores are."""
    key = (Tq, Tk, xp.dtype(dtype).str)
    if key not in _causal_cache:
        blocked = xp.triu(xp.ones((Tq, Tk), dtype=bool), k=Tk - Tq + 1).T  # (Tk, Tq)
        _causal_cache[key] = xp.where(blocked, -xp.inf, 0).astype(dtype)
    return _causal_cache[key]


def _attention_weights(q, k, scale, causal, mask, keep=None):
    """softmax(q kᵀ · scale + mask) for arrays q (…, Tq, D), k (…, Tk, D) -> (…, Tq, Tk).
    With ``keep`` (a dict, for a trace) a copy of the scores is put there
    before the softmax overwrites them.

    The result is a transposed view of a contiguous (…, Tk, Tq) array: with keys
    on axis −2 the softmax's max and shifts run across contiguous rows (NumPy's
    reductions along a short last axis are several times slower), and both
    products, k·(q·scale)ᵀ here and aᵀ·v after, have the layouts BLAS reads
    without copies. Callers use it as (…, Tq, Tk) as usual.
    """
    Tq, Tk, D = q.shape[-2], k.shape[-2], q.shape[-1]
    qt = xp.empty(q.shape[:-2] + (D, Tq), dtype=q.dtype)  # (…, D, Tq)
    xp.multiply(xp.swapaxes(q, -1, -2), scale, out=qt)  # scaled and transposed in one pass
    s = k @ qt  # (…, Tk, Tq) = scoresᵀ
    bias = _causal_bias_t(Tq, Tk, s.dtype) if causal else None  # (Tk, Tq)
    if mask is not None:
        m = _data(mask)
        m = xp.where(m, 0, -xp.inf).astype(s.dtype) if m.dtype == bool else m.astype(s.dtype)
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

    q (B, H, Tq, D), k and v (B, H, Tk, D) -> (B, H, Tq, D).
    ``mask``: a boolean array broadcastable to (B, H, Tq, Tk), True where
    attention is allowed (as PyTorch's ``scaled_dot_product_attention``), or a
    float array added to the scores. A query that may see no key at all gets
    zeros instead of NaN.
    """
    scale = q.dtype.type(1.0 / math.sqrt(q.shape[-1]))
    kept = {} if _tape.active is not None else None
    a = _attention_weights(q.data, k.data, scale, causal, mask, kept)  # (B, H, Tq, Tk)
    out = a @ v.data  # (B, H, Tq, D)
    site = _tape.active.attention(q.data, k.data, v.data, kept["scores"], a) if kept is not None else None

    def backward(g):
        grads = {} if site is not None else None
        gq, gk, gv = _attention_grads(g, q.data, k.data, v.data, a, scale, out=out, keep=grads)
        if site is not None:  # a trace takes the gradients of its internals as they pass
            site(q=gq, k=gk, v=gv, **grads)
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
