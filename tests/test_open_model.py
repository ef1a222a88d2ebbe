"""checkpoint.open_model: one place that tells our checkpoints, run directories,
Hugging Face model directories and GGUF files apart, and gives the model with
its tokenizer; sl.load, load_tokenizer and every command that reads a model
(--ckpt, or its other spelling --model) go through it."""
import json
import sys

import numpy as np
import pytest

import scratchllm as sl
from scratchllm import checkpoint
from scratchllm.cli import main
from scratchllm.models import GPT, GPTConfig
from scratchllm.models.llama import Llama, LlamaConfig
from scratchllm.tokenizers import BPETokenizer, CharTokenizer

TEXT = "To be or not to be, that is the question. Whether 'tis nobler in the mind to suffer. " * 3


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer().train(TEXT, vocab_size=300)


@pytest.fixture(scope="module")
def gpt(bpe):
    return GPT(GPTConfig(vocab_size=bpe.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=8), seed=3)


def test_ours_and_a_run_directory(tmp_path, gpt, bpe):
    sl.save(gpt, tmp_path / "run" / "ckpt", tokenizer=bpe)
    for path in (tmp_path / "run" / "ckpt", tmp_path / "run"):  # a run directory holds ckpt/
        model, tok = checkpoint.open_model(path)
        assert isinstance(model, GPT) and same_weights(model, gpt)
        assert tok.encode("To be, or not") == bpe.encode("To be, or not")
        assert same_weights(sl.load(path), gpt)
        assert sl.checkpoint.load_tokenizer(path).encode("nobler") == bpe.encode("nobler")
        assert checkpoint.locate(path) == tmp_path / "run" / "ckpt"
    model, tok = checkpoint.open_model(tmp_path / "run", tokenizer=False)
    assert tok is None and same_weights(model, gpt)


def test_a_hugging_face_gpt2_directory(tmp_path, gpt, bpe):
    tokenizers = pytest.importorskip("tokenizers")
    d = sl.hf.save_hf(gpt, tmp_path / "hf", tokenizer=bpe)
    assert json.loads((d / "config.json").read_text())["model_type"] == "gpt2"
    model, tok = checkpoint.open_model(d)
    assert isinstance(model, GPT) and same_weights(model, gpt)
    ref = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))  # the Hugging Face library reads the same file
    for text in ("To be, or not to be", "Whether 'tis nobler", "the question?"):
        assert tok.encode(text) == ref.encode(text).ids


def test_a_hugging_face_llama_directory(tmp_path, bpe):
    tokenizers = pytest.importorskip("tokenizers")
    llama = Llama(LlamaConfig(vocab_size=bpe.vocab_size, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                              num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16), seed=2)
    d = sl.hf.save_hf(llama, tmp_path / "hf", tokenizer=bpe)
    assert json.loads((d / "config.json").read_text())["model_type"] in ("llama", "mistral", "qwen2", "qwen3")
    model, tok = checkpoint.open_model(d)
    assert isinstance(model, Llama) and same_weights(model, llama)
    ref = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
    for text in ("To be, or not to be", "Whether 'tis nobler"):
        assert tok.encode(text) == ref.encode(text, add_special_tokens=False).ids


class FakeGGUF:
    """Stands in for scratchllm.gguf: records what it was asked to open."""

    def __init__(self, model, tok):
        self.model, self.tok, self.asked = model, tok, []

    def load_model(self, path):
        self.asked.append(("model", path))
        return self.model

    def load_tokenizer(self, path):
        self.asked.append(("tokenizer", path))
        return self.tok


def test_a_gguf_file_goes_to_the_gguf_reader(tmp_path, monkeypatch, gpt, bpe, capsys):
    f = tmp_path / "tiny.gguf"
    f.write_bytes(b"GGUF")
    fake = FakeGGUF(gpt.eval(), bpe)
    monkeypatch.setattr(checkpoint, "_gguf_module", lambda: fake)
    model, tok = checkpoint.open_model(f)
    assert model is gpt and tok is bpe and fake.asked == [("model", f), ("tokenizer", f)]
    fake.asked.clear()
    assert sl.load(f) is gpt and fake.asked == [("model", f)]
    assert sl.checkpoint.load_tokenizer(f) is bpe
    # the commands open it the same way: generate --model FILE
    code = main(["generate", "--model", str(f), "--prompt", "To be", "--max-new-tokens", "3", "--seed", "1"])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("To be")


def test_gguf_errors_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(sl.ScratchError, match="does not exist"):
        checkpoint.open_model(tmp_path / "missing.gguf")
    f = tmp_path / "x.gguf"
    f.write_bytes(b"GGUF")  # the magic, then nothing
    with pytest.raises(sl.ScratchError, match="x.gguf") as e:
        checkpoint.open_model(f)
    assert "\n" not in str(e.value)


def test_not_a_model(tmp_path):
    with pytest.raises(sl.ScratchError, match="does not exist"):
        checkpoint.open_model(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(sl.ScratchError, match="no config.json"):
        checkpoint.open_model(tmp_path / "empty")


def test_model_is_another_spelling_of_ckpt(tmp_path, capsys):
    tok = CharTokenizer().train(TEXT)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=8), seed=0)
    sl.save(model, tmp_path / "ck", tokenizer=tok)
    outs = []
    for option in ("--ckpt", "--model"):
        assert main(["generate", option, str(tmp_path / "ck"), "--prompt", "To", "--max-new-tokens", "12",
                     "--seed", "4"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and len(outs[0]) > len("To")
    for option in ("--ckpt", "--model"):
        assert main(["explain", "gpt", option, str(tmp_path / "ck"), "--text", "To be"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[2] == outs[3]
    for verb in (["generate"], ["explain", "gpt"], ["explain", "transformer"], ["explain", "dropout"], ["explore"],
                 ["export"], ["translate"], ["translate-eval"]):
        with pytest.raises(SystemExit):
            main([*verb, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--ckpt PATH, --model PATH" in text or "--ckpt DIR, --model DIR" in text, verb
        assert "--model is another spelling" in text, verb


def test_export_writes_each_family_in_its_hugging_face_form(tmp_path, bpe, gpt, capsys):
    llama = Llama(LlamaConfig(vocab_size=bpe.vocab_size, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                              tie_word_embeddings=False), seed=5)
    for name, model, model_type in (("gpt", gpt, "gpt2"), ("llama", llama, "llama")):
        sl.save(model, tmp_path / name, tokenizer=bpe)
        out = tmp_path / f"{name}-hf"
        assert main(["export", "--model", str(tmp_path / name), "--hf", str(out)]) == 0
        said = capsys.readouterr().out
        assert said.startswith(f"wrote {out}: {model.title} with {model.n_layer} layers"), said
        assert json.loads((out / "config.json").read_text())["model_type"] == model_type
        back, tok = checkpoint.open_model(out)
        assert type(back) is type(model) and same_weights(back, model)
        assert tok.encode("To be, or not") == bpe.encode("To be, or not")
    sl.save(sl.models.Transformer(sl.models.TransformerConfig(src_vocab_size=9, tgt_vocab_size=9, d_model=8, n_head=2,
                                                              n_encoder_layers=1, n_decoder_layers=1, d_ff=8,
                                                              max_len=8)), tmp_path / "tr")
    assert main(["export", "--model", str(tmp_path / "tr"), "--hf", str(tmp_path / "tr-hf")]) == 2
    err = capsys.readouterr().err
    assert "only a GPT or a Llama can be exported" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "tr-hf").exists()
