"""`scratchllm explain gpt`: the printed numbers, parsed back, are the model's —
checked against an ordinary forward and backward pass, a softmax in float64,
generate's own samples, optim.SGD taking the step, and PyTorch."""
import copy
import re

import numpy as np
import pytest

import scratchllm as sl
from scratchllm.cli import main
from scratchllm.models import GPT, GPTConfig
from scratchllm.tokenizers import BPETokenizer, CharTokenizer

TEXT = "To be or not to be, that's the question. "  # "'" is printed in double quotes: "'"
NUM = r"[+-]?\d+\.\d+(?:e[+-]\d+)?"
TOKEN = r"(?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")"  # a token as repr() prints it, in either quotes


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A small char-level GPT that has seen a little of TEXT (trained here, a second)."""
    tok = CharTokenizer().train(TEXT * 4)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16), seed=0)
    opt = sl.optim.AdamW(model.parameters(), lr=1e-2)
    ids = np.array(tok.encode(TEXT * 20))
    rng = np.random.default_rng(0)
    for _ in range(60):
        at = rng.integers(0, len(ids) - 17, 16)
        x, y = np.stack([ids[i:i + 16] for i in at]), np.stack([ids[i + 1:i + 17] for i in at])
        _, loss = model(x, y)
        model.zero_grad()
        loss.backward()
        opt.step()
    d = tmp_path_factory.mktemp("gpt") / "ckpt"
    sl.save(model, d, tokenizer=tok)
    return d


def run(capsys, *args):
    code = main(["explain", "gpt", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def loaded(ckpt):
    model = sl.load(ckpt).eval()
    return model, sl.checkpoint.load_tokenizer(ckpt)


def section(out, step):
    """The lines of "Step N." up to the next step."""
    body = out.split(f"Step {step}. ", 1)[1]
    return body.split("\nStep ", 1)[0].splitlines()


def softmax64(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def attention_by_hand(model, ids, layer, head):
    """Weights of one head from the modules' outputs and the formula softmax(q·kᵀ/√D), masked, in float64."""
    cfg = model.config
    T, H, C = len(ids), cfg.n_head, cfg.n_embd
    D = C // H
    with sl.no_grad():
        h = model.transformer
        x = h.wte(ids[None]) + h.wpe(np.arange(T))
        for block in list(h.h)[:layer]:
            x = block(x)
        qkv = h.h[layer].attn.c_attn(h.h[layer].ln_1(x)).data[0].astype(np.float64)  # (T, 3C)
    q, k = qkv[:, head * D:(head + 1) * D], qkv[:, C + head * D:C + (head + 1) * D]
    scores = q @ k.T / np.sqrt(D)
    scores[np.triu(np.ones((T, T), bool), 1)] = -np.inf
    return scores, softmax64(scores)


def test_attention_numbers_are_the_models(ckpt, capsys):
    model, tok = loaded(ckpt)
    text = "To be or not"
    ids = np.array(tok.encode(text))
    code, out, _ = run(capsys, "--ckpt", ckpt, "--text", text, "--layer", 1, "--head", 1, "--position", 7)
    assert code == 0
    scores, weights = attention_by_hand(model, ids, layer=1, head=1)
    lines = section(out, 4)
    rows = [re.search(rf"key\s+(\d+) .*score ({NUM})\s+e\^\(score−max\) ({NUM})\s+weight ({NUM})$", line)
            for line in lines]
    rows = [(int(m[1]), float(m[2]), float(m[3]), float(m[4])) for m in rows if m]
    assert [r[0] for r in rows] == list(range(8))  # position 7 sees keys 0 … 7
    for j, score, e, w in rows:
        assert score == pytest.approx(scores[7, j], abs=2e-6)
        assert w == pytest.approx(weights[7, j], abs=2e-6)
        assert e == pytest.approx(np.exp(scores[7, j] - scores[7, :8].max()), abs=2e-6)
    assert abs(sum(r[3] for r in rows) - 1) <= 8 * 5e-7  # printed weights sum to 1 within rounding
    # the products written out: q·k summed, then scaled, next to the model's score
    products = [re.search(rf"= ({NUM});  × ({NUM}) = ({NUM})\s+model's score ({NUM})$", line) for line in lines]
    products = [m for m in products if m]
    assert len(products) == 8
    for j, m in enumerate(products):
        assert float(m[1]) * float(m[2]) == pytest.approx(float(m[3]), abs=1e-3)
        assert float(m[4]) == pytest.approx(scores[7, j], abs=2e-6)


def test_embedding_rows_are_the_tables_rows(ckpt, capsys):
    model, tok = loaded(ckpt)
    ids = tok.encode("To be")
    code, out, _ = run(capsys, "--ckpt", ckpt, "--text", "To be", "--full")
    assert code == 0
    lines = section(out, 2)
    table = {"token": model.transformer.wte.weight.data[ids], "position": model.transformer.wpe.weight.data[:5]}
    table["= x"] = table["token"] + table["position"]
    for kind, rows in table.items():
        printed = [np.array(re.findall(NUM, line.split(kind, 1)[1]), dtype=float)
                   for line in lines if re.search(rf"\s{re.escape(kind)}\s", line)]
        assert len(printed) == 5 and all(len(p) == 16 for p in printed)  # --full: all C numbers
        np.testing.assert_allclose(np.array(printed), rows, atol=5e-5 + 1e-6)


def next_token_rows(out, step):
    rows = []
    for line in section(out, step):
        m = re.match(rf"\s+\d+\s+{TOKEN}\s+(\d+)((?:\s+{NUM})+)$", line)
        if m:
            rows.append((int(m[1]), [float(x) for x in m[2].split()]))
    return rows


def test_next_token_distribution_and_sampling(ckpt, capsys):
    model, tok = loaded(ckpt)
    text = "To be or no"
    ids = np.array(tok.encode(text))
    T_, K, P = 1.7, 6, 0.8
    code, out, _ = run(capsys, "--ckpt", ckpt, "--text", text, "--temperature", T_, "--top-k", K, "--top-p", P)
    assert code == 0
    logits = model(ids[None]).data[0, -1]
    probs = softmax64(logits)
    rows = next_token_rows(out, 8)
    assert len(rows) == 10
    assert [i for i, _ in rows] == list(np.argsort(-probs, kind="stable")[:10])
    for i, (logit, p) in rows:
        assert logit == pytest.approx(logits[i], abs=5e-5) and p == pytest.approx(probs[i], abs=1e-6)

    sampled = {i: vals[-1] for i, vals in next_token_rows(out, 9)}
    assert list(sampled) == [i for i, _ in rows]  # the same 10 tokens, each row parsed
    # generate's own draws: 4000 rows at once, one new token each
    draws = model.generate(np.tile(ids, (4000, 1)), 1, temperature=T_, top_k=K, top_p=P, seed=0)[:, -1]
    counts = np.bincount(draws, minlength=model.config.vocab_size) / len(draws)
    for i, p in sampled.items():
        assert abs(counts[i] - p) <= 5 * np.sqrt(max(p * (1 - p), 1e-6) / len(draws)) + 1e-6, (i, counts[i], p)
        if p == 0:
            assert counts[i] == 0
    kept = int(re.search(r"generate keeps (\d+) of", out)[1])
    assert kept == len(np.unique(draws)) or kept > len(np.unique(draws))  # rare tokens may go undrawn

    # and Hugging Face's warpers, applied in generate's order, give the same distribution
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    z = torch.tensor(logits[None].astype(np.float64))
    for warper in (TemperatureLogitsWarper(T_), TopKLogitsWarper(K), TopPLogitsWarper(P)):
        z = warper(None, z)
    hf = torch.softmax(z, -1)[0].numpy()
    for i, p in sampled.items():
        assert p == pytest.approx(hf[i], abs=1e-6)


def test_target_adds_the_backward_pass_and_a_real_sgd_step(ckpt, capsys):
    model, tok = loaded(ckpt)
    text, lr = "To be or not to", 0.05
    ids = np.array(tok.encode(text))
    target = tok.encode(" ")[0]
    code, out, _ = run(capsys, "--ckpt", ckpt, "--text", text, "--target", " ", "--lr", lr)
    assert code == 0
    targets = np.full(len(ids), -100)
    targets[-1] = target
    logits, loss = model(ids[None], targets[None])
    probs = softmax64(logits.data[0, -1])
    assert float(re.search(rf"loss = −log p = ({NUM})", out)[1]) == pytest.approx(loss.item(), abs=1e-6)

    # d loss / d logits, printed for the largest entries
    grads = {}
    for line in section(out, 11):
        m = re.match(rf"\s+{TOKEN}\s+(\d+)\s+({NUM})\s+([01])\s+({NUM})$", line)
        if m:
            grads[int(m[1])] = float(m[4])
    assert len(grads) == 10 and target in grads
    for i, g in grads.items():
        assert g == pytest.approx(probs[i] - (i == target), rel=1e-5, abs=1e-9)

    # the largest weight gradients are those of an ordinary backward
    loss.backward()
    params = dict(model.named_parameters())
    table = [re.match(rf"\s+(\S+)\[([\d,]+)\]\s+({NUM})\s+({NUM})\s+({NUM})$", line) for line in section(out, 13)]
    table = [m for m in table if m]
    assert len(table) == 10
    biggest = max(float(np.abs(p.grad).max()) for p in params.values())
    assert abs(float(table[0][4])) == pytest.approx(biggest, rel=1e-5)
    stepped = copy.deepcopy(model)
    sl.optim.SGD(stepped.parameters(), lr=lr).step()
    new_params = dict(stepped.named_parameters())
    for m in table:
        index = tuple(int(i) for i in m[2].split(","))
        assert float(m[3]) == pytest.approx(params[m[1]].data[index], abs=1e-6)
        assert float(m[4]) == pytest.approx(params[m[1]].grad[index], rel=1e-5)
        assert float(m[5]) == pytest.approx(new_params[m[1]].data[index], abs=1e-6)

    # the step: optim.SGD on a fresh copy, then the target's probability again
    fresh, _ = loaded(ckpt)
    _, l0 = fresh(ids[None], targets[None])
    l0.backward()
    sl.optim.SGD(fresh.parameters(), lr=lr).step()
    new_logits, new_loss = fresh(ids[None], targets[None])
    m = re.search(rf"p\(' '\) ({NUM}) → ({NUM}), loss ({NUM}) → ({NUM})", out)
    assert float(m[1]) == pytest.approx(probs[target], abs=1e-6)
    assert float(m[2]) == pytest.approx(softmax64(new_logits.data[0, -1])[target], abs=1e-6)
    assert float(m[4]) == pytest.approx(new_loss.item(), abs=1e-6)


def test_gradient_reaching_the_residual_stream_matches_torch(ckpt, capsys):
    torch = pytest.importorskip("torch")
    from torch_gpt import TorchGPT

    model, tok = loaded(ckpt)
    text = "To be, that's"  # a row for "'", printed in double quotes
    ids = np.array(tok.encode(text))
    code, out, _ = run(capsys, "--ckpt", ckpt, "--text", text, "--target", " ")
    assert code == 0
    ref = TorchGPT.from_scratch(model).eval()
    kept = []
    ref.transformer.drop.register_forward_hook(lambda m, a, o: (o.retain_grad(), kept.append(o)) and None)
    for block in ref.transformer.h:
        block.register_forward_hook(lambda m, a, o: (o.retain_grad(), kept.append(o)) and None)
    targets = np.full(len(ids), -100)
    targets[-1] = tok.encode(" ")[0]
    _, loss = ref(torch.from_numpy(ids[None]), torch.from_numpy(targets[None]))
    loss.backward()
    expect = np.stack([t.grad[0].norm(dim=-1).numpy() for t in kept], axis=1)  # (T, 1 + layers)
    rows = [re.match(rf"\s+(\d+) {TOKEN}(.*)$", line) for line in section(out, 12)]
    rows = [m for m in rows if m]
    assert [int(m[1]) for m in rows] == list(range(len(ids)))  # a row for every position, all parsed
    printed = [re.findall(NUM, m[2]) for m in rows]
    np.testing.assert_allclose(np.array(printed, dtype=float), expect, rtol=2e-3, atol=1e-8)
    assert np.all(expect[:-1, -1] == 0)  # past the last block the loss reaches only its own position


def test_a_hugging_face_gpt2_directory(tmp_path, capsys):
    tok = BPETokenizer().train(TEXT * 10, vocab_size=270)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16), seed=1)
    sl.hf.save_hf_gpt2(model, tmp_path / "hf", tokenizer=tok)
    code, out, err = run(capsys, "--ckpt", tmp_path / "hf", "--text", "to be or not", "--target", " to")
    assert code == 0, err
    ids = np.array(tok.encode("to be or not"))
    probs = softmax64(model(ids[None]).data[0, -1])
    rows = next_token_rows(out, 8)
    assert [i for i, _ in rows] == list(np.argsort(-probs, kind="stable")[:10])
    for i, (logit, p) in rows:
        assert p == pytest.approx(probs[i], abs=1e-6)


def test_too_long_text_is_cut_with_a_note(ckpt, capsys):
    _, tok = loaded(ckpt)
    text = "To be or not to be, that's it"  # 29 characters, block 16; "'" in double quotes
    code, out, err = run(capsys, "--ckpt", ckpt, "--text", text)
    assert code == 0 and "note:" in err and "last 16" in err
    shown = [line for line in section(out, 1) if re.match(rf"\s+\d+\s+{TOKEN}", line)]
    assert len(shown) == 16 and shown[-1].split()[0] == "15"


@pytest.mark.parametrize("args, message", [
    (["--text", ""], "--text is empty"),
    (["--text", "To be Z"], "--text has characters"),
    (["--text", "To be", "--layer", "2"], "--layer 2 is out of range"),
    (["--text", "To be", "--head", "5"], "--head 5 is out of range"),
    (["--text", "To be", "--position", "5"], "--position 5 is out of range"),
    (["--text", "To be", "--position", "-1"], "--position must be at least 0"),
    (["--text", "To be", "--target", "Z"], "--target has characters"),
    (["--text", "To be", "--top-p", "1.5"], "--top-p must be in"),
    (["--text", "To be", "--lr", "0"], "--lr must be above 0"),
])
def test_bad_inputs_are_one_line_errors(ckpt, capsys, args, message):
    code, out, err = run(capsys, "--ckpt", ckpt, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_other_checkpoints_are_one_line_errors(tmp_path, capsys):
    from scratchllm.models import Transformer, TransformerConfig

    sl.save(Transformer(TransformerConfig(src_vocab_size=5, tgt_vocab_size=5, d_model=8, n_head=2,
                                          n_encoder_layers=1, n_decoder_layers=1, d_ff=8)), tmp_path / "tr")
    code, _, err = run(capsys, "--ckpt", tmp_path / "tr", "--text", "Hallo")
    assert code == 2 and "not a gpt" in err and "explain transformer" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "--ckpt", tmp_path / "missing", "--text", "Hallo")
    assert code == 2 and "does not exist" in err
