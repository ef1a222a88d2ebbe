"""Fused kernels for the hot elementwise work, compiled by numba when it is installed.

Each kernel does in one pass over memory what the NumPy expression in
:mod:`scratchllm.functional` does in several (one temporary array per
operator). The NumPy code stays the reference: tests compare every kernel
with it, and ``SCRATCHLLM_KERNELS=numba`` turns them on (they are off by default: see ENABLED).

numba's ``workqueue`` threading layer is used: its default OpenMP layer and
OpenBLAS's threads fight over the two cores of a laptop (a GPT step went
from 60 to 284 ms that way).
"""
from __future__ import annotations

import math
import os

import numpy as np

try:
    import numba

    numba.config.THREADING_LAYER = "workqueue"
    AVAILABLE = True
except ImportError:  # the NumPy paths serve
    AVAILABLE = False

# Off unless asked for (SCRATCHLLM_KERNELS=numba): measured on a 2-core Xeon, the
# GPT benchmark step took 51 ms with these kernels and 41 ms with NumPy alone
# (bench/RESULTS.md), the kernels' threads and OpenBLAS's contending for the cores.
ENABLED = AVAILABLE and os.environ.get("SCRATCHLLM_KERNELS", "numpy") == "numba"
MIN_SIZE = 1 << 14  # below this many elements starting the threads costs more than the kernel saves
PARTS = 8  # blocks of rows whose partial column sums a backward kernel keeps apart

if AVAILABLE:
    from numba import njit, prange

    _jit = dict(cache=True, fastmath=False, error_model="numpy")

    @njit(parallel=True, **_jit)
    def layer_norm_forward(x, w, b, eps, out, xhat, rstd):
        """Rows of x (N, C) to mean 0, variance 1, then ·w + b. Keeps x̂ and 1/σ for the backward."""
        N, C = x.shape
        for n in prange(N):
            row = x[n]
            mu = 0.0
            for c in range(C):
                mu += row[c]
            mu /= C
            var = 0.0
            for c in range(C):
                d = row[c] - mu
                var += d * d
            r = 1.0 / math.sqrt(var / C + eps)
            rstd[n] = r
            for c in range(C):
                h = (row[c] - mu) * r
                xhat[n, c] = h
                out[n, c] = h * w[c] + b[c]

    @njit(parallel=True, **_jit)
    def layer_norm_backward(g, xhat, rstd, w, gx, gw_parts, gb_parts):
        """gx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) with ĝ = g·w. The gradients of
        w and b are summed per block of rows (gw_parts, gb_parts: (P, C)), then by the caller."""
        N, C = g.shape
        P = gw_parts.shape[0]
        for p in prange(P):
            lo, hi = p * N // P, (p + 1) * N // P
            for c in range(C):
                gw_parts[p, c] = 0.0
                gb_parts[p, c] = 0.0
            for n in range(lo, hi):
                s1 = 0.0
                s2 = 0.0
                for c in range(C):
                    gh = g[n, c] * w[c]
                    s1 += gh
                    s2 += gh * xhat[n, c]
                    gw_parts[p, c] += g[n, c] * xhat[n, c]
                    gb_parts[p, c] += g[n, c]
                s1 /= C
                s2 /= C
                r = rstd[n]
                for c in range(C):
                    gx[n, c] = r * (g[n, c] * w[c] - s1 - xhat[n, c] * s2)

    @njit(parallel=True, **_jit)
    def causal_softmax_forward(s, scale, offset):
        """In place over rows of scores s (R, Tq, Tk): softmax of s·scale where key
        j is visible to query i when j ≤ i + offset; hidden keys get exactly 0."""
        R, Tq, Tk = s.shape
        for r in prange(R):
            for i in range(Tq):
                row = s[r, i]
                last = min(i + offset, Tk - 1)
                m = -np.inf
                for j in range(last + 1):
                    v = row[j] * scale
                    row[j] = v
                    m = max(m, v)
                total = 0.0
                for j in range(last + 1):
                    e = math.exp(row[j] - m)
                    row[j] = e
                    total += e
                inv = 1.0 / total
                for j in range(last + 1):
                    row[j] *= inv
                for j in range(last + 1, Tk):
                    row[j] = 0.0

    @njit(parallel=True, **_jit)
    def softmax_backward(a, ga, scale):
        """In place: ga ← a·(ga − Σⱼ ga·a)·scale over the last axis of (R, Tq, Tk)."""
        R, Tq, Tk = a.shape
        for r in prange(R):
            for i in range(Tq):
                dot = 0.0
                for j in range(Tk):
                    dot += ga[r, i, j] * a[r, i, j]
                for j in range(Tk):
                    ga[r, i, j] = a[r, i, j] * (ga[r, i, j] - dot) * scale

    @njit(parallel=True, **_jit)
    def cross_entropy_forward(z, t, ignore_index, smoothing, nll, grad):
        """Per row of logits z (N, V): nll[n] = the (smoothed) −log p of target t[n]
        (0 where ignored) and grad[n] = softmax − target distribution (0 where ignored)."""
        N, V = z.shape
        for n in prange(N):
            row = z[n]
            m = -np.inf
            for j in range(V):
                m = max(m, row[j])
            total = 0.0
            mean_z = 0.0
            for j in range(V):
                e = math.exp(row[j] - m)
                grad[n, j] = e
                total += e
                mean_z += row[j]
            mean_z /= V
            target = t[n]
            if target == ignore_index:
                nll[n] = 0.0
                for j in range(V):
                    grad[n, j] = 0.0
                continue
            lse = math.log(total) + m
            nll[n] = (1.0 - smoothing) * (lse - row[target]) + smoothing * (lse - mean_z)
            inv = 1.0 / total
            off = smoothing / V
            for j in range(V):
                grad[n, j] = grad[n, j] * inv - off
            grad[n, target] -= 1.0 - smoothing

    @njit(parallel=True, **_jit)
    def adamw_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, bc1, bc2_sqrt):
        """One AdamW step over flat arrays, the same arithmetic as torch.optim.AdamW."""
        decay = 1.0 - lr * weight_decay
        step = lr / bc1
        for i in prange(p.size):
            gi = g[i]
            mi = m[i] + (gi - m[i]) * (1.0 - beta1)
            vi = v[i] * beta2 + (1.0 - beta2) * (gi * gi)
            m[i] = mi
            v[i] = vi
            p[i] = p[i] * decay - step * (mi / (math.sqrt(vi) / bc2_sqrt + eps))
