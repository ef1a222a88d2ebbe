"""`scratchllm explain transformer`: the translation is greedy decoding's, and the
printed probabilities and cross-attention weights, parsed back, are those of an
ordinary forward pass (the decoder's attention recomputed here from its modules
and the formula softmax(q·kᵀ/√D))."""
import re

import numpy as np
import pytest

import scratchllm as sl
from scramble import scramble  # tests/ is on sys.path
from scratchllm import translation_train as TT
from scratchllm.cli import main
from scratchllm.models import GPT, GPTConfig, Transformer, TransformerConfig
from scratchllm.nn import sinusoidal_encoding
from scratchllm.translate import encode_source, greedy_decode, special_ids

SENTENCE = "Ein Hund rennt über Peters' Wiese."  # "s'" is printed in double quotes
TOKEN = r"(?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")"  # a piece as repr() prints it, in either quotes


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A small Transformer with a joint BPE tokenizer (random weights of a working scale)."""
    src = [SENTENCE, "Eine Katze schläft.", "Ein Mann liest ein Buch."]
    tgt = ["A dog runs across the meadow.", "A cat sleeps.", "A man reads a book."]
    tok = TT.train_tokenizer(src * 5, tgt * 5, 290)
    pad, _, _ = special_ids(tok)
    cfg = TransformerConfig(src_vocab_size=tok.vocab_size, tgt_vocab_size=tok.vocab_size, d_model=16, n_head=2,
                            n_encoder_layers=1, n_decoder_layers=2, d_ff=32, dropout=0.1, max_len=24, pad_id=pad,
                            shared_embeddings=True)
    d = tmp_path_factory.mktemp("transformer") / "ckpt"
    sl.save(scramble(Transformer(cfg, seed=0), seed=3), d, tokenizer=tok)
    return d


def run(capsys, *args, verb=("explain", "transformer")):
    code = main([*verb, *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def section(out, step):
    return out.split(f"Step {step}. ", 1)[1].split("\nStep ", 1)[0].splitlines()


def softmax64(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def printed_output(out):
    """(ids, probabilities) of the output tokens of Step 2."""
    rows = [re.match(rf"\s+\d+\s+{TOKEN}\s+(\d+)\s+(\d\.\d{{6}})$", line) for line in section(out, 2)]
    rows = [m for m in rows if m]
    return [int(m[1]) for m in rows], np.array([float(m[2]) for m in rows])


def printed_weights(out):
    lines = [line for line in section(out, 3)[2:] if line.strip()]
    rows = [re.fullmatch(rf"\s+\d+\s+{TOKEN}((?:\s+\d\.\d{{4}})+)\s+{TOKEN} \(\d+\)", line) for line in lines]
    assert all(rows), [line for line, m in zip(lines, rows) if not m]  # every row parsed
    return np.array([[float(x) for x in m[1].split()] for m in rows])


def by_hand(model, src, tgt_in, layer):
    """Cross-attention weights (H, T, S) of decoder ``layer``, and the output distribution (T, V), in float64."""
    cfg = model.config
    C, H = cfg.d_model, cfg.n_head
    D, T = C // H, len(tgt_in)
    model.eval()
    with sl.no_grad():
        memory, src_mask = model.encode(src[None])
        x = model.tgt_embed(tgt_in[None]) * np.sqrt(C) + sinusoidal_encoding(cfg.max_len, C)[:T]
        tgt_mask = (tgt_in != cfg.pad_id)[None, None, None, :]
        for lay in list(model.decoder.layers)[:layer]:
            x = lay(x, memory, src_mask, tgt_mask)
        lay = model.decoder.layers[layer]
        x = x + lay.self_attn(lay.norm1(x), mask=tgt_mask, causal=True)  # pre-norm, as the fixture's model
        h = lay.norm2(x).data[0].astype(np.float64)
        logits = model(src[None], tgt_in[None]).data[0].astype(np.float64)
    w = lay.multihead_attn.in_proj_weight.data.astype(np.float64)
    b = lay.multihead_attn.in_proj_bias.data.astype(np.float64)
    q = h @ w[:C].T + b[:C]  # (T, C)
    k = memory.data[0].astype(np.float64) @ w[C:2 * C].T + b[C:2 * C]  # (S, C)
    scores = np.stack([q[:, i * D:(i + 1) * D] @ k[:, i * D:(i + 1) * D].T / np.sqrt(D) for i in range(H)])
    return softmax64(scores), softmax64(logits)


def test_translation_probabilities_and_cross_attention(ckpt, capsys):
    model, tok = sl.load(ckpt), sl.checkpoint.load_tokenizer(ckpt)
    _, bos, eos = special_ids(tok)
    code, out, _ = run(capsys, "--ckpt", ckpt, "--text", SENTENCE)
    assert code == 0
    src = np.array(encode_source(tok, SENTENCE))
    pieces = [line for line in section(out, 1) if re.match(rf"\s+\d+\s+{TOKEN}", line)]
    assert [int(line.split()[-1]) for line in pieces] == src.tolist()

    ids, probs = printed_output(out)
    greedy = greedy_decode(model, [src.tolist()], bos, eos)[0]
    assert ids in (greedy, greedy + [eos])  # a row for every token decoded (and <eos> if reached)
    # the translation line is what `scratchllm translate --beam 1` prints
    _, translated, _ = run(capsys, "--ckpt", ckpt, "--text", SENTENCE, "--beam", "1", verb=("translate",))
    assert re.search(r"translation: (.*)", out)[1] == translated.strip()
    tgt_in = np.array([bos] + ids[:-1])
    weights, dist = by_hand(model, src, tgt_in, layer=1)
    assert ids == list(dist.argmax(-1))  # greedy: each token is the most likely one
    np.testing.assert_allclose(probs, dist[np.arange(len(ids)), ids], atol=1.5e-6)

    shown = printed_weights(out)
    assert shown.shape == (len(ids), len(src))
    np.testing.assert_allclose(shown, weights.mean(0), atol=6e-5)  # the average over heads, to 4 decimals
    assert np.all(np.abs(shown.sum(1) - 1) <= len(src) * 5e-5)

    code, out, _ = run(capsys, "--ckpt", ckpt, "--text", SENTENCE, "--layer", 0, "--head", 1)
    assert code == 0 and "decoder layer 0 of 2 (head 1)" in out
    weights0, _ = by_hand(model, src, tgt_in, layer=0)
    np.testing.assert_allclose(printed_weights(out), weights0[1], atol=6e-5)


def test_too_long_sentence_is_cut_with_a_note(ckpt, capsys):
    long = " ".join([SENTENCE] * 6)
    code, out, err = run(capsys, "--ckpt", ckpt, "--text", long)
    assert code == 0 and "note:" in err and "first 24" in err
    assert len([line for line in section(out, 1) if re.match(rf"\s+\d+\s+{TOKEN}", line)]) == 24


@pytest.mark.parametrize("args, message", [
    (["--text", ""], "--text is empty"),
    (["--text", "   "], "--text is empty"),
    (["--text", SENTENCE, "--layer", "2"], "--layer 2 is out of range"),
    (["--text", SENTENCE, "--head", "2"], "--head 2 is out of range"),
    (["--text", SENTENCE, "--head", "x"], "--head must be an integer"),
])
def test_bad_inputs_are_one_line_errors(ckpt, capsys, args, message):
    code, _, err = run(capsys, "--ckpt", ckpt, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_a_gpt_checkpoint_is_a_one_line_error(tmp_path, capsys):
    sl.save(GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=8)), tmp_path / "gpt")
    code, _, err = run(capsys, "--ckpt", tmp_path / "gpt", "--text", SENTENCE)
    assert code == 2 and "not a transformer" in err and "explain gpt" in err and len(err.strip().splitlines()) == 1


def test_position_works_out_one_heads_cross_attention(ckpt, capsys):
    """--position: the query, each source piece's key, q·k, ×1/√D, softmax and the values' sum of one
    head, as explain gpt prints self-attention; parsed back against softmax(q·kᵀ/√D) from the modules."""
    model, tok = sl.load(ckpt), sl.checkpoint.load_tokenizer(ckpt)
    _, bos, _ = special_ids(tok)
    code, out, _ = run(capsys, "--ckpt", ckpt, "--text", SENTENCE, "--layer", 1, "--head", 1, "--position", 2)
    assert code == 0
    src = np.array(encode_source(tok, SENTENCE))
    ids, _ = printed_output(out)
    weights, _ = by_hand(model, src, np.array([bos] + ids[:-1]), layer=1)
    lines = section(out, 4)
    num = r"[+-]?\d+\.\d+"
    rows = [re.search(rf"key\s+(\d+) .*score ({num})\s+e\^\(score−max\) ({num})\s+weight ({num})$", line)
            for line in lines]
    rows = [m for m in rows if m]
    assert [int(m[1]) for m in rows] == list(range(len(src)))  # every source piece
    printed = np.array([float(m[4]) for m in rows])
    np.testing.assert_allclose(printed, weights[1, 2], atol=6e-7)
    assert abs(printed.sum() - 1) <= len(src) * 5e-7  # the printed weights sum to 1 within rounding
    assert float(re.search(rf"the weights sum to ({num})", "\n".join(lines))[1]) == pytest.approx(1, abs=1e-6)
    D = model.config.d_model // model.config.n_head
    products = [re.search(rf"= ({num});  × ({num}) = ({num})\s+model's score ({num})$", line) for line in lines]
    products = [m for m in products if m]
    assert len(products) == len(src) and float(products[0][2]) == pytest.approx(1 / np.sqrt(D), abs=1e-4)
    for m in products:  # q·k × 1/√D is the model's score
        assert float(m[3]) == pytest.approx(float(m[4]), abs=1e-4)
    # the same trace drives explain gpt's self-attention printing: one implementation of the arithmetic
    assert "  softmax: weight = e^(score − max)" in out and "= y of head 1:" in out

    tr = sl.explain.trace(model, (src, np.array([bos] + ids[:-1])))
    np.testing.assert_allclose(printed, tr["dec.1.cross_attn.weights"][0, 1, 2], atol=5e-7)

    # --full: the weighted sum of the printed values is the printed y of the head
    code, out, _ = run(capsys, "--ckpt", ckpt, "--text", SENTENCE, "--layer", 0, "--position", 0, "--full")
    lines = section(out, 4)
    vs = [re.match(rf"\s+({num}) × v\s+\d+ {TOKEN}\s+((?:\s*{num})+)$", line) for line in lines]
    vs = [m for m in vs if m]
    assert len(vs) == len(src)
    total = sum(float(m[1]) * np.array(m[2].split(), dtype=float) for m in vs)
    y = np.array(re.search(r"= y of head 0:\s+(.*)$", out, re.M)[1].split(), dtype=float)
    assert len(y) == D
    np.testing.assert_allclose(total, y, atol=2e-4)

    code, _, err = run(capsys, "--ckpt", ckpt, "--text", SENTENCE, "--position", 999)
    assert code == 2 and "--position 999 is out of range" in err and len(err.strip().splitlines()) == 1
