"""Hugging Face GPT-2 import and export, checked against ``transformers`` itself.

Every HF model here is built from a small config and saved locally; nothing is downloaded.
"""
import json

import numpy as np
import pytest

import scratchllm as sl
from scratchllm.hf import load_hf_gpt2, save_hf_gpt2
from scratchllm.models.gpt import GPT, GPTConfig

try:
    import torch
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

    torch.set_num_threads(2)
    transformers.logging.set_verbosity_error()
except ImportError:  # test extras: the export checks that need no reference still run
    torch = transformers = None
needs_hf = pytest.mark.skipif(transformers is None, reason="PyTorch and transformers (test extras) are not installed")

SMALL_HF = dict(n_layer=2, n_embd=32, n_head=4, vocab_size=100, n_positions=16,
                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)
SMALL = dict(vocab_size=100, block_size=16, n_layer=2, n_head=4, n_embd=32)


def scramble_hf(model, seed=0):
    """Weights of a working scale (HF's init keeps logits near 0 and biases at 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[0] ** 0.5)
            elif name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model


def scramble(model, seed=0):
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if p.ndim == 2:
            values = rng.standard_normal(p.shape) / np.sqrt(p.shape[1])
        elif name.endswith("weight"):
            values = 1 + 0.2 * rng.standard_normal(p.shape)
        else:
            values = 0.2 * rng.standard_normal(p.shape)
        p.data[...] = values.astype(p.dtype)
    return model


def hf_logits(hf, ids):
    with torch.no_grad():
        return hf(torch.from_numpy(ids)).logits.numpy()


def make_hf_dir(path, seed=0, **overrides):
    torch.manual_seed(seed)
    hf = scramble_hf(GPT2LMHeadModel(GPT2Config(**{**SMALL_HF, **overrides})), seed).eval()
    hf.save_pretrained(path)
    return hf


def ids_for(seed, B=2, T=16, V=100):
    return np.random.default_rng(seed).integers(0, V, size=(B, T))


@pytest.fixture
def hf_dir(tmp_path):
    d = tmp_path / "gpt2"
    return d, make_hf_dir(d)


# ---- import -------------------------------------------------------------------------
@needs_hf
def test_hf_gpt2_loads_with_the_same_logits(hf_dir):
    d, hf = hf_dir
    model = sl.load(d)
    assert isinstance(model, GPT)
    c = model.config
    assert (c.vocab_size, c.block_size, c.n_layer, c.n_head, c.n_embd, c.tie_weights) == (100, 16, 2, 4, 32, True)
    ids = ids_for(1)
    np.testing.assert_allclose(model(ids).data, hf_logits(hf, ids), rtol=0, atol=1e-4)


@needs_hf
def test_greedy_continuation_matches_hf(hf_dir):
    d, hf = hf_dir
    model = sl.load(d)
    prompt = ids_for(2, B=2, T=4)
    ours = model.generate(prompt, 10, temperature=0)
    with torch.no_grad():
        ref = hf.generate(torch.from_numpy(prompt), max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert ours.shape == (2, 14)
    np.testing.assert_array_equal(ours, ref.numpy())


@needs_hf
def test_untied_sharded_and_bare_gpt2_directories(tmp_path):
    ids = ids_for(3)
    hf = make_hf_dir(tmp_path / "untied", seed=1, tie_word_embeddings=False)
    model = sl.load(tmp_path / "untied")
    assert not model.config.tie_weights
    np.testing.assert_allclose(model(ids).data, hf_logits(hf, ids), rtol=0, atol=1e-4)

    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    np.testing.assert_allclose(sl.load(tmp_path / "sharded")(ids).data, hf_logits(hf, ids), rtol=0, atol=1e-4)

    torch.manual_seed(2)  # a bare GPT2Model: names without "transformer.", head tied to wte
    scramble_hf(GPT2Model(GPT2Config(**SMALL_HF)), seed=2).save_pretrained(tmp_path / "bare")
    ref = GPT2LMHeadModel.from_pretrained(tmp_path / "bare").eval()
    np.testing.assert_allclose(sl.load(tmp_path / "bare")(ids).data, hf_logits(ref, ids), rtol=0, atol=1e-4)


@needs_hf
def test_bfloat16_weights_are_widened_exactly(tmp_path):
    hf = make_hf_dir(tmp_path / "f32", seed=3).to(torch.bfloat16)
    hf.save_pretrained(tmp_path / "bf16")
    model = sl.load(tmp_path / "bf16")
    ref = dict(hf.named_parameters())
    for name, p in model.named_parameters():
        assert p.dtype == np.float32
        r = ref[name].detach().float().numpy()
        conv1d = ".c_" in name and name.endswith("weight")  # HF stores these (in, out)
        np.testing.assert_array_equal(p.data, r.T if conv1d else r, err_msg=name)


# ---- export -------------------------------------------------------------------------
@needs_hf
@pytest.mark.parametrize("variant", [{}, dict(tie_weights=False), dict(bias=False)], ids=["tied", "untied", "no-bias"])
def test_exported_gpt_loads_in_hf_with_the_same_logits(tmp_path, variant):
    model = scramble(GPT(GPTConfig(**SMALL, **variant), seed=4), seed=5)
    out = save_hf_gpt2(model, tmp_path / "export")
    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    assert hf.config.tie_word_embeddings == model.config.tie_weights
    ids = ids_for(6)
    np.testing.assert_allclose(hf_logits(hf, ids), model(ids).data, rtol=0, atol=1e-4)

    back = sl.load(out)  # and back again, exactly
    ours = dict(back.named_parameters())
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(ours[name].data, p.data, err_msg=name)


def test_export_replaces_an_earlier_export_but_not_other_folders(tmp_path):
    model = GPT(GPTConfig(**SMALL), seed=7)
    save_hf_gpt2(model, tmp_path / "x")
    save_hf_gpt2(model, tmp_path / "x")  # an earlier export is replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(sl.ScratchError, match="not a GPT-2 export"):
        save_hf_gpt2(model, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_sinusoidal_positions_cannot_be_exported(tmp_path):
    model = GPT(GPTConfig(**SMALL, positional="sinusoidal"), seed=8)
    with pytest.raises(sl.ScratchError, match="sinusoidal positions cannot be written as GPT-2"):
        save_hf_gpt2(model, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_char_tokenizer_cannot_be_exported(tmp_path):
    model = GPT(GPTConfig(**SMALL), seed=9)
    tok = sl.tokenizers.CharTokenizer.from_text("hello world")
    with pytest.raises(sl.ScratchError, match="CharTokenizer cannot be written"):
        save_hf_gpt2(model, tmp_path / "x", tokenizer=tok)


# ---- bad input ----------------------------------------------------------------------
@needs_hf
def test_missing_weights_file_is_a_clear_error(hf_dir):
    d, _ = hf_dir
    (d / "model.safetensors").unlink()
    with pytest.raises(sl.ScratchError, match="no model.safetensors"):
        sl.load(d)
    (d / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(sl.ScratchError, match="pickle files are never read"):
        load_hf_gpt2(d)


@needs_hf
@pytest.mark.parametrize("change, message", [
    ({"model_type": "bert"}, "model_type is 'bert'"),
    ({"activation_function": "relu"}, "activation_function 'relu'"),
    ({"n_layer": 3}, "lacks weights"),
])
def test_unsupported_or_mismatched_config_is_a_clear_error(hf_dir, change, message):
    d, _ = hf_dir
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(sl.ScratchError, match=message):
        sl.load(d)


@needs_hf
def test_corrupt_weights_file_is_a_clear_error(hf_dir):
    d, _ = hf_dir
    (d / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(sl.ScratchError, match="not a readable safetensors file"):
        sl.load(d)


# ---- command line -------------------------------------------------------------------
@needs_hf
def test_cli_export_with_bpe_tokenizer(tmp_path, capsys):
    from scratchllm.cli import main

    text = "the cat sat on the mat. the cats sat on the mats. " * 20
    tok = sl.tokenizers.BPETokenizer(special_tokens=["<|endoftext|>"]).train(text, vocab_size=270)
    model = scramble(GPT(GPTConfig(**{**SMALL, "vocab_size": tok.vocab_size}), seed=10), seed=11)
    sl.save(model, tmp_path / "ckpt", tokenizer=tok)

    assert main(["export", "--ckpt", str(tmp_path / "ckpt"), "--hf", str(tmp_path / "hf")]) == 0
    assert "tokenizer: BPETokenizer" in capsys.readouterr().out
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    ids = ids_for(12, V=tok.vocab_size)
    np.testing.assert_allclose(hf_logits(hf, ids), model(ids).data, rtol=0, atol=1e-4)
    assert hf.config.eos_token_id == tok.special_tokens["<|endoftext|>"]
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "hf" / "tokenizer.json"))
    sample = "the mat sat on the cats."
    assert hf_tok.encode(sample) == tok.encode(sample)


def test_cli_export_errors_are_one_line(tmp_path, capsys):
    from scratchllm.cli import main

    model = GPT(GPTConfig(**SMALL, positional="sinusoidal"), seed=13)
    sl.save(model, tmp_path / "ckpt", tokenizer=sl.tokenizers.CharTokenizer.from_text("abc"))
    assert main(["export", "--ckpt", str(tmp_path / "ckpt"), "--hf", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "cannot be written as GPT-2" in err and "Traceback" not in err
    assert main(["export", "--ckpt", str(tmp_path / "nothing"), "--hf", str(tmp_path / "hf")]) == 2
    assert "does not exist" in capsys.readouterr().err
