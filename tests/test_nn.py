"""nn: float64 gradient checks of every module, parity with torch.nn, and the
Module mechanics (names, state dicts, train/eval, init, seeding)."""
import numpy as np
import pytest

import scratchllm as sl
from scratchllm import nn
from scratchllm.tensor import Tensor

from gradcheck import check_grads

try:
    import torch
    from torch_ref import assert_close
except ImportError:  # torch is a test extra: the mechanics and gradient checks still run
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch (test extra) is not installed")


def rand(shape, seed=0, dtype=np.float64, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def leaf(shape, seed=0):
    return Tensor(rand(shape, seed), requires_grad=True)


def randomize(module, seed=1, scale=0.5):
    """Replace every parameter by random values (so LayerNorm's 1/0 and the
    attention biases' zeros do not hide a wrong gradient)."""
    for i, p in enumerate(module.parameters()):
        p.data = rand(p.shape, seed + i, p.dtype, scale)
    return module


def gradcheck_module(module, call, inputs):
    """Finite-difference check of ``call(*inputs)`` w.r.t. the inputs and every parameter."""
    module.astype(np.float64)
    params = module.parameters()
    check_grads(lambda *a: call(*a[:len(inputs)]), list(inputs) + params)


def padding_mask(B, Tk, lengths):
    """Boolean key-padding mask (B, Tk), True where the key is a real token."""
    return np.arange(Tk)[None, :] < np.asarray(lengths)[:, None]


# ---- gradient checks (float64, finite differences) --------------------------
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 3)], ids=["2d", "3d"])
def test_linear_grad(bias, shape):
    m = nn.Linear(3, 5, bias=bias, rng=np.random.default_rng(0))
    gradcheck_module(m, m, [leaf(shape)])


def test_embedding_grad_repeated_ids():
    m = nn.Embedding(6, 4, rng=np.random.default_rng(0))
    ids = np.array([[0, 3, 3, 5], [3, 0, 1, 3]])  # 3 appears four times, 0 twice
    gradcheck_module(m, lambda: m(ids), [])
    # and by hand: the gradient of sum(out) counts how often each row was picked
    m.zero_grad()
    m(ids).sum().backward()
    np.testing.assert_array_equal(m.weight.grad[:, 0], [2, 1, 0, 4, 0, 1])


def test_layernorm_grad():
    m = randomize(nn.LayerNorm(5))
    gradcheck_module(m, m, [leaf((2, 3, 5))])


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh", "sigmoid"])
def test_mlp_grad(activation):
    m = nn.MLP([4, 6, 5, 3], activation=activation, rng=np.random.default_rng(0))
    gradcheck_module(m, m, [leaf((2, 4))])


def test_sequential_grad():
    rng = np.random.default_rng(0)
    m = nn.Sequential(nn.Linear(4, 6, rng=rng), nn.Tanh(), randomize(nn.LayerNorm(6)), nn.GELU(),
                      nn.Linear(6, 3, rng=rng), nn.Sigmoid())
    gradcheck_module(m, m, [leaf((2, 3, 4))])


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_self_attention_grad(causal, bias):
    m = randomize(nn.MultiHeadAttention(6, 2, bias=bias, rng=np.random.default_rng(0)))
    gradcheck_module(m, lambda x: m(x, causal=causal), [leaf((2, 4, 6))])


def test_cross_attention_grad_with_padding_mask():
    m = randomize(nn.MultiHeadAttention(6, 3, rng=np.random.default_rng(0)))
    mask = padding_mask(2, 5, [5, 3])[:, None, None, :]  # (B, 1, 1, Tk)
    gradcheck_module(m, lambda x, mem: m(x, mem, mask=mask), [leaf((2, 3, 6), 1), leaf((2, 5, 6), 2)])


def test_padded_keys_get_no_gradient():
    m = nn.MultiHeadAttention(4, 2, rng=np.random.default_rng(0))
    mem = Tensor(rand((2, 5, 4), dtype=np.float32), requires_grad=True)
    mask = padding_mask(2, 5, [5, 2])[:, None, None, :]
    m(Tensor(rand((2, 3, 4), 1, np.float32)), mem, mask=mask).sum().backward()
    assert np.all(mem.grad[1, 2:] == 0) and np.all(mem.grad[1, :2] != 0)


def test_split_merge_heads():
    x = rand((2, 3, 8))
    h = nn.split_heads(Tensor(x), 2)
    np.testing.assert_array_equal(h.data[1, 1, 2], x[1, 2, 4:])  # head 1 = channels 4..7
    np.testing.assert_array_equal(nn.merge_heads(h).data, x)


# ---- parity with PyTorch (float32) ------------------------------------------
def to_torch(ours, ref):
    """Copy our parameters into the torch module, by name (the names must agree)."""
    ref.load_state_dict({k: torch.tensor(np.array(v)) for k, v in ours.state_dict().items()})
    return ref


def compare_module(ours, ref, call_ours, call_ref, arrays, seed=0):
    """Same inputs through both: outputs, input gradients and parameter gradients agree."""
    to_torch(ours, ref)
    xs = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    ts = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
    out, ref_out = call_ours(*xs), call_ref(*ts)
    assert_close(out, ref_out, err_msg="forward")
    w = rand(ref_out.shape, seed + 100, np.float32)
    out.backward(w)
    ref_out.backward(torch.from_numpy(w))
    for i, (x, t) in enumerate(zip(xs, ts)):
        assert_close(x.grad, t.grad, err_msg=f"gradient of input {i}")
    ref_params = dict(ref.named_parameters())
    assert list(ref_params) == [n for n, _ in ours.named_parameters()]
    for name, p in ours.named_parameters():
        assert_close(p.grad, ref_params[name].grad, err_msg=f"gradient of {name}")


@needs_torch
@pytest.mark.parametrize("bias", [True, False])
def test_linear_vs_torch(bias):
    m = nn.Linear(7, 5, bias=bias)
    ref = torch.nn.Linear(7, 5, bias=bias)
    compare_module(m, ref, m, ref, [rand((2, 3, 7), dtype=np.float32)])


@needs_torch
def test_layernorm_vs_torch():
    m = randomize(nn.LayerNorm(8))
    ref = torch.nn.LayerNorm(8)
    compare_module(m, ref, m, ref, [rand((2, 3, 8), dtype=np.float32, scale=3.0) + 1.0])


@needs_torch
def test_embedding_vs_torch():
    m = nn.Embedding(10, 4)
    ref = torch.nn.Embedding(10, 4)
    ids = np.array([[1, 2, 2, 9], [0, 2, 1, 1]])
    compare_module(m, ref, lambda: m(ids), lambda: ref(torch.from_numpy(ids)), [])


TORCH_ACT = {"relu": lambda: torch.nn.ReLU(), "gelu": lambda: torch.nn.GELU(approximate="tanh"),
             "tanh": lambda: torch.nn.Tanh(), "sigmoid": lambda: torch.nn.Sigmoid()}


@needs_torch
@pytest.mark.parametrize("activation", list(TORCH_ACT))
def test_mlp_vs_torch_sequential(activation):
    m = nn.MLP([5, 8, 6, 3], activation=activation)
    L = torch.nn.Linear
    ref = torch.nn.Sequential(L(5, 8), TORCH_ACT[activation](), L(8, 6), TORCH_ACT[activation](), L(6, 3))
    compare_module(m, ref, m, ref, [rand((4, 5), dtype=np.float32)])


@needs_torch
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_self_attention_vs_torch(causal, padded):
    B, T, C, H = 2, 5, 8, 2
    m = randomize(nn.MultiHeadAttention(C, H), scale=0.3)
    ref = torch.nn.MultiheadAttention(C, H, batch_first=True)
    keep = padding_mask(B, T, [5, 4])  # the last key of row 1 is padding (every query still sees key 0)
    ours_mask = keep[:, None, None, :] if padded else None
    kpm = torch.from_numpy(~keep) if padded else None  # torch: True = ignore
    attn_mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1) if causal else None
    compare_module(m, ref, lambda x: m(x, mask=ours_mask, causal=causal),
                   lambda x: ref(x, x, x, key_padding_mask=kpm, attn_mask=attn_mask, need_weights=False)[0],
                   [rand((B, T, C), dtype=np.float32)])


@needs_torch
def test_cross_attention_vs_torch():
    B, Tq, Tk, C, H = 2, 3, 6, 8, 4
    m = randomize(nn.MultiHeadAttention(C, H), scale=0.3)
    ref = torch.nn.MultiheadAttention(C, H, batch_first=True)
    keep = padding_mask(B, Tk, [6, 2])
    compare_module(m, ref, lambda x, mem: m(x, mem, mask=keep[:, None, None, :]),
                   lambda x, mem: ref(x, mem, mem, key_padding_mask=torch.from_numpy(~keep), need_weights=False)[0],
                   [rand((B, Tq, C), 1, np.float32), rand((B, Tk, C), 2, np.float32)])


# ---- module mechanics --------------------------------------------------------
@pytest.fixture
def seeded(monkeypatch):
    """Let a test reseed the default generator; the previous one comes back afterwards."""
    monkeypatch.setattr(nn, "_default_rng", nn.default_rng())


class Block(nn.Module):
    def __init__(self, C):
        self.ln = nn.LayerNorm(C)
        self.attn = nn.MultiHeadAttention(C, 2)
        self.drop = nn.Dropout(0.5)
        self.mlp = nn.MLP([C, 2 * C, C])

    def forward(self, x):
        x = x + self.attn(self.ln(x), causal=True)
        return x + self.drop(self.mlp(x))


class TinyLM(nn.Module):
    def __init__(self, V=7, C=4, n_layer=2, tied=False):
        self.wte = nn.Embedding(V, C)
        self.h = nn.ModuleList([Block(C) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(C)
        self.lm_head = nn.Linear(C, V, bias=False)
        if tied:
            self.lm_head.weight = self.wte.weight

    def forward(self, ids):
        x = self.wte(ids)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


BLOCK_NAMES = ["ln.weight", "ln.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
               "attn.out_proj.bias", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"]


def test_named_parameters_mlp():
    names = [n for n, _ in nn.MLP([3, 4, 5, 2]).named_parameters()]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]


def test_named_parameters_nested_and_modulelist():
    m = TinyLM()
    expected = (["wte.weight"] + [f"h.{i}.{n}" for i in range(2) for n in BLOCK_NAMES]
                + ["ln_f.weight", "ln_f.bias", "lm_head.weight"])
    assert [n for n, _ in m.named_parameters()] == expected
    assert [n for n, _ in m.named_modules()][:4] == ["", "wte", "h", "h.0"]
    assert len(m.h) == 2 and m.h[-1] is m.h[1] and list(m.h) == [m.h[0], m.h[1]]


@needs_torch
def test_names_agree_with_torch():
    ours = nn.MultiHeadAttention(8, 2)
    ref = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: tuple(v.shape) for k, v in ref.state_dict().items()}


def test_tied_parameters_count_once():
    untied, tied = TinyLM(), TinyLM(tied=True)
    assert len(tied.parameters()) == len(untied.parameters()) - 1
    assert tied.num_parameters() == untied.num_parameters() - 7 * 4
    assert "lm_head.weight" not in dict(tied.named_parameters())
    ids = np.array([[1, 2, 3]])
    tied(ids).sum().backward()  # one gradient, both uses accumulated into the shared array
    assert tied.wte.weight.grad is tied.lm_head.weight.grad


def test_state_dict_round_trip():
    a, b = TinyLM(), TinyLM()
    ids = np.array([[1, 2, 3, 0]])
    a.eval(), b.eval()
    assert not np.allclose(a(ids).data, b(ids).data)
    sd = {k: v.copy() for k, v in a.state_dict().items()}
    b.load_state_dict(sd)
    np.testing.assert_array_equal(a(ids).data, b(ids).data)
    for k, v in b.state_dict().items():
        np.testing.assert_array_equal(v, a.state_dict()[k])
    sd["ln_f.weight"][:] = 5  # b holds copies, not the dict's arrays
    assert np.all(b.ln_f.weight.data == 1)


@pytest.mark.parametrize("change, words", [
    (lambda sd: sd.pop("h.1.mlp.2.bias"), ["missing", "h.1.mlp.2.bias"]),
    (lambda sd: sd.update(extra_thing=np.zeros(3)), ["unexpected", "extra_thing"]),
    (lambda sd: sd.update({"ln_f.bias": np.zeros(5, np.float32)}), ["shape", "ln_f.bias", "(5,)", "(4,)"]),
])
def test_load_state_dict_errors_name_the_keys(change, words):
    m = TinyLM()
    sd = {k: v.copy() for k, v in TinyLM().state_dict().items()}
    change(sd)
    before = {k: v.copy() for k, v in m.state_dict().items()}
    with pytest.raises(sl.ScratchError) as err:
        m.load_state_dict(sd)
    for w in words:
        assert w in str(err.value)
    for k, v in m.state_dict().items():  # nothing half-loaded
        np.testing.assert_array_equal(v, before[k])


def test_load_state_dict_non_strict():
    m = TinyLM()
    src = TinyLM()
    sd = {k: v.copy() for k, v in src.state_dict().items() if not k.startswith("h.1.")}
    sd["unrelated.weight"] = np.ones(2)
    old_h1 = m.h[1].mlp[0].weight.data.copy()
    m.load_state_dict(sd, strict=False)
    np.testing.assert_array_equal(m.wte.weight.data, src.wte.weight.data)
    np.testing.assert_array_equal(m.h[1].mlp[0].weight.data, old_h1)  # missing: left as it was
    sd["ln_f.bias"] = np.zeros(3, np.float32)
    with pytest.raises(sl.ScratchError, match="ln_f.bias"):  # a wrong shape is an error even when not strict
        m.load_state_dict(sd, strict=False)


def test_train_eval_propagate_and_dropout():
    m = TinyLM()
    modules = [mod for _, mod in m.named_modules()]
    assert all(mod.training for mod in modules)
    assert m.eval() is m and not any(mod.training for mod in modules)
    x = Tensor(rand((4, 50), dtype=np.float32))
    drop = m.h[0].drop
    assert drop(x) is x or np.array_equal(drop(x).data, x.data)  # identity in eval
    m.train()
    assert all(mod.training for mod in modules)
    y = drop(x).data
    zeroed = y == 0
    assert 0.3 < zeroed.mean() < 0.7  # p = 0.5
    np.testing.assert_allclose(y[~zeroed], 2 * x.data[~zeroed], rtol=1e-6)  # kept ones scaled by 1/(1-p)
    a, b = TinyLM(), TinyLM()
    b.load_state_dict(a.state_dict())
    ids = np.array([[1, 2, 3, 0]])
    a.train(False), b.eval()
    np.testing.assert_array_equal(a(ids).data, b(ids).data)  # eval output is deterministic


def test_zero_grad():
    m = nn.MLP([3, 4, 2])
    m(Tensor(rand((2, 3), dtype=np.float32))).sum().backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


@pytest.mark.parametrize("n_in, n_out", [(16, 4000), (400, 200)])
def test_linear_init_matches_torch_default(n_in, n_out):
    # torch.nn.Linear: kaiming_uniform_(a=√5) = U(±1/√in) for the weight, U(±1/√in) for the bias
    m = nn.Linear(n_in, n_out)
    bound = 1 / np.sqrt(n_in)
    for p in (m.weight, m.bias):
        assert p.dtype == np.float32
        assert np.abs(p.data).max() <= bound and np.abs(p.data).max() > 0.98 * bound
        assert abs(p.data.std() - bound / np.sqrt(3)) < 0.1 * bound / np.sqrt(3)
        assert abs(p.data.mean()) < 0.1 * bound
    assert m.weight.shape == (n_out, n_in)


def test_attention_init_matches_torch():
    # torch.nn.MultiheadAttention: xavier_uniform_ on in_proj_weight (3C, C): fan_in C, fan_out 3C,
    # bound √(6 / 4C); in_proj_bias and out_proj.bias zero; out_proj.weight U(±1/√C)
    C = 64
    m = nn.MultiHeadAttention(C, 4)
    bound = np.sqrt(6 / (C + 3 * C))
    w = np.abs(m.in_proj_weight.data)
    assert w.max() <= bound and w.max() > 0.98 * bound
    assert np.all(m.in_proj_bias.data == 0) and np.all(m.out_proj.bias.data == 0)
    assert np.abs(m.out_proj.weight.data).max() <= 1 / np.sqrt(C)


@needs_torch
def test_attention_init_bound_is_torchs():
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(64, 4)
    ours = nn.MultiHeadAttention(64, 4)
    ratio = np.abs(ours.in_proj_weight.data).max() / ref.in_proj_weight.abs().max().item()
    assert 0.98 < ratio < 1.02


def test_embedding_init_standard_normal():
    w = nn.Embedding(1000, 64).weight.data
    assert w.dtype == np.float32
    assert abs(w.mean()) < 0.01 and abs(w.std() - 1) < 0.01


def test_manual_seed_reproducible(seeded):
    nn.manual_seed(123)
    a = TinyLM()
    da = nn.Dropout(0.5)(Tensor(np.ones((3, 8), np.float32))).data
    nn.manual_seed(123)
    b = TinyLM()
    db = nn.Dropout(0.5)(Tensor(np.ones((3, 8), np.float32))).data
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb
        np.testing.assert_array_equal(pa.data, pb.data)
    np.testing.assert_array_equal(da, db)
    nn.manual_seed(124)
    assert not np.array_equal(TinyLM().wte.weight.data, a.wte.weight.data)


def test_explicit_rng_reproducible():
    a = nn.MLP([3, 5, 2], rng=np.random.default_rng(7))
    b = nn.MLP([3, 5, 2], rng=np.random.default_rng(7))
    for pa, pb in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(pa.data, pb.data)


def test_astype():
    m = TinyLM().astype(np.float64)
    assert all(p.dtype == np.float64 for p in m.parameters())
    assert m(np.array([[1, 2]])).dtype == np.float64


def test_bad_head_count():
    with pytest.raises(ValueError, match="divisible"):
        nn.MultiHeadAttention(6, 4)
