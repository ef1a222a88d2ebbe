"""The numba kernels agree with the NumPy code they replace (the reference
that the gradient checks and PyTorch parity tests pin down)."""
import numpy as np
import pytest

import scratchllm as sl
from scratchllm import functional as F
from scratchllm import kernels
from scratchllm import optim

pytestmark = pytest.mark.skipif(not kernels.AVAILABLE, reason="numba not installed: the NumPy paths serve")


def run_both(monkeypatch, fn, arrays):
    """fn's outputs and input gradients with the kernels on, then off (float32)."""
    results = []
    for enabled in (True, False):
        monkeypatch.setattr(kernels, "ENABLED", enabled)
        ts = [sl.Tensor(a, requires_grad=True) for a in arrays]
        out = fn(*ts)
        g = np.random.default_rng(1).standard_normal(out.shape).astype(np.float32)
        out.backward(g)
        results.append((out.data, [t.grad for t in ts]))
    return results


def assert_same(results, rtol=2e-5):
    """Equal up to float32 rounding: the kernels sum in another order (and partly
    in float64), so the absolute bound scales with each array's largest entry."""
    (out_k, grads_k), (out_n, grads_n) = results
    for a, b in zip([out_k, *grads_k], [out_n, *grads_n]):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=2e-6 * max(1.0, np.abs(b).max()))


def arr(shape, seed, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


@pytest.mark.parametrize("shape", [(768, 128), (3, 5, 7)])
def test_layer_norm(monkeypatch, shape):
    C = shape[-1]
    assert_same(run_both(monkeypatch, lambda x, w, b: F.layer_norm(x, w, b),
                         [arr(shape, 0, 3.0) + 2.0, arr((C,), 1), arr((C,), 2)]))


@pytest.mark.parametrize("causal, tq, tk", [(True, 16, 16), (False, 16, 16), (True, 4, 16), (False, 5, 9)])
def test_attention(monkeypatch, causal, tq, tk):
    q, k, v = arr((2, 3, tq, 8), 0), arr((2, 3, tk, 8), 1), arr((2, 3, tk, 8), 2)
    assert_same(run_both(monkeypatch, lambda q, k, v: F.attention(q, k, v, causal=causal), [q, k, v]))


def test_self_attention(monkeypatch):
    assert_same(run_both(monkeypatch, lambda qkv: F.self_attention(qkv, 4), [arr((3, 32, 3 * 64), 0, 2.0)]))


def test_attention_with_mask_takes_numpy_path_and_agrees(monkeypatch):
    mask = np.ones((2, 1, 1, 16), dtype=bool)
    mask[0, ..., 10:] = False
    q, k, v = arr((2, 3, 16, 8), 0), arr((2, 3, 16, 8), 1), arr((2, 3, 16, 8), 2)
    assert_same(run_both(monkeypatch, lambda q, k, v: F.attention(q, k, v, mask=mask), [q, k, v]))


def test_adamw_steps(monkeypatch):
    finals = []
    for enabled in (True, False):
        monkeypatch.setattr(kernels, "ENABLED", enabled)
        p = sl.nn.Parameter(arr((64, 32), 0))
        opt = optim.AdamW([p], lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
        for step in range(10):
            p.grad = arr((64, 32), 10 + step)
            opt.step()
        finals.append((p.data.copy(), opt.state[id(p)]["exp_avg"].copy(), opt.state[id(p)]["exp_avg_sq"].copy()))
    for a, b in zip(*finals):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
