"""The interface every language model answers (models/base.py), and the layers
that ask it instead of the model's kind: trace, explain gpt and explore on a
Llama-family model as on a GPT.

The Llama's trace is checked name by name against transformers running the
same weights: module outputs and their gradients kept with hooks and
retain_grad, attention's weights from ``output_attentions``; what happens
inside the attention op (the rotation, the scores) is computed here in
float64 from torch's own cos/sin and tensors."""
import json
import re

import numpy as np
import pytest

import scratchllm as sl
from scratchllm.cli import main
from scratchllm.explain import trace
from scratchllm.models import GPT, GPTConfig, LanguageModel, Transformer, TransformerConfig
from scratchllm.models.llama import Llama, LlamaConfig
from scratchllm.tokenizers import CharTokenizer

TEXT = "To be or not to be, that is the question. "
NUM = r"[+-]?\d+\.\d+(?:e[+-]\d+)?"


def small_llama(vocab=16, **over):
    cfg = dict(vocab_size=vocab, hidden_size=16, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=False)
    return Llama(LlamaConfig(**{**cfg, **over}), seed=0)


MODELS = {
    "gpt": lambda: GPT(GPTConfig(vocab_size=20, block_size=12, n_layer=2, n_head=2, n_embd=16, bias=True), seed=1),
    "gpt-untied": lambda: GPT(GPTConfig(vocab_size=20, block_size=12, n_layer=3, n_head=4, n_embd=16,
                                        tie_weights=False), seed=1),
    "transformer": lambda: Transformer(TransformerConfig(src_vocab_size=18, tgt_vocab_size=20, d_model=16, n_head=2,
                                                         n_encoder_layers=1, n_decoder_layers=2, d_ff=24,
                                                         max_len=12, dropout=0.0), seed=1),
    "llama": lambda: small_llama(vocab=20),
    "llama-tied-mqa": lambda: small_llama(vocab=20, num_key_value_heads=1, tie_word_embeddings=True),
}


# ---- the interface ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_sizes_and_ends_of_every_model(name):
    model = MODELS[name]()
    cfg = model.config
    assert isinstance(model, LanguageModel) and model.kind == name.split("-")[0]
    expect = {  # the config's own fields, family by family
        "gpt": (cfg.__dict__.get("vocab_size"), cfg.__dict__.get("block_size"), cfg.__dict__.get("n_layer"),
                cfg.__dict__.get("n_head"), cfg.__dict__.get("n_head"), cfg.__dict__.get("n_embd")),
        "transformer": (cfg.__dict__.get("tgt_vocab_size"), cfg.__dict__.get("max_len"),
                        cfg.__dict__.get("n_decoder_layers"), cfg.__dict__.get("n_head"), cfg.__dict__.get("n_head"),
                        cfg.__dict__.get("d_model")),
        "llama": (cfg.__dict__.get("vocab_size"), cfg.__dict__.get("max_position_embeddings"),
                  cfg.__dict__.get("num_hidden_layers"), cfg.__dict__.get("num_attention_heads"),
                  cfg.__dict__.get("num_key_value_heads"), cfg.__dict__.get("hidden_size")),
    }[model.kind]
    got = (model.vocab_size, model.context_length, model.n_layer, model.n_head, model.n_kv_head, model.n_embd)
    assert got == expect
    assert model.head_dim * model.n_head == model.n_embd
    V, C = model.vocab_size, model.n_embd
    emb, unemb = model.token_embedding(), model.unembedding()
    assert emb.shape == (V, C) and unemb.shape == (V, C)
    params = dict(model.named_parameters())
    assert any(p is emb for p in params.values()) and any(p is unemb for p in params.values())
    tied = {"gpt": True, "gpt-untied": False, "transformer": True, "llama": False, "llama-tied-mqa": True}[name]
    assert (unemb is emb) == tied
    assert model.is_encoder_decoder == (model.kind == "transformer")
    back = type(model).from_config(json.loads(json.dumps(model.config_dict())))  # plain JSON, same architecture
    assert {n: p.shape for n, p in back.named_parameters()} == {n: p.shape for n, p in params.items()}


def final_norm_by_hand(model, x):
    """The norm before the unembedding, written out from its formula and the model's weights."""
    x = np.asarray(x, dtype=np.float64)
    if model.kind == "llama":
        w, eps = model.model.norm.weight.data, model.config.rms_norm_eps
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w
    ln = model.transformer.ln_f if model.kind == "gpt" else model.decoder.norm
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + ln.eps) * ln.weight.data + ln.bias.data


@pytest.mark.parametrize("name", list(MODELS))
def test_final_norm_and_unembedding_give_the_logits(name):
    model = MODELS[name]().eval()
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 18, (2, 7))
    if model.is_encoder_decoder:
        tr = trace(model, (ids, ids))
        last = tr[f"dec.{model.n_layer - 1}.resid_3"]
    else:
        tr = trace(model, ids)
        last = tr[f"h.{model.n_layer - 1}.resid_2"]
    with sl.no_grad():
        normed = model.final_norm(sl.tensor(last)).data
    np.testing.assert_allclose(normed, final_norm_by_hand(model, last), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(normed @ model.unembedding().data.T, tr["logits"], rtol=1e-4, atol=1e-5)


def test_a_model_without_trace_names_is_refused():
    class Bare(LanguageModel):
        kind = "bare"

        def forward(self, ids, targets=None):
            return sl.tensor(np.zeros((1, 1, 2), dtype=np.float32))

    with pytest.raises(sl.ScratchError, match="no trace_names"):
        trace(Bare(), np.array([1, 2]))


# ---- a Llama's trace against transformers ------------------------------------------------------
LAYER_NAMES = ["ln_1", "attn.q_pre", "attn.k_pre", "attn.q", "attn.k", "attn.v", "attn.scores", "attn.weights",
               "attn.y", "attn.out", "resid_1", "ln_2", "mlp.gate", "mlp.up", "mlp.silu", "mlp.prod", "mlp.out",
               "resid_2"]


def llama_names(n_layer):
    return {"tok_emb", "emb", "ln_f", "logits", "probs"} | {f"h.{i}.{n}" for i in range(n_layer) for n in LAYER_NAMES}


def hf_reference(model_type, **settings):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    name = {"llama": "Llama", "qwen3": "Qwen3"}[model_type]
    cfg = getattr(transformers, f"{name}Config")(
        hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=23, max_position_embeddings=32, bos_token_id=None, eos_token_id=None, pad_token_id=None,
        attn_implementation="eager", **settings)
    torch.manual_seed(0)
    ref = getattr(transformers, f"{name}ForCausalLM")(cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # weights of a working scale, norms' scales away from 1
        for pname, p in ref.named_parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
            else:
                p.copy_((1 if "norm" in pname else 0) + 0.2 * torch.randn(p.shape, generator=g))
    return ref


def torch_pass(ref, ids, targets):
    """Values and gradients of what our trace names, from transformers (module outputs kept by hooks)."""
    import torch

    kept = {}

    def keep(name, t):
        t.retain_grad()
        kept[name] = t

    hooks = []
    m = ref.model
    hooks.append(m.embed_tokens.register_forward_hook(lambda mod, a, out: keep("tok_emb", out)))
    for i, layer in enumerate(m.layers):
        at = layer.self_attn
        hooks += [
            layer.input_layernorm.register_forward_hook(lambda mod, a, out, i=i: keep(f"h.{i}.ln_1", out)),
            # q and k as RoPE receives them: after Qwen3's per-head norms where present
            (at.q_norm if hasattr(at, "q_norm") else at.q_proj).register_forward_hook(
                lambda mod, a, out, i=i: keep(f"h.{i}.attn.q_pre", out)),
            (at.k_norm if hasattr(at, "k_norm") else at.k_proj).register_forward_hook(
                lambda mod, a, out, i=i: keep(f"h.{i}.attn.k_pre", out)),
            at.v_proj.register_forward_hook(lambda mod, a, out, i=i: keep(f"h.{i}.attn.v", out)),
            at.o_proj.register_forward_pre_hook(lambda mod, a, i=i: keep(f"h.{i}.attn.y", a[0])),
            at.register_forward_hook(lambda mod, a, out, i=i: keep(f"h.{i}.attn.out", out[0])),
            layer.post_attention_layernorm.register_forward_pre_hook(lambda mod, a, i=i: keep(f"h.{i}.resid_1", a[0])),
            layer.post_attention_layernorm.register_forward_hook(lambda mod, a, out, i=i: keep(f"h.{i}.ln_2", out)),
            layer.mlp.gate_proj.register_forward_hook(lambda mod, a, out, i=i: keep(f"h.{i}.mlp.gate", out)),
            layer.mlp.up_proj.register_forward_hook(lambda mod, a, out, i=i: keep(f"h.{i}.mlp.up", out)),
            layer.mlp.act_fn.register_forward_hook(lambda mod, a, out, i=i: keep(f"h.{i}.mlp.silu", out)),
            layer.mlp.down_proj.register_forward_pre_hook(lambda mod, a, i=i: keep(f"h.{i}.mlp.prod", a[0])),
            layer.mlp.register_forward_hook(lambda mod, a, out, i=i: keep(f"h.{i}.mlp.out", out)),
            layer.register_forward_hook(
                lambda mod, a, out, i=i: keep(f"h.{i}.resid_2", out[0] if isinstance(out, tuple) else out)),
        ]
    hooks.append(m.norm.register_forward_hook(lambda mod, a, out: keep("ln_f", out)))
    x = torch.from_numpy(ids)
    out = ref(x, output_attentions=True)
    for i, w in enumerate(out.attentions):
        keep(f"h.{i}.attn.weights", w)
    keep("logits", out.logits)
    loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]),
                                             torch.from_numpy(targets).reshape(-1))
    loss.backward()
    for h in hooks:
        h.remove()
    pos = torch.arange(ids.shape[1])[None]
    cos, sin = m.rotary_emb(kept["tok_emb"], pos)  # (1, T, D) each
    as_np = lambda t: t.detach().double().numpy()  # noqa: E731
    return ({n: as_np(t) for n, t in kept.items()}, {n: as_np(t.grad) for n, t in kept.items()}, float(loss.detach()),
            as_np(cos)[0], as_np(sin)[0])


def rotate(x, cos, sin):
    """Hugging Face's rotary embedding: x·cos + rotate_half(x)·sin, rotate_half(x) = (−x₂, x₁)."""
    h = x.shape[-1] // 2
    return x * cos + np.concatenate([-x[..., h:], x[..., :h]], -1) * sin


def heads(a, n):
    """(B, T, n·D) or (B, T, n, D) -> (B, n, T, D)."""
    B, T = a.shape[:2]
    return a.reshape(B, T, n, -1).transpose(0, 2, 1, 3)


@pytest.mark.parametrize("model_type,settings", [
    ("llama", dict(tie_word_embeddings=False)),
    ("qwen3", dict(head_dim=8, tie_word_embeddings=True)),  # head_dim ≠ hidden/heads, per-head q/k norms
])
def test_llama_trace_values_and_gradients_equal_transformers(tmp_path, model_type, settings):
    ref = hf_reference(model_type, **settings)
    ref.save_pretrained(tmp_path)
    model = sl.load(tmp_path)
    assert isinstance(model, Llama)
    rng = np.random.default_rng(1)
    B, T = 2, 7
    ids, targets = rng.integers(0, 23, (B, T)), rng.integers(0, 23, (B, T))
    tr = trace(model, ids, targets)
    assert set(tr.names()) == llama_names(model.n_layer)  # every documented name, nothing else

    vals, grads, loss, cos, sin = torch_pass(ref, ids, targets)
    assert tr.loss == pytest.approx(loss, rel=1e-5)
    H, Hkv, D = model.n_head, model.n_kv_head, model.head_dim
    group = H // Hkv
    vals["emb"], grads["emb"] = vals["tok_emb"], grads["tok_emb"]  # no position vectors: emb is tok_emb
    for i in range(model.n_layer):
        p = f"h.{i}.attn."
        for part, n in (("q_pre", H), ("k_pre", Hkv), ("v", Hkv), ("weights", None)):
            if n:  # (B, T, n·D) or (B, T, n, D) -> (B, n, T, D), as we record them
                vals[p + part], grads[p + part] = heads(vals[p + part], n), heads(grads[p + part], n)
        # inside the attention op, from torch's tensors and its cos/sin: the rotation is orthogonal,
        # so the gradient after it is the gradient before it, rotated the same way
        for part in ("q", "k"):
            vals[p + part] = rotate(vals[p + part + "_pre"], cos, sin)
            grads[p + part] = rotate(grads[p + part + "_pre"], cos, sin)
        k_rep = np.repeat(vals[p + "k"], group, axis=1)  # (B, H, T, D): query head h reads key/value head h // group
        s = vals[p + "q"] @ k_rep.transpose(0, 1, 3, 2) / np.sqrt(D)
        s[:, :, np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] = -np.inf
        vals[p + "scores"] = s
        w, gw = vals[p + "weights"], grads[p + "weights"]
        grads[p + "scores"] = w * (gw - (w * gw).sum(-1, keepdims=True))  # softmax's backward by hand
    probs = np.exp(vals["logits"] - vals["logits"].max(-1, keepdims=True))
    vals["probs"] = probs / probs.sum(-1, keepdims=True)
    g = np.zeros_like(probs)  # −mean log p[target]: −1 / (N p[target]) at each target
    b, t = np.indices(targets.shape)
    g[b, t, targets] = -1 / (targets.size * vals["probs"][b, t, targets])
    grads["probs"] = g

    assert set(vals) == set(tr.names())
    for name in tr.names():
        ours, theirs = tr[name].astype(np.float64), vals[name]
        assert ours.shape == theirs.shape, name
        finite = np.isfinite(theirs)
        assert np.array_equal(finite, np.isfinite(ours)), name
        np.testing.assert_allclose(ours[finite], theirs[finite], rtol=1e-4, atol=2e-5, err_msg=f"value of {name}")
        gt, go = grads[name], tr.grad(name).astype(np.float64)
        scale = np.abs(gt).max() + 1e-12
        np.testing.assert_allclose(go / scale, gt / scale, atol=2e-4, err_msg=f"gradient of {name}")
    for name, p in ref.named_parameters():  # and the parameters, under the same names
        g_ours = tr.grad(name).astype(np.float64)
        g_ref = p.grad.double().numpy()
        np.testing.assert_allclose(g_ours / np.abs(g_ref).max(), g_ref / np.abs(g_ref).max(), atol=2e-4, err_msg=name)


def test_llama_training_trace_names_have_gradients():
    """train=True adds nothing a Llama lacks (it has no dropout) and every value still has its gradient."""
    model = small_llama()
    ids = np.arange(8) % 16
    tr = trace(model, ids, np.roll(ids, -1), train=True, seed=3)
    assert set(tr.names()) == llama_names(model.n_layer)
    assert all(tr.grad(n).shape == tr[n].shape for n in tr.names())


def test_a_value_the_backward_pass_never_reached_is_an_error(monkeypatch):
    """A gradient that was not computed is reported, never shown as zeros."""
    import importlib

    trace_module = importlib.import_module("scratchllm.explain.trace")
    model = small_llama()
    ids = np.arange(6)
    real = trace_module._Recorder._keep

    def forget_ln_2(self, name, t):  # a value recorded but not kept for the backward pass
        real(self, name, t)
        if name.endswith("post_attention_layernorm"):
            self.retain.pop(id(t), None)

    monkeypatch.setattr(trace_module._Recorder, "_keep", forget_ln_2)
    with pytest.raises(RuntimeError, match=r"h\.0\.ln_2 .*no gradient"):  # a bug, not the user's mistake
        trace(model, ids, np.roll(ids, -1))


# ---- explain gpt and explore on a Llama checkpoint ---------------------------------------------------
@pytest.fixture(scope="module")
def llama_ckpt(tmp_path_factory):
    tok = CharTokenizer().train(TEXT * 4)
    model = small_llama(vocab=tok.vocab_size)
    d = tmp_path_factory.mktemp("llama") / "ckpt"
    sl.save(model, d, tokenizer=tok)
    return d


def test_explain_gpt_reads_a_llama_checkpoint(llama_ckpt, capsys):
    code = main(["explain", "gpt", "--model", str(llama_ckpt), "--text", "To be or", "--layer", "1", "--head", "3",
                 "--target", " ", "--lr", "0.1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    model, tok = sl.load(llama_ckpt).eval(), sl.checkpoint.load_tokenizer(llama_ckpt)
    assert out.startswith("Llama: 2 layers, 4 heads of 4 numbers sharing 2 key/value heads")
    ids = np.array(tok.encode("To be or"))
    targets = np.full(len(ids), -100)
    targets[-1] = tok.encode(" ")[0]
    with sl.no_grad():
        logits = model(ids[None]).data[0, -1].astype(np.float64)
    # the attention worked out: query head 3 reads key/value head 1; its scores are q·k/√D of the model
    assert "query heads 2 … 3 share key/value head 1" in out
    tr = trace(model, ids, targets)
    scores = [float(m[1]) for m in re.finditer(rf"model's score ({NUM})$", out, re.M)]
    assert len(scores) == len(ids)
    np.testing.assert_allclose(scores, tr["h.1.attn.scores"][0, 3, -1], atol=2e-6)
    assert "no position vector is added" in out and "gated MLP (silu(gate) × up, 16 → 40 → 16)" in out
    before = re.search(r"the query before its rotation: (.*)$", out, re.M)[1]
    np.testing.assert_allclose([float(x) for x in re.findall(NUM, before)], tr["h.1.attn.q_pre"][0, 3, -1], atol=6e-5)
    rows = re.findall(rf"^\s+\d+\s+'.*'\s+(\d+)\s+({NUM})\s+({NUM})$", out.split("Step 8. ")[1].split("Step 9.")[0], re.M)
    assert len(rows) == 10
    for i, logit, _ in rows:
        assert float(logit) == pytest.approx(logits[int(i)], abs=1e-4)
    loss = float(re.search(rf"loss = −log p = ({NUM})", out)[1])
    assert loss == pytest.approx(-np.log(np.exp(logits - logits.max())[targets[-1]] / np.exp(logits - logits.max()).sum()),
                                 abs=1e-5)


def test_explore_answers_for_a_llama(llama_ckpt):
    from scratchllm.explore.api import Explorer

    e = Explorer(llama_ckpt)
    model = sl.load(llama_ckpt).eval()
    info = e.info()
    assert info["kind"] == "llama" and info["decoder_only"] and (info["heads"], info["kv_heads"]) == (4, 2)
    assert info["layers"] == 2 and info["width"] == 16 and info["context"] == 32
    text = "To be or"
    ids = e.encode(text)
    tr = trace(model, np.array([ids]))
    r = e.attention({"text": text, "layer": 1})
    np.testing.assert_allclose(np.array(r["weights"], dtype=float), tr["h.1.attn.weights"][0], atol=1e-6)
    r = e.block({"text": text, "layer": 0})
    assert r["mlp_label"] == "silu(gate) × up" and "gelu" not in r
    np.testing.assert_allclose(r["mlp"], tr["h.0.mlp.prod"][0], atol=1e-4)
    r = e.next_token({"text": text})
    with sl.no_grad():
        logits = model(np.array([ids])).data[0, -1].astype(np.float64)
    top = r["candidates"][0]
    assert top["id"] == int(np.argmax(logits)) and top["logit"] == pytest.approx(logits.max(), abs=1e-5)
    r = e.backward({"text": text, "target": " "})
    assert len(r["grad_stream"]) == 2 and r["n_params"] == len(list(model.named_parameters()))
    r = e.embeddings({})
    assert len(r["x"]) == model.vocab_size
    with pytest.raises(sl.ScratchError, match="Transformer"):
        e.translate({"text": "ein"})


def test_the_explore_page_shows_a_llama(llama_ckpt, tmp_path):
    """The page in headless Chromium: the model line names the Llama and its shared key/value heads, the
    block view draws its gated MLP's silu(gate) × up from the trace."""
    import os
    from pathlib import Path

    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = os.environ.get("SCRATCHLLM_CHROMIUM", "/usr/bin/chromium")
    if not Path(chromium).is_file():
        pytest.skip(f"no Chromium at {chromium}: apt-get install chromium, or set SCRATCHLLM_CHROMIUM")
    from test_explore_http import serving

    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    text = "To be or"
    with serving(llama_ckpt) as (explorer, url), sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.wait_for_function("Number(document.body.dataset.renderedNext || 0) > 0", timeout=20_000)
        info = page.text_content("#model-info")
        assert info.startswith("Llama · 2 layers · 4 heads (2 key/value) · width 16 · 16 tokens · context 32")
        page.fill("#text", text)
        page.wait_for_function("Number(document.body.dataset.renderedNext || 0) > 1", timeout=20_000)
        page.click('#tabs button[data-view="block"]')
        page.wait_for_function("Number(document.body.dataset.renderedBlock || 0) > 0", timeout=20_000)
        z = page.evaluate("document.getElementById('block-gelu').data[0].z")
        title = page.evaluate("document.getElementById('block-gelu').layout.title.text")
        browser.close()
    assert not errors, errors
    tr = trace(explorer.model, np.array([explorer.tokenizer.encode(text)]))
    np.testing.assert_allclose(z, tr["h.0.mlp.prod"][0], atol=1e-4)
    assert "40 activations, silu(gate) × up" in title


@pytest.mark.slow
def test_smollm2_from_its_gguf_file_is_traced_and_explained():
    """A real chat model (SmolLM2-135M-Instruct, Q4_1 GGUF) read through open_model: every documented trace
    name of its 30 layers, and explain gpt's printout of it (its published shape; ' Paris' after
    'The capital of France is')."""
    import smollm2_refs
    from scratchllm.explain.gpt import explain_gpt

    model, tok = smollm2_refs.ours()
    ids = tok.encode("The capital of France is")
    tr = trace(model, np.array(ids))
    assert set(tr.names()) == llama_names(30)
    paris = tok.encode(" Paris")
    assert len(paris) == 1 and int(np.argmax(tr["logits"][0, -1])) == paris[0]
    out = explain_gpt(model, tok, ids, layer=3, head=5)
    assert out.startswith("Llama: 30 layers, 9 heads of 64 numbers sharing 3 key/value heads (width C = 576), "
                          "vocabulary 49152")
    assert "query heads 3 … 5 share key/value head 1" in out
    top = re.search(r"^\s+1\s+(' Paris')\s+(\d+)", out.split("Step 8. ")[1], re.M)
    assert top and int(top[2]) == paris[0]
