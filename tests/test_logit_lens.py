"""The logit lens against transformers' hidden states: each one through the final
norm and the unembedding; its last row is the model's own prediction."""
import numpy as np
import pytest

import scratchllm as sl
from scratchllm.explain.lens import explain_lens, first_top_layer, lens_figure, logit_lens
from scratchllm.models import GPT, GPTConfig, Transformer, TransformerConfig
from scramble import scramble  # tests/ is on sys.path


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def small_gpt(seed=0):
    return scramble(GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=3, n_head=2, n_embd=16)), seed)


def test_gpt2_lens_matches_transformers_hidden_states(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = small_gpt()
    sl.hf.save_hf_gpt2(model, tmp_path / "gpt2")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2").eval()
    ids = np.random.default_rng(1).integers(0, 50, size=(2, 12))
    with torch.no_grad():
        out = hf(torch.from_numpy(ids), output_hidden_states=True)
        hs = out.hidden_states  # embeddings, then after each block; the last already through ln_f
        assert len(hs) == model.n_layer + 1
        ref = [hf.lm_head(hf.transformer.ln_f(h)) for h in hs[:-1]] + [hf.lm_head(hs[-1])]
    ref = softmax(np.stack([r.double().numpy() for r in ref]))  # (L + 1, B, T, V)
    probs = logit_lens(model, ids)
    assert probs.shape == (model.n_layer + 1, 2, 12, 50)
    np.testing.assert_allclose(probs, ref, rtol=0, atol=2e-6)
    np.testing.assert_allclose(probs[-1], softmax(out.logits.double().numpy()), rtol=0, atol=2e-6)


@pytest.mark.parametrize("tied", [True, False])
def test_llama_lens_matches_transformers_hidden_states(tmp_path, tied):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=60, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                   tie_word_embeddings=tied)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # weights of a working scale: HF's init leaves every prediction near uniform
        for name, p in hf.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5 if p.ndim == 2
                    else 1 + 0.2 * torch.randn(p.shape, generator=g))
    hf.save_pretrained(tmp_path / "llama")
    model = sl.load(tmp_path / "llama")
    assert model.kind == "llama" and model.n_layer == 3
    ids = np.random.default_rng(2).integers(0, 60, size=(2, 10))
    with torch.no_grad():
        out = hf(torch.from_numpy(ids), output_hidden_states=True)
        hs = out.hidden_states  # embeddings, then after each block; the last already through the final norm
        assert len(hs) == model.n_layer + 1
        ref = [hf.lm_head(hf.model.norm(h)) for h in hs[:-1]] + [hf.lm_head(hs[-1])]
    ref = softmax(np.stack([r.double().numpy() for r in ref]))
    probs = logit_lens(model, ids)
    assert probs.shape == (4, 2, 10, 60)
    assert ref[:, 0, 3].max(-1).min() > 3 / 60  # well above uniform (1/60): a wrong row would show
    np.testing.assert_allclose(probs, ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(probs[-1], softmax(out.logits.double().numpy()), rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_last_row_is_the_models_own_prediction(dtype):
    model = small_gpt(seed=3)
    if dtype == "float64":
        for p in model.parameters():
            p.data = p.data.astype(np.float64)
    ids = np.random.default_rng(0).integers(0, 50, size=(3, 9))
    probs = logit_lens(model, ids)
    assert probs.dtype == np.dtype(dtype)
    own = softmax(model(ids).data.astype(np.float64))
    np.testing.assert_allclose(probs[-1], own, rtol=0, atol=1e-6 if dtype == "float32" else 1e-13)
    np.testing.assert_allclose(probs.sum(-1), 1, atol=1e-5)


@pytest.mark.parametrize("norm_first", [True, False])
def test_the_transformer_decoder_has_a_lens(norm_first):
    cfg = TransformerConfig(src_vocab_size=30, tgt_vocab_size=30, d_model=16, n_head=2, n_encoder_layers=1,
                            n_decoder_layers=2, d_ff=32, max_len=16, norm_first=norm_first, dropout=0.0)
    model = scramble(Transformer(cfg), seed=1)
    rng = np.random.default_rng(2)
    src, tgt = rng.integers(3, 30, size=(2, 7)), rng.integers(3, 30, size=(2, 5))
    probs = logit_lens(model, (src, tgt))
    assert probs.shape == (3, 2, 5, 30)
    np.testing.assert_allclose(probs[-1], softmax(model(src, tgt).data.astype(np.float64)), rtol=0, atol=1e-6)


def test_first_top_layer_by_hand():
    # one sequence, two positions, three rows (embeddings, block 0, block 1), vocabulary 3
    probs = np.array([[[.6, .3, .1], [.1, .2, .7]],
                      [[.2, .7, .1], [.5, .3, .2]],
                      [[.1, .8, .1], [.6, .2, .2]]])[:, None]  # (3, 1, 2, 3)
    assert first_top_layer(probs).tolist() == [[1, 1]]
    probs[0, 0, 1] = [.9, .05, .05]
    assert first_top_layer(probs).tolist() == [[1, 0]]


class Chars:
    def decode(self, ids):
        return "".join(chr(97 + i % 26) for i in ids)


def test_explain_lens_prints_every_layer_and_where_the_answer_comes_out_on_top():
    model = small_gpt(seed=5)
    ids = np.array([1, 2, 3, 4])
    text = explain_lens(model, Chars(), ids, top=2)
    probs = logit_lens(model, ids)
    first = first_top_layer(probs)[0]
    blocks = [line for line in text.splitlines() if line.strip().startswith(("embeddings", "after block"))]
    assert len(blocks) == 4 * (model.n_layer + 1)
    for t in range(4):
        answer = Chars().decode([int(probs[-1, 0, t].argmax())])
        where = "the embeddings" if first[t] == 0 else f"block {first[t] - 1}"
        assert f"the final answer {answer!r} is first on top after {where}" in text
        top = int(probs[2, 0, t].argmax())  # after block 1, the best first
        assert f"{Chars().decode([top])!r} {probs[2, 0, t, top]:.3f}" in blocks[4 * t + 2]


def test_lens_figure_is_a_layer_by_position_heatmap():
    pytest.importorskip("plotly")
    model = small_gpt()
    probs = logit_lens(model, np.arange(6))
    fig = lens_figure(probs, labels=lambda i: Chars().decode([i]))
    (heat,) = fig.data
    assert heat.type == "heatmap"
    np.testing.assert_allclose(np.asarray(heat.z), probs[:, 0].max(-1))
    assert heat.text[1][2] == Chars().decode([int(probs[1, 0, 2].argmax())])


def test_explain_gpt_lens_on_the_command_line(tmp_path, capsys):
    from scratchllm import checkpoint
    from scratchllm.cli import main
    from scratchllm.tokenizers import CharTokenizer

    tok = CharTokenizer.from_text("abcdefgh ")
    model = scramble(GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16)), 4)
    checkpoint.save(model, tmp_path / "ckpt", tokenizer=tok)
    assert main(["explain", "gpt", "--ckpt", str(tmp_path / "ckpt"), "--text", "abc", "--lens"]) == 0
    out = capsys.readouterr().out
    ids = np.array(tok.encode("abc"))
    assert out.strip() == explain_lens(model, tok, ids).strip()
    assert out.count("is first on top after") == 3 and out.count("after block 1 ") == 3
    assert main(["explain", "gpt", "--ckpt", str(tmp_path / "ckpt"), "--text", "abc", "--lens",
                 "--position", "1"]) == 0
    assert capsys.readouterr().out.count("is first on top after") == 1


def test_explain_gpt_lens_reads_a_llama_run(tmp_path, capsys):
    from scratchllm import train as T
    from scratchllm.cli import main

    (tmp_path / "corpus.txt").write_text("the cat sat on the mat. " * 40)
    T.train(T.TrainConfig(data=str(tmp_path / "corpus.txt"), out=str(tmp_path / "run"), arch="llama", n_layer=2,
                          n_head=2, n_embd=16, block_size=8, batch_size=4, max_iters=3, eval_iters=1,
                          progress=False, sample_tokens=0, snapshots=0), echo=lambda *a: None)
    assert main(["explain", "gpt", "--ckpt", str(tmp_path / "run"), "--text", "the cat", "--lens"]) == 0
    out = capsys.readouterr().out
    model = sl.load(tmp_path / "run")
    assert model.kind == "llama"
    assert out.count("is first on top after") == 7 and out.count("after block 1 ") == 7
