"""The Llama family's ops: RMSNorm, rotary position embedding (with Llama 3's
frequency scaling), SiLU and the SwiGLU product, and attention with fewer
key/value heads than query heads. Gradients against float64 finite
differences; values and gradients against PyTorch / transformers."""
import numpy as np
import pytest

import scratchllm.functional as F
from scratchllm.nn import RMSNorm
from scratchllm.tensor import Tensor

from gradcheck import check_grads


def leaf(shape, seed=0, scale=1.0, dtype=np.float64):
    return Tensor((np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype), requires_grad=True)


def arr(shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}


# ============================ gradient checks (float64) ============================
@pytest.mark.parametrize("with_weight", [True, False])
def test_rms_norm_grad(with_weight):
    x = leaf((2, 3, 6), 0)
    inputs = [x] + ([leaf((6,), 1)] if with_weight else [])
    check_grads(lambda x, w=None: F.rms_norm(x, w, 1e-5), inputs)


def test_rms_norm_module_grad():
    norm = RMSNorm(5, eps=1e-6)
    norm.weight.data[:] = np.random.default_rng(3).standard_normal(5)
    check_grads(lambda x, w: norm(x), [leaf((4, 5), 0), norm.weight])


@pytest.mark.parametrize("scaling", [None, LLAMA3])
def test_rope_grad(scaling):
    cos, sin = F.rope_cos_sin(F.rope_frequencies(8, 10000.0, scaling), 3, 5, np.float64)
    # x (B, T, H, D) seen as (B, H, T, D) through a transposed view, as a model hands it over
    check_grads(lambda x: F.rope(x.transpose(1, 2), cos, sin), [leaf((2, 5, 3, 8), 0)])


def test_silu_grad():
    x = leaf((3, 7), 0, scale=3.0)
    x.data[0, :3] = [-90.0, 90.0, 0.0]  # saturated ends
    check_grads(F.silu, [x])


def test_swiglu_grad():
    gate, up = leaf((2, 3, 7), 0, scale=3.0), leaf((2, 3, 7), 1)
    gate.data[0, 0, :2] = [-90.0, 90.0]
    check_grads(F.swiglu, [gate, up])


@pytest.mark.parametrize("H, Hkv", [(4, 2), (6, 1), (4, 4)])
@pytest.mark.parametrize("kw", [{"causal": True}, {}, {"mask": "padding"}])
def test_gqa_attention_grad(H, Hkv, kw):
    B, Tq, Tk, D = 2, 3, 5, 4
    if kw.get("mask") == "padding":
        m = np.ones((B, 1, Tq, Tk), dtype=bool)
        m[1, ..., 3:] = False
        kw = {"mask": m}
    elif kw.get("causal"):
        Tq = Tk  # a full causal pass
    q, k, v = leaf((B, H, Tq, D), 0), leaf((B, Hkv, Tk, D), 1), leaf((B, Hkv, Tk, D), 2)
    check_grads(lambda q, k, v: F.attention(q, k, v, **kw), [q, k, v])


def test_gqa_attention_per_head_mask_grad():
    # a mask that differs per query head must follow its head into the groups
    B, H, Hkv, T, D = 1, 4, 2, 4, 3
    m = np.random.default_rng(5).random((B, H, T, T)) > 0.3
    m[..., 0] = True
    q, k, v = leaf((B, H, T, D), 0), leaf((B, Hkv, T, D), 1), leaf((B, Hkv, T, D), 2)
    check_grads(lambda q, k, v: F.attention(q, k, v, mask=m), [q, k, v])


def test_gqa_rejects_heads_that_do_not_divide():
    with pytest.raises(ValueError, match="key/value heads"):
        F.attention(leaf((1, 4, 2, 2)), leaf((1, 3, 2, 2)), leaf((1, 3, 2, 2)))


# ============================ by hand and properties ====================================
def test_rms_norm_by_hand():
    # (3, 4): mean of squares 12.5, rms √12.5; weight 2
    out = F.rms_norm(Tensor(np.array([[3.0, 4.0]])), Tensor(np.array([2.0, 2.0])), eps=0.0).data
    np.testing.assert_allclose(out, [[6 / np.sqrt(12.5), 8 / np.sqrt(12.5)]], rtol=1e-14)


def test_rope_frequencies_by_hand():
    np.testing.assert_allclose(F.rope_frequencies(4, 100.0), [1.0, 0.1], rtol=1e-15)


def test_rope_rotates_pairs_i_and_i_plus_half():
    # D = 4, θ = (1, 0.01), position 2: pair (0, 2) turns by 2 rad, pair (1, 3) by 0.02 rad
    cos, sin = F.rope_cos_sin(F.rope_frequencies(4, 10000.0), 2, 1, np.float64)
    x = np.array([[1.0, 0.0, 0.0, 1.0]])  # (T=1, D=4): pair 0 = (1, 0), pair 1 = (0, 1)
    out = F.rope(Tensor(x), cos, sin).data[0]
    np.testing.assert_allclose(out, [np.cos(2), -np.sin(0.02), np.sin(2), np.cos(0.02)], rtol=1e-14)


@pytest.mark.parametrize("scaling", [None, LLAMA3])
def test_rope_score_depends_only_on_distance(scaling):
    # q at position m, k at position n: q·k after the rotation is the same for (m + s, n + s)
    D = 16
    inv = F.rope_frequencies(D, 10000.0, scaling)
    q, k = arr((1, D), 0).astype(np.float64), arr((1, D), 1).astype(np.float64)

    def score(m, n):
        cq, sq = F.rope_cos_sin(inv, m, 1, np.float64)
        ck, sk = F.rope_cos_sin(inv, n, 1, np.float64)
        return float((F.rope(Tensor(q), cq, sq).data @ F.rope(Tensor(k), ck, sk).data.T)[0, 0])

    base = score(7, 3)
    for shift in (1, 10, 250):
        assert score(7 + shift, 3 + shift) == pytest.approx(base, rel=1e-9, abs=1e-9)
    assert abs(score(8, 3) - base) > 1e-3  # a different distance gives a different score


def test_gqa_equals_attention_over_repeated_heads():
    # query head h reads key/value head h // G (Hugging Face's repeat_kv), by our own plain attention
    B, H, Hkv, T, D = 2, 6, 2, 5, 4
    q, k, v = arr((B, H, T, D), 0), arr((B, Hkv, T, D), 1), arr((B, Hkv, T, D), 2)
    out = F.attention(Tensor(q), Tensor(k), Tensor(v), causal=True).data
    rep = F.attention(Tensor(q), Tensor(np.repeat(k, 3, axis=1)), Tensor(np.repeat(v, 3, axis=1)), causal=True).data
    np.testing.assert_allclose(out, rep, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_new_ops_keep_dtype(dtype):
    x = Tensor(arr((2, 3, 4)).astype(dtype), requires_grad=True)
    cos, sin = F.rope_cos_sin(F.rope_frequencies(4), 0, 3, dtype)
    for out in (F.rms_norm(x, None), F.rope(x, cos, sin), F.silu(x), F.swiglu(x, x)):
        assert out.dtype == dtype
        out.backward(np.ones(out.shape, dtype=dtype))
        assert x.grad.dtype == dtype
        x.grad = None


# ============================ parity with PyTorch / transformers ============================
torch = pytest.importorskip("torch")
from torch_ref import compare  # noqa: E402


def test_rms_norm_vs_torch():
    def ref(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    compare(lambda x, w: F.rms_norm(x, w, 1e-6), ref, [arr((3, 5, 16), 0, 3.0), arr((16,), 1)])


def _rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


@pytest.mark.parametrize("scaling", [None, LLAMA3])
def test_rope_vs_transformers(scaling):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    D, theta = 16, 500000.0
    params = {"rope_type": "default", "rope_theta": theta} if scaling is None else {**scaling, "rope_theta": theta}
    cfg = LlamaConfig(hidden_size=4 * D, num_attention_heads=4, rope_parameters=params)
    if scaling is None:
        ref_inv = theta ** -(torch.arange(0, D, 2, dtype=torch.float64) / D)
    else:
        ref_inv, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg)
    ours_inv = F.rope_frequencies(D, theta, scaling)
    np.testing.assert_allclose(ours_inv, ref_inv.double().numpy(), rtol=1e-6)
    if scaling is not None:
        assert (ours_inv != F.rope_frequencies(D, theta)).any()  # the scaling changed something

    start, T = 5, 7
    cos, sin = F.rope_cos_sin(ours_inv, start, T)
    pos = torch.arange(start, start + T, dtype=torch.float64)[:, None] * ref_inv.double()
    emb = torch.cat((pos, pos), dim=-1)
    ref_cos, ref_sin = emb.cos().float(), emb.sin().float()
    compare(lambda x: F.rope(x, cos, sin), lambda x: x * ref_cos + _rotate_half(x) * ref_sin,
            [arr((2, 3, T, D), 0)])


def test_silu_and_swiglu_vs_torch():
    compare(F.silu, torch.nn.functional.silu, [arr((4, 33), 0, 4.0)])
    # 140000 elements: more than one of the fused op's blocks
    compare(F.swiglu, lambda g, u: torch.nn.functional.silu(g) * u, [arr((2, 5, 14000), 0, 4.0), arr((2, 5, 14000), 1)])


@pytest.mark.parametrize("H, Hkv", [(8, 2), (6, 1), (9, 3)])
@pytest.mark.parametrize("case", ["causal", "kv-cache", "padding-mask"])
def test_gqa_attention_vs_torch(H, Hkv, case):
    B, Tq, Tk, D = 2, 6, 6, 8
    ours_kw, ref_kw = {"causal": True}, {"is_causal": True}
    if case == "kv-cache":  # the last 2 queries of 6 positions
        Tq = 2
        ref_kw = {"attn_mask": torch.tensor(np.tril(np.ones((Tq, Tk), dtype=bool), k=Tk - Tq))}
    if case == "padding-mask":
        m = np.ones((B, 1, 1, Tk), dtype=bool)
        m[1, ..., 4:] = False
        ours_kw, ref_kw = {"mask": m}, {"attn_mask": torch.tensor(m)}
    G = H // Hkv

    def ref(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(
            q, k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1), **ref_kw)

    compare(lambda q, k, v: F.attention(q, k, v, **ours_kw), ref,
            [arr((B, H, Tq, D), 0), arr((B, Hkv, Tk, D), 1), arr((B, Hkv, Tk, D), 2)])
