"""scratchllm.explain.trace: the values are the ordinary forward pass's, bit for
bit; the gradients are what backward() computes; both agree with PyTorch
(tensors kept with retain_grad()) and with finite differences."""
import base64
import json
import math
import threading

import numpy as np
import pytest

import scratchllm as sl
from scramble import scramble  # tests/ is on sys.path
from scratchllm import functional as F
from scratchllm.explain import Trace, trace
from scratchllm.models import GPT, GPTConfig, Transformer, TransformerConfig

TINY = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)


def gpt(seed=0, **kw):
    return scramble(GPT(GPTConfig(**{**TINY, **kw}), seed=seed), seed=seed)


def batch(cfg, B=2, T=None, seed=1):
    rng = np.random.default_rng(seed)
    T = T or cfg.block_size
    return rng.integers(0, cfg.vocab_size, (B, T)), rng.integers(0, cfg.vocab_size, (B, T))


def gpt_names(n_layer):
    per_layer = ["ln_1", "attn.q", "attn.k", "attn.v", "attn.scores", "attn.weights", "attn.y", "attn.out",
                 "resid_1", "ln_2", "mlp.fc", "mlp.gelu", "mlp.out", "resid_2"]
    return (["tok_emb", "pos_emb", "emb"] + [f"h.{i}.{n}" for i in range(n_layer) for n in per_layer]
            + ["ln_f", "logits", "probs"])


# ---- values: the forward pass's own -----------------------------------------------
@pytest.mark.parametrize("positional", ["learned", "sinusoidal"])
def test_values_are_the_forward_pass_bit_for_bit(positional):
    model = gpt(positional=positional, dropout=0.2)  # dropout: a trace is of the eval-mode model
    ids, targets = batch(model.config)
    tr = trace(model, ids, targets)
    cfg = model.config
    B, T, C, H = *ids.shape, cfg.n_embd, cfg.n_head
    D = C // H
    assert tr.names() == gpt_names(cfg.n_layer)

    model.eval()
    logits, loss = model(ids, targets)
    np.testing.assert_array_equal(tr["logits"], logits.data)
    assert tr.loss == loss.item()

    # the same computation, module by module, outside any trace
    with sl.no_grad():
        h = model.transformer
        tok = h.wte(ids)
        pos = h.wpe(np.arange(T)) if positional == "learned" else sl.Tensor(model._pe[:T])
        x = tok + pos
        expect = {"tok_emb": tok, "pos_emb": pos, "emb": x}
        for i, block in enumerate(h.h):
            ln1 = block.ln_1(x)
            qkv = block.attn.c_attn(ln1)
            y = F.self_attention(qkv, H)
            out = block.attn.c_proj(y)
            r1 = x + out
            ln2 = block.ln_2(r1)
            fc = block.mlp.c_fc(ln2)
            gelu = F.gelu(fc)
            mlp = block.mlp.c_proj(gelu)
            x = r1 + mlp
            heads = qkv.data.reshape(B, T, 3, H, D).transpose(2, 0, 3, 1, 4)
            expect.update({f"h.{i}.{k}": v for k, v in dict(
                ln_1=ln1, **{"attn.q": heads[0], "attn.k": heads[1], "attn.v": heads[2]}, **{
                    "attn.y": y, "attn.out": out, "resid_1": r1, "ln_2": ln2, "mlp.fc": fc, "mlp.gelu": gelu,
                    "mlp.out": mlp, "resid_2": x}).items()})
        expect["ln_f"] = h.ln_f(x)
    for name, value in expect.items():
        np.testing.assert_array_equal(tr[name], getattr(value, "data", value), err_msg=name)

    for i in range(cfg.n_layer):
        q, k = tr[f"h.{i}.attn.q"].astype(np.float64), tr[f"h.{i}.attn.k"].astype(np.float64)
        scores, weights = tr[f"h.{i}.attn.scores"], tr[f"h.{i}.attn.weights"]
        future = np.triu(np.ones((T, T), dtype=bool), 1)
        assert np.all(scores[..., future] == -np.inf) and np.all(weights[..., future] == 0)
        np.testing.assert_allclose(scores[..., ~future], (q @ k.swapaxes(-1, -2) / math.sqrt(D))[..., ~future],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(weights.sum(-1), 1, rtol=1e-6)
    probs = np.exp(tr["logits"].astype(np.float64))
    np.testing.assert_allclose(tr["probs"], probs / probs.sum(-1, keepdims=True), rtol=1e-5)


def test_tracing_changes_nothing_in_the_model():
    model = gpt(dropout=0.1)
    ids, targets = batch(model.config)
    before = {n: p.data.copy() for n, p in model.named_parameters()}
    model.train()
    tr = trace(model, ids, targets)
    assert model.training and all(m.training for _, m in model.named_modules())
    assert all(p.grad is None for p in model.parameters())
    for n, p in model.named_parameters():
        np.testing.assert_array_equal(p.data, before[n], err_msg=n)
    assert tr.grad("h.0.attn.weights").shape == tr["h.0.attn.weights"].shape
    # grads already on the model stay as they were
    _, loss = model.eval()(ids, targets)
    loss.backward()
    grads = {n: p.grad.copy() for n, p in model.named_parameters()}
    trace(model, ids, targets)
    for n, p in model.named_parameters():
        np.testing.assert_array_equal(p.grad, grads[n], err_msg=n)


def test_a_trace_without_targets_has_values_but_no_gradients():
    model = gpt()
    ids, _ = batch(model.config, B=1)
    tr = trace(model, ids[0])  # (T,) ids: a batch of one
    assert tr.loss is None and tr["logits"].shape == (1, 8, 11) and tr["pos_emb"].shape == (8, 8)
    np.testing.assert_array_equal(tr["logits"], model(ids).data)
    with pytest.raises(sl.ScratchError, match="targets"):
        tr.grad("logits")


# ---- gradients: the engine's backward -------------------------------------------------
def test_parameter_gradients_equal_what_backward_leaves_in_grad():
    model = gpt(positional="learned", tie_weights=True).eval()
    ids, targets = batch(model.config)
    targets[0, :3] = -100  # positions without a target
    tr = trace(model, ids, targets)
    _, loss = model(ids, targets)
    loss.backward()
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(tr.grad(name), p.grad, err_msg=name)
    np.testing.assert_array_equal(tr.grad("lm_head.weight"), tr.grad("transformer.wte.weight"))  # tied: one weight
    # the chain rule through the first add: tok_emb and emb share a gradient, pos_emb sums it over the batch
    np.testing.assert_array_equal(tr.grad("tok_emb"), tr.grad("emb"))
    np.testing.assert_allclose(tr.grad("pos_emb"), tr.grad("emb").sum(0), rtol=1e-6, atol=1e-9)
    # d loss / d logits = (p − one-hot) / number of targets, at positions with a target; 0 elsewhere
    p = tr["probs"].astype(np.float64)
    onehot = np.zeros_like(p)
    b, t = np.nonzero(targets != -100)
    onehot[b, t, targets[b, t]] = 1
    expect = (p - onehot) * (targets != -100)[..., None] / len(b)
    np.testing.assert_allclose(tr.grad("logits"), expect, rtol=1e-5, atol=1e-8)
    # d loss / d probs = −1 / (N · p_target) at the target, 0 elsewhere
    gp = np.zeros_like(p)
    gp[b, t, targets[b, t]] = -1 / (len(b) * p[b, t, targets[b, t]])
    np.testing.assert_allclose(tr.grad("probs"), gp, rtol=1e-5)


def test_finite_differences_of_the_attention_weights(monkeypatch):
    """d loss / d weights, perturbing one weight inside the forward pass, in float64."""
    model = gpt(seed=3).astype(np.float64)
    ids, targets = batch(model.config, seed=4)
    tr = trace(model, ids, targets)
    assert tr["h.1.attn.weights"].dtype == np.float64
    real = F._attention_weights
    poke = {}

    def perturbed(q, k, scale, causal, mask, keep=None):
        a = real(q, k, scale, causal, mask, keep)
        poke["call"] += 1
        if poke["call"] == poke["layer"] + 1:
            a = a.copy()
            a[poke["at"]] += poke["eps"]
        return a

    monkeypatch.setattr(F, "_attention_weights", perturbed)
    rng = np.random.default_rng(5)
    eps = 1e-6
    for layer in range(model.config.n_layer):
        grad = tr.grad(f"h.{layer}.attn.weights")
        for _ in range(6):
            b, h = rng.integers(2), rng.integers(2)
            t = rng.integers(8)
            s = rng.integers(t + 1)  # a visible key
            losses = []
            for sign in (1, -1):
                poke.update(call=0, layer=layer, at=(b, h, t, s), eps=sign * eps)
                with sl.no_grad():
                    losses.append(model(ids, targets)[1].item())
            numeric = (losses[0] - losses[1]) / (2 * eps)
            assert abs(grad[b, h, t, s] - numeric) <= 1e-7 + 1e-5 * abs(numeric), (layer, b, h, t, s)


# ---- against PyTorch ----------------------------------------------------------------
def test_gpt_matches_torch_with_retain_grad(monkeypatch):
    torch = pytest.importorskip("torch")
    from torch_gpt import TorchGPT

    model = gpt(seed=6, n_layer=2, n_head=2, n_embd=16, block_size=8)
    ids, targets = batch(model.config, seed=7)
    tr = trace(model, ids, targets)

    ref = TorchGPT.from_scratch(model).eval()
    kept = {"scores": [], "weights": []}
    real_softmax = torch.softmax

    def spy(x, dim):  # TorchGPT's attention calls torch.softmax(scores, dim=-1)
        w = real_softmax(x, dim=dim)
        x.retain_grad(), w.retain_grad()
        kept["scores"].append(x), kept["weights"].append(w)
        return w

    monkeypatch.setattr(torch, "softmax", spy)
    resid = {}
    for i, block in enumerate(ref.transformer.h):
        block.ln_2.register_forward_pre_hook(lambda m, a, i=i: (a[0].retain_grad(), resid.__setitem__(f"h.{i}.resid_1", a[0])) and None)
        block.register_forward_hook(lambda m, a, out, i=i: (out.retain_grad(), resid.__setitem__(f"h.{i}.resid_2", out)) and None)
    logits, loss = ref(torch.from_numpy(ids), torch.from_numpy(targets))
    logits.retain_grad()
    loss.backward()

    assert tr.loss == pytest.approx(loss.item(), rel=1e-6)
    pairs = {"logits": logits, **resid}
    for i in range(model.config.n_layer):
        pairs[f"h.{i}.attn.scores"] = kept["scores"][i]
        pairs[f"h.{i}.attn.weights"] = kept["weights"][i]
    for name, t in pairs.items():
        ours, theirs = tr[name], t.detach().numpy()
        finite = np.isfinite(theirs)
        assert np.array_equal(finite, np.isfinite(ours)), name
        np.testing.assert_allclose(ours[finite], theirs[finite], rtol=1e-5, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(tr.grad(name), t.grad.numpy(), rtol=1e-5, atol=1e-5, err_msg=f"d/d {name}")


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")
def test_transformer_matches_torch_with_retain_grad(monkeypatch):
    torch = pytest.importorskip("torch")
    from test_transformer import PAD, example_batch, make_pair

    model, ref = make_pair("pre-norm-learned-untied-gelu", seed=8)
    src, tgt = example_batch(model.config, seed=9)
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
    tr = trace(model, (src, tgt_in), targets=tgt_out)

    # nn.MultiheadAttention computes its softmax explicitly only when asked for weights
    kept = []
    real_mha, real_softmax = torch.nn.MultiheadAttention.forward, torch.nn.functional.softmax

    def mha(self, *args, **kwargs):
        kwargs.update(need_weights=True, average_attn_weights=False)
        return real_mha(self, *args, **kwargs)

    def spy(x, dim=None, **kwargs):
        w = real_softmax(x, dim=dim, **kwargs)
        x.retain_grad(), w.retain_grad()
        kept.append((x, w))
        return w

    monkeypatch.setattr(torch.nn.MultiheadAttention, "forward", mha)
    monkeypatch.setattr(torch.nn.functional, "softmax", spy)
    logits = ref(torch.from_numpy(src), torch.from_numpy(tgt_in))
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             torch.from_numpy(tgt_out).reshape(-1), ignore_index=PAD)
    loss.backward()
    assert tr.loss == pytest.approx(loss.item(), rel=1e-5)

    cfg = model.config
    order = [f"enc.{i}.self_attn" for i in range(cfg.n_encoder_layers)]
    order += [f"dec.{i}.{a}" for i in range(cfg.n_decoder_layers) for a in ("self_attn", "cross_attn")]
    assert len(kept) == len(order)
    B, H = src.shape[0], cfg.n_head
    for name, (scores, weights) in zip(order, kept):
        for part, t in (("scores", scores), ("weights", weights)):
            ours = tr[f"{name}.{part}"]
            theirs = t.detach().numpy().reshape(ours.shape)
            finite = np.isfinite(theirs)
            assert np.array_equal(finite, np.isfinite(ours)), name
            np.testing.assert_allclose(ours[finite], theirs[finite], rtol=1e-5, atol=1e-5, err_msg=f"{name}.{part}")
            np.testing.assert_allclose(tr.grad(f"{name}.{part}"), t.grad.numpy().reshape(ours.shape),
                                       rtol=1e-5, atol=1e-5, err_msg=f"d/d {name}.{part}")
    assert tr["dec.0.cross_attn.weights"].shape == (B, H, tgt_in.shape[1], src.shape[1])


# ---- the encoder–decoder Transformer ---------------------------------------------------
@pytest.mark.parametrize("norm_first", [True, False])
def test_transformer_trace(norm_first):
    cfg = TransformerConfig(src_vocab_size=13, tgt_vocab_size=11, d_model=8, n_head=2, n_encoder_layers=2,
                            n_decoder_layers=2, d_ff=12, dropout=0.1, max_len=10, norm_first=norm_first)
    model = scramble(Transformer(cfg, seed=1), seed=1).eval()
    rng = np.random.default_rng(2)
    src = rng.integers(3, 13, (2, 6))
    src[1, 4:] = cfg.pad_id
    tgt = rng.integers(3, 11, (2, 5))
    tgt[:, 0] = 1
    tgt[1, 3:] = cfg.pad_id
    tr = trace(model, (src, tgt[:, :-1]), targets=tgt[:, 1:])
    loss = model.loss(src, tgt[:, :-1], tgt[:, 1:])
    assert tr.loss == loss.item()
    np.testing.assert_array_equal(tr["logits"], model(src, tgt[:, :-1]).data)
    loss.backward()
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(tr.grad(name), p.grad, err_msg=name)

    names = tr.names()
    layer = ["norm1", "self_attn.q", "self_attn.k", "self_attn.v", "self_attn.scores", "self_attn.weights",
             "self_attn.y", "self_attn.out", "resid_1", "norm2", "ff.fc", "ff.act", "ff.out", "resid_2", "out"]
    for i in range(2):
        assert all(f"enc.{i}.{n}" in names for n in layer), names
        assert all(f"dec.{i}.{n}" in names for n in layer + ["norm3", "resid_3"]
                   + [f"cross_attn.{x}" for x in ("q", "k", "v", "scores", "weights", "y", "out")])
    assert names[:3] == ["enc.tok_emb", "enc.pos_emb", "enc.in"] and names[-2:] == ["logits", "probs"]
    assert ("enc.norm" in names) == norm_first and ("dec.norm" in names) == norm_first
    cross = tr["dec.1.cross_attn.weights"]
    assert cross.shape == (2, 2, 4, 6)
    assert np.all(cross[1, :, :, 4:] == 0)  # padding in the source is never looked at
    np.testing.assert_allclose(cross.sum(-1), 1, rtol=1e-6)
    assert np.all(tr["dec.0.self_attn.scores"][..., np.triu(np.ones((4, 4), bool), 1)] == -np.inf)
    with sl.no_grad():  # the token rows, before the ·√C
        np.testing.assert_array_equal(tr["enc.tok_emb"], model.src_embed(src).data)


# ---- use ------------------------------------------------------------------------------
def test_json_for_a_web_page():
    model = gpt()
    ids, targets = batch(model.config, B=1)
    tr = trace(model, ids, targets)
    d = json.loads(tr.to_json())
    assert d["kind"] == "gpt" and d["ids"] == ids.tolist() and d["loss"] == pytest.approx(tr.loss)
    assert list(d["values"]) == tr.names() and set(d["grads"]) == set(tr.names())
    for name in ("h.0.attn.scores", "probs"):
        packed = d["values"][name]
        arr = np.frombuffer(base64.b64decode(packed["data"]), dtype="<f4").reshape(packed["shape"])
        np.testing.assert_array_equal(arr, tr[name].astype(np.float32))  # −inf included
    plain = tr.as_dict(np.float64, params=True)
    assert plain["grads"]["transformer.h.0.attn.c_attn.weight"].dtype == np.float64
    some = json.loads(tr.to_json(names=["h.1.attn.weights", "logits"]))
    assert list(some["values"]) == list(some["grads"]) == ["h.1.attn.weights", "logits"]
    with pytest.raises(KeyError, match="not recorded"):
        tr.to_json(names=["h.7.attn.weights"])


@pytest.mark.parametrize("train", [False, True])
def test_threads_trace_one_model_at_once(train):
    """Evaluation traces, and training-pass traces (each with its own dropout generator) while the
    model's own forward, in training mode, draws from the model's generator in between."""
    model = gpt(seed=9, dropout=0.3 if train else 0.0)
    inputs = [batch(model.config, seed=s) for s in range(4)]
    alone = [trace(model, ids, t, train=train, seed=j) for j, (ids, t) in enumerate(inputs)]
    results = [[None] * 4 for _ in range(2)]

    def work(k):
        for _ in range(3):
            for j, (ids, t) in enumerate(inputs):
                tr = trace(model, ids, t, train=train, seed=j)
                results[k][j] = tr if (j + k) % 2 else (tr, model(ids))[0]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for k in range(2):
        for a, b in zip(alone, results[k]):
            assert a.names() == b.names() and a.loss == b.loss
            for name in a.names():
                np.testing.assert_array_equal(a[name], b[name], err_msg=name)
                np.testing.assert_array_equal(a.grad(name), b.grad(name), err_msg=name)


def test_bad_inputs_are_clear_errors():
    model = gpt()
    ids, targets = batch(model.config)
    with pytest.raises(sl.ScratchError, match="GPT or a Transformer"):
        trace(sl.nn.Linear(2, 3), ids)
    with pytest.raises(sl.ScratchError, match="targets have shape"):
        trace(model, ids, targets[:, :3])
    with pytest.raises(sl.ScratchError, match="block_size"):
        trace(model, np.zeros((1, 9), dtype=int))
    with pytest.raises(sl.ScratchError, match="integer"):
        trace(model, np.zeros((1, 3)))
    with pytest.raises(KeyError, match="not recorded"):
        trace(model, ids)["h.9.ln_1"]
    assert isinstance(trace(model, ids), Trace)
