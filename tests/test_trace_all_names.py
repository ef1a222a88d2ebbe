"""Every number a trace shows, checked: for every name in ``tr.names()`` the value and the
gradient of the loss with respect to it equal an independent reference's.

The reference is the same model written again, op by op, in PyTorch from the model's
parameters, every intermediate kept with ``retain_grad()``; autograd gives the gradients.
It is first checked against the tests' module-level references (tests/torch_gpt.py,
tests/test_transformer.py's ``torch.nn.Transformer``), so that it computes the same model.
The comparisons run in float64, where the two agree to ~1e-12, so that a wrong gradient
cannot hide inside float32's tolerance.

Evaluation is checked with and without ``dropout_sites=True``; a training pass
(``train=True``) with the dropout masks the trace drew: they are
random inputs, not computed values, so the reference takes them as given and checks what is
computed from them. A mask's gradient reads 0 (trace.py: drawn, not computed).

The loop runs over the trace's own names, and a name without a reference fails: a value
added to a trace later cannot go unchecked.
"""
import math

import numpy as np
import pytest

from scramble import scramble  # tests/ is on sys.path
from scratchllm.explain import trace
from scratchllm.models import GPT, GPTConfig, Transformer, TransformerConfig

torch = pytest.importorskip("torch")
F = torch.nn.functional

TOL64 = dict(rtol=1e-9, atol=1e-11)


class Recorder:
    """name -> torch tensor whose gradient is kept; masks are constants (their gradient: 0)."""

    def __init__(self, masks=None, p=0.0, sites=False):
        self.t, self.masks, self.p, self.sites = {}, masks, p, sites or masks is not None

    def __call__(self, name, t):
        assert name not in self.t, f"the reference records {name} twice"
        if t.requires_grad:
            t.retain_grad()
        self.t[name] = t
        return t

    def dropout(self, site, x):
        """Evaluation: x itself (kept as site.in and site.out with ``sites``). A training pass:
        x · mask / (1 − p) with the trace's mask."""
        if not self.sites:
            return x
        self(f"{site}.in", x)
        if self.masks is None:  # evaluation: out is in
            return self(f"{site}.out", x)
        mask = torch.from_numpy(np.asarray(self.masks[f"{site}.mask"])).to(x.dtype)
        self.t[f"{site}.mask"] = mask
        return self(f"{site}.out", x * mask / (1 - self.p))


def params_of(model, dtype):
    return {n: torch.tensor(np.asarray(p.data), dtype=dtype, requires_grad=True)
            for n, p in model.named_parameters()}


def sinusoid(n, d):
    """PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(same); as the models keep it, in float32."""
    pe = np.zeros((n, d))
    for pos in range(n):
        for i in range(0, d, 2):
            pe[pos, i] = math.sin(pos / 10000 ** (i / d))
            if i + 1 < d:
                pe[pos, i + 1] = math.cos(pos / 10000 ** (i / d))
    return pe.astype(np.float32)


def heads(x, H):
    B, T, C = x.shape
    return x.reshape(B, T, H, C // H).transpose(1, 2)  # (B, H, T, D)


def attention(rec, name, q, k, v, hidden):
    """q, k, v (B, H, T, D) kept as name.q/k/v; hidden (broadcast to B, H, Tq, Tk) True where not looked at."""
    rec(f"{name}.q", q), rec(f"{name}.k", k), rec(f"{name}.v", v)
    scores = rec(f"{name}.scores", (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(hidden, -math.inf))
    weights = rec(f"{name}.weights", torch.softmax(scores, dim=-1))
    B, H, T, D = q.shape
    return rec(f"{name}.y", (weights @ v).transpose(1, 2).reshape(B, T, H * D))  # heads side by side


def probs_of(rec, logits, targets, ignore):
    """probs = softmax(logits), its gradient that of −mean log probs[target] (as trace.py defines it)."""
    probs = rec("probs", torch.softmax(logits.detach(), dim=-1).requires_grad_())
    t = torch.from_numpy(targets).reshape(-1)
    rows = torch.nonzero(t != ignore).reshape(-1)
    nll = -torch.log(probs.reshape(-1, probs.shape[-1])[rows, t[rows]]).mean()
    nll.backward()


# ---- GPT ---------------------------------------------------------------------------------
def torch_gpt(model, ids, targets, dtype=torch.float64, masks=None, p=0.0, sites=False):
    """The GPT of models/gpt.py, op by op; returns (recorded tensors, logits, loss)."""
    cfg = model.config
    P, rec = params_of(model, dtype), Recorder(masks, p, sites)
    C, H, eps = cfg.n_embd, cfg.n_head, cfg.layer_norm_eps
    B, T = ids.shape

    def ln(x, prefix):
        return F.layer_norm(x, (C,), P[f"{prefix}.weight"], P.get(f"{prefix}.bias"), eps)

    def linear(x, prefix):
        return F.linear(x, P[f"{prefix}.weight"], P.get(f"{prefix}.bias"))

    tok = rec("tok_emb", P["transformer.wte.weight"][torch.from_numpy(ids)])  # (B, T, C)
    if cfg.positional == "learned":
        pos = P["transformer.wpe.weight"][:T]
    else:
        pos = torch.tensor(sinusoid(cfg.block_size, C)[:T], dtype=dtype, requires_grad=True)
    rec("pos_emb", pos)
    x = rec("emb", rec.dropout("drop", tok + pos))
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    for i in range(cfg.n_layer):
        h = f"transformer.h.{i}"
        a = rec(f"h.{i}.ln_1", ln(x, f"{h}.ln_1"))
        q, k, v = linear(a, f"{h}.attn.c_attn").split(C, dim=-1)
        y = attention(rec, f"h.{i}.attn", heads(q, H), heads(k, H), heads(v, H), future)
        out = rec(f"h.{i}.attn.out", rec.dropout(f"h.{i}.attn.drop", linear(y, f"{h}.attn.c_proj")))
        r1 = rec(f"h.{i}.resid_1", x + out)
        m = rec(f"h.{i}.ln_2", ln(r1, f"{h}.ln_2"))
        fc = rec(f"h.{i}.mlp.fc", linear(m, f"{h}.mlp.c_fc"))
        g = rec(f"h.{i}.mlp.gelu", F.gelu(fc, approximate="tanh"))
        mo = rec(f"h.{i}.mlp.out", rec.dropout(f"h.{i}.mlp.drop", linear(g, f"{h}.mlp.c_proj")))
        x = rec(f"h.{i}.resid_2", r1 + mo)
    head = P["transformer.wte.weight"] if cfg.tie_weights else P["lm_head.weight"]
    logits = rec("logits", rec("ln_f", ln(x, "transformer.ln_f")) @ head.T)
    loss = F.cross_entropy(logits.reshape(B * T, -1), torch.from_numpy(targets).reshape(-1), ignore_index=-100)
    return rec, logits, loss


def gpt_model(dtype, **kw):
    cfg = dict(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=8)
    model = scramble(GPT(GPTConfig(**{**cfg, **kw}), seed=3), seed=3)
    return model.astype(dtype) if dtype != np.float32 else model


def gpt_batch(cfg, seed=4):
    rng = np.random.default_rng(seed)
    ids, targets = rng.integers(0, cfg.vocab_size, (2, cfg.block_size)), rng.integers(0, cfg.vocab_size,
                                                                                      (2, cfg.block_size))
    targets[0, :2] = -100  # positions without a target
    return ids, targets


GPT_VARIANTS = {
    "learned-tied": dict(),
    "sinusoidal-untied-no-bias": dict(positional="sinusoidal", tie_weights=False, bias=False),
}


@pytest.mark.parametrize("variant", GPT_VARIANTS)
def test_the_gpt_reference_is_torch_gpt(variant):
    """The op-by-op reference computes what tests/torch_gpt.py's modules compute."""
    from torch_gpt import TorchGPT

    model = gpt_model(np.float32, **GPT_VARIANTS[variant])
    ids, targets = gpt_batch(model.config)
    _, logits, loss = torch_gpt(model, ids, targets, dtype=torch.float32)
    ref_logits, ref_loss = TorchGPT.from_scratch(model).eval()(torch.from_numpy(ids), torch.from_numpy(targets))
    np.testing.assert_allclose(logits.detach().numpy(), ref_logits.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)


MODES = {"eval": {}, "eval-dropout-sites": {"dropout_sites": True}, "train": {"train": True}}


@pytest.mark.parametrize("variant", GPT_VARIANTS)
@pytest.mark.parametrize("mode", MODES)
def test_every_gpt_trace_name_matches_the_reference(variant, mode):
    model = gpt_model(np.float64, dropout=0.3, **GPT_VARIANTS[variant])
    ids, targets = gpt_batch(model.config)
    tr = trace(model, ids, targets, seed=5, **MODES[mode])
    train = mode == "train"
    masks = {n: tr[n] for n in tr.names() if n.endswith(".mask")} if train else None
    rec, logits, loss = torch_gpt(model, ids, targets, masks=masks, p=0.3, sites=mode != "eval")
    loss.backward()
    probs_of(rec, logits, targets, -100)
    check_every_name(tr, rec, loss, train, dropout_sites=1 + 2 * model.config.n_layer)


# ---- the encoder-decoder Transformer ------------------------------------------------------
def torch_transformer(model, src, tgt_in, tgt_out, dtype=torch.float64, masks=None, p=0.0, sites=False):
    """The Transformer of models/transformer.py, op by op; returns (recorded tensors, logits, loss)."""
    cfg = model.config
    P, rec = params_of(model, dtype), Recorder(masks, p, sites)
    C, H, eps = cfg.d_model, cfg.n_head, cfg.layer_norm_eps
    act = F.relu if cfg.activation == "relu" else (lambda x: F.gelu(x, approximate="tanh"))

    def ln(x, prefix):
        return F.layer_norm(x, (C,), P[f"{prefix}.weight"], P[f"{prefix}.bias"], eps)

    def linear(x, prefix):
        return F.linear(x, P[f"{prefix}.weight"], P.get(f"{prefix}.bias"))

    def embed(side, table, pos_table, ids):
        T = ids.shape[1]
        tok = rec(f"{side}.tok_emb", P[table][torch.from_numpy(ids)])  # the rows, before the ·√C
        if cfg.positional == "learned":
            pos = P[pos_table][:T]
        else:
            pos = torch.tensor(sinusoid(cfg.max_len, C)[:T], dtype=dtype, requires_grad=True)
        rec(f"{side}.pos_emb", pos)
        return rec(f"{side}.in", rec.dropout(f"{side}.drop", tok * math.sqrt(C) + pos))

    def mha(prefix, name, x, memory, hidden):
        W, b = P[f"{prefix}.in_proj_weight"], P[f"{prefix}.in_proj_bias"]
        kv = x if memory is None else memory
        q, k, v = (F.linear(z, W[j * C:(j + 1) * C], b[j * C:(j + 1) * C]) for j, z in enumerate((x, kv, kv)))
        y = attention(rec, name, heads(q, H), heads(k, H), heads(v, H), hidden)
        return rec(f"{name}.out", linear(y, f"{prefix}.out_proj"))

    def sublayer(L, prefix, x, k, fn):
        """Residual k of layer L: pre-norm x + drop(fn(norm(x))), post-norm norm(x + drop(fn(x)))."""
        if cfg.norm_first:
            h = rec(f"{L}.norm{k}", ln(x, f"{prefix}.norm{k}"))
            return rec(f"{L}.resid_{k}", x + rec.dropout(f"{L}.drop_{k}", fn(h)))
        r = rec(f"{L}.resid_{k}", x + rec.dropout(f"{L}.drop_{k}", fn(x)))
        return rec(f"{L}.norm{k}", ln(r, f"{prefix}.norm{k}"))

    def feed_forward(L, prefix, h):
        fc = rec(f"{L}.ff.fc", linear(h, f"{prefix}.linear1"))
        return rec(f"{L}.ff.out", linear(rec(f"{L}.ff.act", act(fc)), f"{prefix}.linear2"))

    src_hidden = torch.from_numpy(src == cfg.pad_id)[:, None, None, :]  # padding is never looked at
    T = tgt_in.shape[1]
    tgt_hidden = torch.from_numpy(tgt_in == cfg.pad_id)[:, None, None, :] | torch.ones(T, T, dtype=torch.bool).triu(1)
    tgt_table = "src_embed.weight" if cfg.shared_embeddings else "tgt_embed.weight"
    x = embed("enc", "src_embed.weight", "src_pos_embed.weight", src)
    for i in range(cfg.n_encoder_layers):
        L, pre = f"enc.{i}", f"encoder.layers.{i}"
        x = sublayer(L, pre, x, 1, lambda h: mha(f"{pre}.self_attn", f"{L}.self_attn", h, None, src_hidden))
        x = rec(f"{L}.out", sublayer(L, pre, x, 2, lambda h: feed_forward(L, pre, h)))
    memory = rec("enc.norm", ln(x, "encoder.norm")) if cfg.norm_first else x
    x = embed("dec", tgt_table, "tgt_pos_embed.weight", tgt_in)
    for i in range(cfg.n_decoder_layers):
        L, pre = f"dec.{i}", f"decoder.layers.{i}"
        x = sublayer(L, pre, x, 1, lambda h: mha(f"{pre}.self_attn", f"{L}.self_attn", h, None, tgt_hidden))
        x = sublayer(L, pre, x, 2, lambda h: mha(f"{pre}.multihead_attn", f"{L}.cross_attn", h, memory, src_hidden))
        x = rec(f"{L}.out", sublayer(L, pre, x, 3, lambda h: feed_forward(L, pre, h)))
    if cfg.norm_first:
        x = rec("dec.norm", ln(x, "decoder.norm"))
    head = P[tgt_table] if cfg.tie_output else P["lm_head.weight"]
    logits = rec("logits", x @ head.T)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(tgt_out).reshape(-1),
                           ignore_index=cfg.pad_id)
    return rec, logits, loss


def transformer_model(variant, dtype):
    from test_transformer import SMALL, VARIANTS

    cfg = TransformerConfig(**{**SMALL, "d_model": 8, "n_head": 2, "d_ff": 12, **VARIANTS[variant], "dropout": 0.3})
    model = scramble(Transformer(cfg, seed=6), seed=6)
    return model.astype(dtype) if dtype != np.float32 else model


def transformer_batch(cfg):
    from test_transformer import example_batch

    src, tgt = example_batch(cfg, seed=7)  # padding in the source and in the target
    return src, tgt[:, :-1], tgt[:, 1:]


TRANSFORMER_VARIANTS = ["post-norm", "pre-norm-learned-untied-gelu", "pre-norm-shared"]


@pytest.mark.parametrize("variant", TRANSFORMER_VARIANTS)
@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")
def test_the_transformer_reference_is_torch_nn_transformer(variant):
    from test_transformer import torch_copy

    model = transformer_model(variant, np.float32)
    src, tgt_in, tgt_out = transformer_batch(model.config)
    _, logits, loss = torch_transformer(model, src, tgt_in, tgt_out, dtype=torch.float32)
    ref_logits = torch_copy(model)(torch.from_numpy(src), torch.from_numpy(tgt_in))
    np.testing.assert_allclose(logits.detach().numpy(), ref_logits.detach().numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", TRANSFORMER_VARIANTS)
@pytest.mark.parametrize("mode", MODES)
def test_every_transformer_trace_name_matches_the_reference(variant, mode):
    model = transformer_model(variant, np.float64)
    src, tgt_in, tgt_out = transformer_batch(model.config)
    tr = trace(model, (src, tgt_in), targets=tgt_out, seed=8, **MODES[mode])
    train = mode == "train"
    masks = {n: tr[n] for n in tr.names() if n.endswith(".mask")} if train else None
    rec, logits, loss = torch_transformer(model, src, tgt_in, tgt_out, masks=masks, p=0.3, sites=mode != "eval")
    loss.backward()
    probs_of(rec, logits, tgt_out, model.config.pad_id)
    cfg = model.config
    check_every_name(tr, rec, loss, train, dropout_sites=2 + 2 * cfg.n_encoder_layers + 3 * cfg.n_decoder_layers)


# ---- the comparison --------------------------------------------------------------------------
def check_every_name(tr, rec, loss, train, dropout_sites):
    assert tr.loss == pytest.approx(loss.item(), rel=1e-12)
    names = tr.names()
    missing = [n for n in names if n not in rec.t]
    assert not missing, f"trace names with no reference (add one to this test): {missing}"
    assert sorted(rec.t) == sorted(names), f"the reference computes what the trace lacks: {set(rec.t) - set(names)}"
    assert sum(n.endswith(".mask") for n in names) == (dropout_sites if train else 0)
    for name in names:
        ours, t = np.asarray(tr[name]), rec.t[name]
        theirs = t.detach().numpy()
        assert ours.shape == theirs.shape and ours.dtype == np.float64, (name, ours.shape, theirs.shape, ours.dtype)
        finite = np.isfinite(theirs)
        assert np.array_equal(finite, np.isfinite(ours)), f"{name}: -inf in other places"
        np.testing.assert_allclose(ours[finite], theirs[finite], **TOL64, err_msg=name)
        if name.endswith(".mask"):  # drawn, not computed: its gradient reads 0
            assert set(np.unique(ours)) <= {0.0, 1.0} and 0 < ours.mean() < 1, name
            np.testing.assert_array_equal(tr.grad(name), np.zeros_like(ours), err_msg=f"d/d {name}")
            continue
        assert t.grad is not None, f"the reference has no gradient for {name}"
        np.testing.assert_allclose(tr.grad(name), t.grad.numpy(), **TOL64, err_msg=f"d/d {name}")
