"""The Llama model: its gradients against float64 finite differences, the KV
cache against full passes, generation, the context limit, checkpoints, and a
trace's values and gradients against transformers run with hooks."""
import json

import numpy as np
import pytest

import scratchllm as sl
from scratchllm.errors import ScratchError
from scratchllm.generate import generate
from scratchllm.models.llama import Llama, LlamaConfig
from scratchllm.tensor import Tensor

from gradcheck import check_grads

V = 13


def tiny(**kw):
    base = dict(vocab_size=V, hidden_size=8, intermediate_size=12, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=16, initializer_range=0.4)
    return Llama(LlamaConfig(**{**base, **kw}), seed=1)


def ids_for(seed=0, B=2, T=6):
    return np.random.default_rng(seed).integers(0, V, (B, T))


def test_logits_and_loss_shapes():
    m = tiny()
    ids = ids_for()
    logits = m(ids)
    assert logits.shape == (2, 6, V) and logits.dtype == np.float32
    logits2, loss = m(ids, ids)
    np.testing.assert_array_equal(logits.data, logits2.data)
    assert loss.shape == () and np.isfinite(loss.item())
    assert m(ids[0]).shape == (1, 6, V)  # one sequence


@pytest.mark.parametrize("kw", [
    dict(),  # GQA, tied
    dict(num_key_value_heads=1, tie_word_embeddings=False, attention_bias=True, o_bias=True, mlp_bias=True),
    dict(qk_norm=True, head_dim=6, rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 4}),
])
def test_every_parameter_gradient_against_finite_differences(kw):
    m = tiny(num_hidden_layers=1, intermediate_size=6, **kw)
    for name, p in m.named_parameters():  # norms and biases away from their init, so they matter
        if "norm" in name or name.endswith("bias"):
            p.data[...] = (1.0 if "norm" in name else 0.0) + 0.3 * np.random.default_rng(7).standard_normal(p.shape)
    ids, targets = ids_for(1, B=2, T=4), ids_for(2, B=2, T=4)
    params = [p for _, p in m.named_parameters()]
    check_grads(lambda *ps: m(ids, targets)[1], params, atol=1e-6, rtol=1e-4)


def test_gradient_of_the_input_embedding_path():
    # through a float64 model: loss as a function of every weight at once is checked above; here of the stream
    m = tiny().astype(np.float64)
    x = Tensor(np.random.default_rng(3).standard_normal((1, 5, 8)), requires_grad=True)
    rope = sl.functional.rope_cos_sin(m._inv_freq, 0, 5, np.float64)
    check_grads(lambda x: m.model.layers[0](x, rope), [x])


@pytest.mark.parametrize("kw", [dict(), dict(num_key_value_heads=1), dict(num_key_value_heads=4, qk_norm=True)])
def test_cache_equals_full_pass(kw):
    m = tiny(**kw).eval()
    ids = ids_for(4, B=2, T=9)
    full = m(ids).data
    cache = m.new_cache(2)
    parts = [m(ids[:, :4], cache=cache).data]  # prefill
    for t in range(4, 9):
        parts.append(m(ids[:, t:t + 1], cache=cache).data)  # one token at a time
    assert cache.length == 9
    assert cache.k[0].shape[1] == m.n_kv_head  # only the key/value heads are stored
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, rtol=1e-5, atol=1e-6)


def test_cache_grows_past_its_first_size():
    m = tiny(max_position_embeddings=200, num_hidden_layers=1).eval()
    ids = ids_for(5, B=1, T=150)
    cache = m.new_cache(1)
    out = [m(ids[:, :60], cache=cache).data] + [m(ids[:, t:t + 1], cache=cache).data for t in range(60, 150)]
    assert cache.k[0].shape[2] >= 150
    np.testing.assert_allclose(np.concatenate(out, axis=1), m(ids).data, rtol=1e-4, atol=1e-5)


def test_generate_same_tokens_with_and_without_cache_and_streams():
    m = tiny()
    prompt = ids_for(6, B=2, T=3)
    seen = []
    with_cache = generate(m, prompt, 20, temperature=0.9, top_k=5, top_p=0.9, seed=3, on_token=seen.append)
    without = generate(m, prompt, 20, temperature=0.9, top_k=5, top_p=0.9, seed=3, use_cache=False)
    np.testing.assert_array_equal(with_cache, without)  # 3 + 20 > 16 positions: the window slides, still equal
    assert with_cache.shape == (2, 23)
    np.testing.assert_array_equal(np.stack(seen, axis=1), with_cache[:, 3:])
    np.testing.assert_array_equal(m.generate(prompt, 20, temperature=0.9, top_k=5, top_p=0.9, seed=3), with_cache)


def test_refuses_text_longer_than_its_positions():
    m = tiny()
    m(ids_for(B=1, T=16))
    with pytest.raises(ScratchError, match="max_position_embeddings 16"):
        m(ids_for(B=1, T=17))
    cache = m.new_cache(1)
    m(ids_for(B=1, T=16), cache=cache)
    with pytest.raises(ScratchError, match="17 tokens"):
        m(ids_for(B=1, T=1), cache=cache)


def test_config_refusals_are_one_line():
    for kw, what in [(dict(num_attention_heads=4, num_key_value_heads=3), "must divide"),
                     (dict(rope_scaling={"rope_type": "yarn", "factor": 2.0}), "'yarn'"),
                     (dict(hidden_size=10, num_attention_heads=4), "divisible")]:
        with pytest.raises(ScratchError, match=what) as e:
            tiny(**kw)
        assert "\n" not in str(e.value)


def test_checkpoint_round_trip(tmp_path):
    m = tiny(qk_norm=True, tie_word_embeddings=False, attention_bias=True)
    sl.save(m, tmp_path / "ckpt")
    back = sl.load(tmp_path / "ckpt")
    assert isinstance(back, Llama) and back.config == m.config
    ids = ids_for(7)
    np.testing.assert_array_equal(back(ids).data, m(ids).data)


def test_interface_sizes():
    m = tiny(head_dim=6, max_position_embeddings=32, sliding_window=20)
    assert (m.vocab_size, m.n_layer, m.n_head, m.n_kv_head, m.head_dim, m.n_embd) == (V, 2, 4, 2, 6, 8)
    assert m.context_length == 20  # the window: longer texts are refused
    assert m.unembedding() is m.token_embedding()
    assert m.final_norm(Tensor(np.ones((1, 8), np.float32))).shape == (1, 8)


# ---- a trace against transformers with hooks -------------------------------------------------
@pytest.mark.parametrize("model_type", ["llama", "qwen3"])
def test_trace_values_and_gradients_equal_transformers(model_type, tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import importlib

    name = {"llama": "Llama", "qwen3": "Qwen3"}[model_type]
    cfg = getattr(transformers, f"{name}Config")(
        hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=V, max_position_embeddings=16, tie_word_embeddings=False, head_dim=4 if model_type == "llama" else 6,
        bos_token_id=None, eos_token_id=None, pad_token_id=None, attn_implementation="eager")
    torch.manual_seed(0)
    ref = getattr(transformers, f"{name}ForCausalLM")(cfg).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.5) if p.ndim == 2 else p.copy_(1 + 0.2 * torch.randn(p.shape))
    ref.save_pretrained(tmp_path)
    ours = sl.load(tmp_path)

    # torch side: module outputs by hooks, the rotation's inputs and outputs by wrapping it, all retain_grad
    kept = {}

    def keep(key, t):
        t.retain_grad()
        kept[key] = t
        return t

    mod = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    rotate, layer_of = mod.apply_rotary_pos_emb, iter(range(cfg.num_hidden_layers))

    def traced_rotate(q, k, cos, sin, *a, **kw):
        i = next(layer_of)
        keep(f"h.{i}.attn.q_pre", q), keep(f"h.{i}.attn.k_pre", k)
        qr, kr = rotate(q, k, cos, sin, *a, **kw)
        return keep(f"h.{i}.attn.q", qr), keep(f"h.{i}.attn.k", kr)

    monkeypatch.setattr(mod, "apply_rotary_pos_emb", traced_rotate)
    hooks = [(ref.model.embed_tokens, "tok_emb"), (ref.model.norm, "ln_f")]
    for i, layer in enumerate(ref.model.layers):
        hooks += [(layer.input_layernorm, f"h.{i}.ln_1"), (layer.post_attention_layernorm, f"h.{i}.ln_2"),
                  (layer.self_attn.v_proj, f"h.{i}.attn.v_flat"), (layer.self_attn.o_proj, f"h.{i}.attn.out"),
                  (layer.mlp.gate_proj, f"h.{i}.mlp.gate"), (layer.mlp.up_proj, f"h.{i}.mlp.up"),
                  (layer.mlp, f"h.{i}.mlp.out"), (layer, f"h.{i}.resid_2")]
    for module, key in hooks:
        module.register_forward_hook(lambda m, args, out, key=key: keep(key, out[0] if isinstance(out, tuple) else out))
    ids, targets = ids_for(8, B=2, T=7), ids_for(9, B=2, T=7)
    out = ref(torch.from_numpy(ids), output_attentions=True)
    for i, w in enumerate(out.attentions):
        keep(f"h.{i}.attn.weights", w)
    logits = keep("logits", out.logits)
    torch.nn.functional.cross_entropy(logits.reshape(-1, V), torch.from_numpy(targets).reshape(-1)).backward()

    tr = sl.explain.trace(ours, ids, targets)
    B, T, D = 2, 7, ours.head_dim
    compared = 0
    for key, t in kept.items():
        value, grad = t.detach().numpy(), t.grad.numpy()
        if key.endswith("v_flat"):  # (B, T, Hkv·D) -> (B, Hkv, T, D)
            key = key.replace("v_flat", "v")
            value, grad = (a.reshape(B, T, -1, D).transpose(0, 2, 1, 3) for a in (value, grad))
        np.testing.assert_allclose(tr[key], value, rtol=1e-4, atol=1e-5, err_msg=key)
        np.testing.assert_allclose(tr.grad(key), grad, rtol=1e-3, atol=1e-6, err_msg=f"gradient of {key}")
        compared += 1
    assert compared == 2 + 13 * cfg.num_hidden_layers + 1  # tok_emb, ln_f; 13 per layer; logits


# ---- training through the shared loop (scratchllm train --arch llama) -----------------------------
TEXT = "the cat sat on the mat. the dog sat on the log. " * 40


def train_config(tmp_path, **kw):
    from scratchllm import train as T

    tmp_path.mkdir(parents=True, exist_ok=True)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    base = dict(data=str(corpus), out=str(tmp_path / "run"), arch="llama", n_layer=1, n_head=4, n_embd=16,
                block_size=8, batch_size=4, max_iters=6, eval_interval=3, eval_iters=2, warmup_iters=2,
                progress=False, sample_tokens=0, snapshots=0)
    return T.TrainConfig(**{**base, **kw})


def test_training_steps_lower_the_loss(tmp_path):
    from scratchllm import train as T

    cfg = train_config(tmp_path, max_iters=40, eval_interval=40, eval_iters=4, lr=1e-2)
    trainer = T.train(cfg, echo=lambda *a: None)
    assert isinstance(trainer.model, Llama) and trainer.model.n_kv_head == 2
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[0]["step"] == 0 and log[-1]["step"] == 40
    assert log[-1]["train_loss"] < log[0]["train_loss"] - 0.8


@pytest.mark.parametrize("threads", [1, 2])
def test_resumed_run_is_bit_identical(tmp_path, threads):
    from scratchllm import train as T

    quiet = lambda *a: None  # noqa: E731
    full = T.train(train_config(tmp_path / "a", threads=threads, lr_decay_iters=6), echo=quiet)
    T.train(train_config(tmp_path / "b", threads=threads, lr_decay_iters=6, max_iters=3), echo=quiet)
    resumed = T.train(train_config(tmp_path / "b", threads=threads, lr_decay_iters=6), resume=True, echo=quiet)
    assert resumed.step == full.step == 6
    for k, v in full.model.state_dict().items():
        np.testing.assert_array_equal(resumed.model.state_dict()[k], v, err_msg=k)
    assert isinstance(sl.load(tmp_path / "b" / "run" / "ckpt"), Llama)


def test_cli_trains_a_llama_and_refuses_what_it_lacks(tmp_path, capsys):
    from scratchllm.cli import main

    (tmp_path / "t.txt").write_text(TEXT)
    base = ["train", "--arch", "llama", "--data", str(tmp_path / "t.txt"), "--n-layer", "1", "--n-head", "4",
            "--n-embd", "16", "--block-size", "8", "--batch-size", "4", "--eval-iters", "1", "--no-progress",
            "--snapshots", "0"]
    assert main(base + ["--out", str(tmp_path / "ok"), "--max-iters", "2", "--sample-tokens", "5"]) == 0
    assert "Llama: " in capsys.readouterr().out
    for extra, message in [(["--dropout", "0.1"], "no dropout"), (["--n-kv-head", "3"], "--n-kv-head must divide"),
                           (["--arch", "mamba"], "--arch must be")]:
        assert main(base + extra + ["--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "bad").exists()
