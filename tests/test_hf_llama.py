"""Hugging Face Llama, Mistral, Qwen2 and Qwen3 directories, read and written,
checked against ``transformers`` itself: random-weight models of several small
shapes saved with ``save_pretrained``, then read with ``scratchllm.load``.
Nothing is downloaded."""
import json

import numpy as np
import pytest

import scratchllm as sl
from scratchllm.errors import ScratchError
from scratchllm.generate import generate
from scratchllm.hf import save_hf_llama
from scratchllm.models.llama import Llama, LlamaConfig

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
torch.set_num_threads(2)
transformers.logging.set_verbosity_error()

V, T = 61, 12
LLAMA3 = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8}
BASE = dict(hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=V, max_position_embeddings=32, bos_token_id=None, eos_token_id=None, pad_token_id=None)
# name -> (model_type, settings over BASE):
# GQA, MQA, tied and untied, Llama 3 scaling, biases, Qwen3's head_dim and norms
SHAPES = {
    "llama-gqa-untied-llama3": ("llama", dict(tie_word_embeddings=False, rope_theta=500000.0, rope_scaling=LLAMA3)),
    "llama-mqa-tied-biases": ("llama", dict(num_key_value_heads=1, tie_word_embeddings=True, attention_bias=True,
                                            mlp_bias=True)),
    "llama-mha": ("llama", dict(num_key_value_heads=4, tie_word_embeddings=False)),
    "mistral-gqa-window": ("mistral", dict(sliding_window=24, tie_word_embeddings=False)),
    "qwen2-gqa-tied": ("qwen2", dict(tie_word_embeddings=True, rope_theta=1000000.0)),
    "qwen2-mqa-untied": ("qwen2", dict(num_key_value_heads=1, num_attention_heads=2, tie_word_embeddings=False)),
    "qwen3-head-dim": ("qwen3", dict(head_dim=12, tie_word_embeddings=False)),
    "qwen3-mqa-tied": ("qwen3", dict(num_key_value_heads=1, head_dim=16, tie_word_embeddings=True)),
}
CLASSES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}


def hf_model(model_type, settings, seed=0):
    """A random transformers model at a working scale (HF's init keeps logits near 0, norms at 1, biases at 0)."""
    name = CLASSES[model_type]
    settings = {k: dict(v) if isinstance(v, dict) else v for k, v in settings.items()}  # transformers edits dicts
    cfg = getattr(transformers, f"{name}Config")(**{**BASE, **settings})
    torch.manual_seed(seed)
    model = getattr(transformers, f"{name}ForCausalLM")(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
            elif "norm" in pname:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module", params=list(SHAPES))
def pair(request, tmp_path_factory):
    """(name, transformers model, its directory, ours read from it)."""
    model_type, settings = SHAPES[request.param]
    ref = hf_model(model_type, settings)
    d = tmp_path_factory.mktemp(request.param)
    ref.save_pretrained(d)
    return request.param, ref, d, sl.load(d)


def ids_for(seed=0, B=2, n=T):
    return np.random.default_rng(seed).integers(0, V, (B, n))


def hf_logits(ref, ids):
    with torch.no_grad():
        return ref(torch.from_numpy(ids)).logits.numpy()


# ---- reading ------------------------------------------------------------------------
def test_reads_the_config(pair):
    name, ref, _, ours = pair
    c, h = ours.config, ref.config
    assert isinstance(ours, Llama) and ours.kind == "llama"
    head_dim = getattr(h, "head_dim", None) or h.hidden_size // h.num_attention_heads  # Qwen2 has no field
    assert (ours.n_head, ours.n_kv_head, ours.head_dim) == (h.num_attention_heads, h.num_key_value_heads, head_dim)
    assert c.tie_word_embeddings == h.tie_word_embeddings
    assert c.qk_norm == (h.model_type == "qwen3")
    assert (ours.unembedding() is ours.token_embedding()) == h.tie_word_embeddings
    if "llama3" in name:
        assert c.rope_scaling["rope_type"] == "llama3" and c.rope_theta == 500000.0


def test_logits_equal_transformers(pair):
    _, ref, _, ours = pair
    ids = ids_for()
    np.testing.assert_allclose(ours(ids).data, hf_logits(ref, ids), rtol=1e-4, atol=1e-4)


def test_every_gradient_equals_torch(pair):
    _, ref, _, ours = pair
    ids, targets = ids_for(1), ids_for(2)
    ours.zero_grad()
    _, loss = ours(ids, targets)
    loss.backward()
    ref.zero_grad()
    ref_loss = torch.nn.functional.cross_entropy(ref(torch.from_numpy(ids)).logits.reshape(-1, V),
                                                 torch.from_numpy(targets).reshape(-1))
    ref_loss.backward()
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    names = dict(ours.named_parameters())
    assert set(names) == {n for n, _ in ref.named_parameters()}  # the same names, tied weights once
    for name, p in names.items():
        theirs = ref.get_parameter(name).grad.numpy()
        err = np.linalg.norm(p.grad - theirs) / max(np.linalg.norm(theirs), 1e-12)
        assert err < 1e-3, f"{name}: relative error {err:.2e}"


def test_greedy_generation_with_cache_equals_transformers(pair):
    _, ref, _, ours = pair
    prompt = ids_for(3, B=2, n=5)
    with torch.no_grad():
        theirs = ref.generate(torch.from_numpy(prompt), max_new_tokens=15, do_sample=False, eos_token_id=None,
                              pad_token_id=0).numpy()
    np.testing.assert_array_equal(generate(ours, prompt, 15, temperature=0), theirs)


def test_export_read_back_by_transformers(pair, tmp_path):
    name, ref, _, ours = pair
    out = save_hf_llama(ours, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == ref.config.model_type
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = ids_for(4)
    np.testing.assert_allclose(hf_logits(back, ids), hf_logits(ref, ids), rtol=1e-5, atol=1e-5)


def test_export_of_a_model_made_here(tmp_path):
    # a Llama built here (not read from HF): transformers computes the same logits from our files
    cfg = LlamaConfig(vocab_size=V, hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=6,
                      num_key_value_heads=2, max_position_embeddings=16, tie_word_embeddings=False,
                      rope_scaling=LLAMA3, initializer_range=0.3)
    ours = Llama(cfg, seed=3)
    back = transformers.AutoModelForCausalLM.from_pretrained(save_hf_llama(ours, tmp_path / "x")).eval()
    ids = ids_for(5)
    np.testing.assert_allclose(ours(ids).data, hf_logits(back, ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_sharded_half_precision_directories(tmp_path, dtype):
    ref = hf_model("qwen2", dict(tie_word_embeddings=False))
    ref.to(getattr(torch, dtype)).save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ours = sl.load(tmp_path)
    assert ours.lm_head.weight.dtype == np.float32
    widened = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = ids_for(6)
    np.testing.assert_allclose(ours(ids).data, hf_logits(widened, ids), rtol=1e-4, atol=1e-4)


# ---- refusals: one line naming what is supported ----------------------------------------
def saved(tmp_path, model_type="llama", **settings):
    hf_model(model_type, {"tie_word_embeddings": False, **settings}).save_pretrained(tmp_path)
    return tmp_path


def edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))


def one_line_error(fn, *match):
    with pytest.raises(ScratchError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    for m in match:
        assert m in msg, msg
    return msg


def test_refuses_other_rope_types(tmp_path):
    d = saved(tmp_path)
    edit_config(d, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0})
    one_line_error(lambda: sl.load(d), "'yarn'", "default", "llama3")
    edit_config(d, rope_parameters=None, rope_theta=10000.0, rope_scaling={"type": "linear", "factor": 2.0})
    one_line_error(lambda: sl.load(d), "'linear'", "llama3")


def test_reads_the_hub_spelling_of_rope_settings(tmp_path):
    ref = hf_model("llama", dict(tie_word_embeddings=False, rope_theta=500000.0, rope_scaling=LLAMA3))
    ref.save_pretrained(tmp_path)
    edit_config(tmp_path, rope_parameters=None, rope_theta=500000.0, rope_scaling=dict(LLAMA3))  # as hub files have it
    ours = sl.load(tmp_path)
    ids = ids_for(7)
    np.testing.assert_allclose(ours(ids).data, hf_logits(ref, ids), rtol=1e-4, atol=1e-4)


def test_refuses_unknown_architectures(tmp_path):
    d = saved(tmp_path)
    edit_config(d, architectures=["LlamaForSequenceClassification"])
    one_line_error(lambda: sl.load(d), "LlamaForSequenceClassification", "Qwen3ForCausalLM")
    edit_config(d, model_type="gemma", architectures=["GemmaForCausalLM"])
    one_line_error(lambda: sl.load(d), "'gemma'", "llama")


def test_refuses_a_missing_shard(tmp_path):
    hf_model("llama", {"tie_word_embeddings": False}).save_pretrained(tmp_path, max_shard_size="20KB")
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[-1].unlink()
    one_line_error(lambda: sl.load(tmp_path), shards[-1].name, "missing")


def test_refuses_shapes_that_do_not_match_the_config(tmp_path):
    d = saved(tmp_path)
    edit_config(d, intermediate_size=48)
    one_line_error(lambda: sl.load(d), "gate_proj.weight", "(40, 32)", "(48, 32)")
    edit_config(d, intermediate_size=40, num_key_value_heads=4)
    one_line_error(lambda: sl.load(d), "k_proj.weight", "do not match")


def test_refuses_a_text_longer_than_the_sliding_window(tmp_path):
    d = saved(tmp_path, "mistral", sliding_window=6)
    model = sl.load(d)
    model(ids_for(8, n=6))  # within the window: exact
    one_line_error(lambda: model(ids_for(8, n=7)), "sliding window of 6")


def test_qwen_window_switched_off_is_no_window(tmp_path):
    d = saved(tmp_path, "qwen2")
    edit_config(d, sliding_window=4, use_sliding_window=False)  # as Qwen2 hub files: a size, switched off
    assert sl.load(d).context_length == 32


def test_cli_refusal_is_one_line_exit_2(tmp_path):
    import subprocess
    import sys

    d = saved(tmp_path / "m", "qwen3", head_dim=8)
    edit_config(d, rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})
    proc = subprocess.run([sys.executable, "-m", "scratchllm", "export", "--ckpt", str(d), "--hf", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "'dynamic'" in proc.stderr
    assert not (tmp_path / "o").exists()
