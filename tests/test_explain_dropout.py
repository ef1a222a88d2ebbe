"""Dropout seen at work: ``trace(..., train=True)`` records each Dropout's input,
the mask it drew and its output as the model's own modules compute them — the
same numbers as an ordinary training-mode forward drawing from a generator with
the same seed, bit for bit — without touching the model; `scratchllm explain
dropout` prints them, and its numbers parse back to those of that forward."""
import re

import numpy as np
import pytest

import scratchllm as sl
from scramble import scramble  # tests/ is on sys.path
from scratchllm import functional as F
from scratchllm.cli import main
from scratchllm.explain import trace
from scratchllm.models import GPT, GPTConfig, Transformer, TransformerConfig
from scratchllm.nn import Dropout, dropout_generator
from scratchllm.tokenizers import CharTokenizer

TINY = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)
NUM = r"[+-]?\d+\.\d+"


def gpt(seed=0, **kw):
    return scramble(GPT(GPTConfig(**{**TINY, **kw}), seed=seed), seed=seed)


def batch(cfg, B=2, seed=1):
    rng = np.random.default_rng(seed)
    return rng.integers(0, cfg.vocab_size, (B, cfg.block_size)), rng.integers(0, cfg.vocab_size, (B, cfg.block_size))


def gpt_sites(n_layer):
    return ["drop"] + [f"h.{i}.{w}.drop" for i in range(n_layer) for w in ("attn", "mlp")]


def training_forward(model, ids, targets, seed):
    """An ordinary training-mode forward, module by module, its Dropouts drawing from default_rng(seed):
    each dropout's (input, output), the logits and the loss."""
    model.train()
    sites = {}
    with dropout_generator(np.random.default_rng(seed)):
        h = model.transformer
        x_in = h.wte(ids) + h.wpe(np.arange(ids.shape[1]))
        x = h.drop(x_in)
        sites["drop"] = (x_in, x)
        for i, block in enumerate(h.h):
            y = block.attn.c_proj(F.self_attention(block.attn.c_attn(block.ln_1(x)), model.config.n_head))
            a = block.attn.resid_dropout(y)
            sites[f"h.{i}.attn.drop"] = (y, a)
            x = x + a
            m = block.mlp.c_proj(F.gelu(block.mlp.c_fc(block.ln_2(x))))
            d = block.mlp.dropout(m)
            sites[f"h.{i}.mlp.drop"] = (m, d)
            x = x + d
        logits = F.linear(h.ln_f(x), model.lm_head.weight)
        loss = F.cross_entropy(logits, targets)
    return sites, logits, loss


# ---- the trace of a training pass ------------------------------------------------------
def test_training_trace_is_a_training_forward_bit_for_bit():
    model = gpt(dropout=0.3)
    ids, targets = batch(model.config)
    tr = trace(model, ids, targets, train=True, seed=5)
    assert tr.train and tr.seed == 5
    sites, logits, loss = training_forward(model, ids, targets, seed=5)
    np.testing.assert_array_equal(tr["logits"], logits.data)
    assert tr.loss == loss.item()
    # and the model's own forward, in training mode under the same generator
    with dropout_generator(np.random.default_rng(5)):
        _, loss2 = model.train()(ids, targets)
    assert tr.loss == loss2.item()

    draws = np.random.default_rng(5)  # the masks: uniform draws u, kept where u ≥ p, in the order of the pass
    names = gpt_sites(model.config.n_layer)
    assert [n[:-5] for n in tr.names() if n.endswith(".mask")] == names
    for name in names:
        before, after = sites[name]
        np.testing.assert_array_equal(tr[f"{name}.in"], before.data, err_msg=name)
        np.testing.assert_array_equal(tr[f"{name}.out"], after.data, err_msg=name)
        keep = draws.random(before.shape, dtype=np.float32) >= 0.3
        np.testing.assert_array_equal(tr[f"{name}.mask"], keep.astype(np.float32), err_msg=name)
        out, x = tr[f"{name}.out"].astype(np.float64), tr[f"{name}.in"].astype(np.float64)
        assert np.all(out[~keep] == 0)
        np.testing.assert_allclose(out[keep] * (1 - 0.3), x[keep], rtol=1e-6, atol=1e-7)  # kept × (1 − p) = in
    np.testing.assert_array_equal(tr["emb"], tr["drop.out"])
    np.testing.assert_array_equal(tr["h.1.attn.out"], tr["h.1.attn.drop.out"])


def test_training_trace_gradients_are_backwards():
    model = gpt(dropout=0.2)
    ids, targets = batch(model.config)
    tr = trace(model, ids, targets, train=True, seed=3)
    model.zero_grad()
    with dropout_generator(np.random.default_rng(3)):
        _, loss = model.train()(ids, targets)
    loss.backward()
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(tr.grad(name), p.grad, err_msg=name)
    mask = tr["h.0.mlp.drop.mask"]
    # d loss / d input = d loss / d output × mask / (1 − p): zero where dropped
    assert np.all(tr.grad("h.0.mlp.drop.in")[mask == 0] == 0)
    np.testing.assert_allclose(tr.grad("h.0.mlp.drop.in")[mask == 1] * 0.8, tr.grad("h.0.mlp.drop.out")[mask == 1],
                               rtol=1e-5, atol=1e-9)
    assert not tr.grad("h.0.mlp.drop.mask").any()  # drawn, not computed


def test_same_seed_same_masks_and_the_model_is_left_alone():
    model = gpt(dropout=0.25)
    ids, targets = batch(model.config)
    gen = model.transformer.drop.rng
    gen_state, default_state = gen.bit_generator.state, sl.nn.default_rng().bit_generator.state
    model.eval()
    a = trace(model, ids, targets, train=True, seed=7)
    b = trace(model, ids, targets, train=True, seed=7)
    c = trace(model, ids, targets, train=True, seed=8)
    assert not model.training and not any(m.training for _, m in model.named_modules())
    assert gen.bit_generator.state == gen_state and sl.nn.default_rng().bit_generator.state == default_state
    assert all(p.grad is None for p in model.parameters())
    for name in a.names():
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert not np.array_equal(a["h.0.attn.drop.mask"], c["h.0.attn.drop.mask"])
    model.train()
    trace(model, ids, train=True)
    assert model.training and all(m.training for _, m in model.named_modules())


def test_evaluation_mode_is_the_identity():
    model = gpt(dropout=0.5)
    ids, targets = batch(model.config)
    plain = trace(model, ids, targets)
    tr = trace(model, ids, targets, dropout_sites=True)
    assert not [n for n in plain.names() if ".drop" in n or n.startswith("drop")]  # eval traces keep their names
    assert not [n for n in tr.names() if n.endswith(".mask")]  # nothing drawn
    for name in gpt_sites(model.config.n_layer):
        np.testing.assert_array_equal(tr[f"{name}.out"], tr[f"{name}.in"], err_msg=name)
    logits, loss = model.eval()(ids, targets)
    np.testing.assert_array_equal(tr["logits"], logits.data)
    assert tr.loss == plain.loss == loss.item()


def test_p_overrides_a_model_without_dropout():
    model = gpt(dropout=0.0)
    ids, _ = batch(model.config, B=8)
    assert not [n for n in trace(model, ids, train=True).names() if ".mask" in n]  # p = 0: nothing drawn
    tr = trace(model, ids, train=True, seed=2, p=0.4)
    assert all(m.p == 0 for _, m in model.named_modules() if isinstance(m, Dropout))
    masks = np.concatenate([tr[f"{s}.mask"].reshape(-1) for s in gpt_sites(model.config.n_layer)])
    N = masks.size
    assert abs((1 - masks.mean()) - 0.4) <= 4 * np.sqrt(0.4 * 0.6 / N)
    with pytest.raises(sl.ScratchError, match=r"\[0, 1\)"):
        trace(model, ids, train=True, p=1.0)


def test_transformer_training_trace():
    cfg = TransformerConfig(src_vocab_size=13, tgt_vocab_size=11, d_model=8, n_head=2, n_encoder_layers=1,
                            n_decoder_layers=2, d_ff=12, dropout=0.2, max_len=10)
    model = scramble(Transformer(cfg, seed=1), seed=1)
    rng = np.random.default_rng(2)
    src, tgt = rng.integers(3, 13, (2, 6)), rng.integers(3, 11, (2, 5))
    tr = trace(model, (src, tgt[:, :-1]), targets=tgt[:, 1:], train=True, seed=9)
    model.train()
    with dropout_generator(np.random.default_rng(9)):
        loss = model.loss(src, tgt[:, :-1], tgt[:, 1:])
    assert tr.loss == loss.item()
    masks = [n[:-5] for n in tr.names() if n.endswith(".mask")]
    assert masks == ["enc.drop", "enc.0.drop_1", "enc.0.drop_2", "dec.drop",
                     *[f"dec.{i}.drop_{k}" for i in range(2) for k in (1, 2, 3)]]
    np.testing.assert_array_equal(tr["enc.in"], tr["enc.drop.out"])
    np.testing.assert_array_equal(tr["dec.in"], tr["dec.drop.out"])
    assert tr["dec.drop.in"].shape == (2, 4, 8) and tr["enc.drop.in"].shape == (2, 6, 8)


# ---- scratchllm explain dropout --------------------------------------------------------
TEXT = "To be or not to be"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A char-level GPT trained without dropout (p = 0), with weights of a working scale."""
    tok = CharTokenizer().train(TEXT + ", that is the question.")
    model = gpt(seed=2, vocab_size=tok.vocab_size, block_size=24, n_embd=16, dropout=0.0)
    d = tmp_path_factory.mktemp("dropout") / "ckpt"
    sl.save(model, d, tokenizer=tok)
    return d


def run(capsys, *args):
    code = main(["explain", "dropout", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def section(out, step):
    return out.split(f"Step {step}. ", 1)[1].split("\nStep ", 1)[0].splitlines()


def with_p(model, p):
    """The same weights with every Dropout at probability p (a reference for --p)."""
    for _, m in model.named_modules():
        if isinstance(m, Dropout):
            m.p = p
    return model


def softmax64(z):
    e = np.exp(np.asarray(z, np.float64) - np.max(z))
    return e / e.sum()


def test_printed_mask_and_values_are_a_training_forwards(ckpt, capsys):
    tok = sl.checkpoint.load_tokenizer(ckpt)
    ids = np.array(tok.encode(TEXT))[None]
    code, out, _ = run(capsys, "--ckpt", ckpt, "--text", TEXT, "--p", 0.3, "--seed", 4, "--site", "h.1.mlp.drop",
                       "--position", 5, "--full")
    assert code == 0 and "p = 0.3" in out
    assert all(m.p == 0 for _, m in sl.load(ckpt).named_modules() if isinstance(m, Dropout))  # checkpoint as it was
    ref = with_p(sl.load(ckpt), 0.3)
    sites, logits, _ = training_forward(ref, ids, np.zeros_like(ids), seed=4)
    before, after = (t.data[0, 5].astype(np.float64) for t in sites["h.1.mlp.drop"])

    rows = [re.match(rf"\s+(\d+)\s+({NUM})\s+([01])\s+({NUM})\s+(dropped|= before × ({NUM}))$", line)
            for line in section(out, 2)]
    rows = [m for m in rows if m]
    assert [int(m[1]) for m in rows] == list(range(16))  # --full: every number
    printed = np.array([[float(m[2]), float(m[3]), float(m[4])] for m in rows])
    np.testing.assert_allclose(printed[:, 0], before, atol=5.1e-7)
    np.testing.assert_allclose(printed[:, 2], after, atol=5.1e-7)
    mask = printed[:, 1] == 1
    np.testing.assert_array_equal(mask, after != 0)
    assert all(float(m[6]) == pytest.approx(1 / 0.7, abs=1e-6) for m in rows if m[6])
    np.testing.assert_allclose(printed[mask, 2] * 0.7, printed[mask, 0], atol=2e-6)  # kept × (1 − p) = before
    zeroed = re.search(r"zeroed here: (\d+) of 16 numbers(?:, at ([\d, ]+))?", out)
    assert int(zeroed[1]) == (~mask).sum()
    assert [int(x) for x in (zeroed[2] or "").replace(",", " ").split()] == list(np.flatnonzero(~mask))

    # Step 1 and 3: the counts dropped, against independent draws of the same generator, in the pass's order
    draws = np.random.default_rng(4)
    dropped = {}
    for name in gpt_sites(2):
        dropped[name] = int((draws.random(sites[name][0].shape, dtype=np.float32) < 0.3).sum())
    rows = [line for line in section(out, 1)[2:] if line.strip()]
    assert [line.split()[0] for line in rows] == gpt_sites(2)  # a row for every site, all parsed
    for line in rows:
        name, n, k, frac = line.split()[:4]
        assert int(k) == dropped[name] and int(n) == ids.size * 16 and float(frac) == pytest.approx(int(k) / int(n),
                                                                                                    abs=5e-5)
    whole = re.search(r"the whole pass\s+(\d+)\s+(\d+)\s+(\d\.\d+)", out)
    assert int(whole[1]) == sum(dropped.values()) and int(whole[2]) == 5 * ids.size * 16

    # Step 5: the training column is that forward's softmax, the evaluation column an eval forward's
    probs_train = softmax64(logits.data[0, -1])
    probs_eval = softmax64(ref.eval()(ids).data[0, -1])
    rows = [line for line in section(out, 5)[2:] if line.strip()]
    # the 5 most likely tokens in evaluation, each parsed
    assert [int(line.rsplit(None, 3)[1]) for line in rows] == list(np.argsort(-probs_eval, kind="stable")[:5])
    for line in rows:
        i, e, t = line.rsplit(None, 3)[1:]
        assert float(e) == pytest.approx(probs_eval[int(i)], abs=1e-6)
        assert float(t) == pytest.approx(probs_train[int(i)], abs=1e-6)


def test_evaluation_mode_leaves_the_values_untouched(ckpt, capsys):
    tok = sl.checkpoint.load_tokenizer(ckpt)
    ids = np.array(tok.encode(TEXT))[None]
    code, out, _ = run(capsys, "--ckpt", ckpt, "--text", TEXT, "--site", "h.0.attn.drop", "--full")
    assert code == 0 and "shown with p = 0.1" in out  # a model without dropout: the default p, the model untouched
    lines = section(out, 4)
    before = np.array(re.findall(NUM, next(line for line in lines if line.lstrip().startswith("before"))), float)
    after = np.array(re.findall(NUM, next(line for line in lines if line.lstrip().startswith("after "))), float)
    assert len(before) == len(after) == 16  # --full: all of n_embd
    model = sl.load(ckpt).eval()
    with sl.no_grad():  # the attention's output entering the dropout, in an ordinary evaluation forward
        h = model.transformer
        block = h.h[0]
        x = h.drop(h.wte(ids) + h.wpe(np.arange(ids.shape[1])))
        y = block.attn.c_proj(F.self_attention(block.attn.c_attn(block.ln_1(x)), model.config.n_head))
    np.testing.assert_allclose(before, y.data[0, -1], atol=5.1e-5)
    np.testing.assert_array_equal(after, before)
    assert "after = before in 16 of 16 numbers; zeroed: 0" in out


def test_a_transformers_masks(capsys, tmp_path):
    from scratchllm import translation_train as TT
    from scratchllm.translate import encode_source, special_ids

    tok = TT.train_tokenizer(["Ein Hund rennt."] * 5, ["A dog runs."] * 5, 270)
    pad, _, _ = special_ids(tok)
    cfg = TransformerConfig(src_vocab_size=tok.vocab_size, tgt_vocab_size=tok.vocab_size, d_model=8, n_head=2,
                            n_encoder_layers=1, n_decoder_layers=1, d_ff=16, dropout=0.25, max_len=12, pad_id=pad,
                            shared_embeddings=True)
    sl.save(scramble(Transformer(cfg, seed=0), seed=1), tmp_path / "t", tokenizer=tok)
    code, out, _ = run(capsys, "--ckpt", tmp_path / "t", "--text", "Ein Hund rennt.", "--site", "enc.0.drop_2",
                       "--seed", 6, "--full")
    assert code == 0 and "p = 0.25 (the model's own)" in out
    S = len(encode_source(tok, "Ein Hund rennt."))
    draws = np.random.default_rng(6)  # enc.drop, enc.0.drop_1, then this site
    for _ in range(2):
        draws.random((1, S, 8), dtype=np.float32)
    keep = draws.random((1, S, 8), dtype=np.float32)[0, -1] >= 0.25
    masks = [int(m[1]) for m in (re.match(rf"\s+\d+\s+{NUM}\s+([01])\s", line) for line in section(out, 2)) if m]
    assert masks == keep.astype(int).tolist()


@pytest.mark.parametrize("args, message", [
    (["--text", ""], "--text is empty"),
    (["--text", TEXT, "--site", "h.7.attn.drop"], "--site 'h.7.attn.drop' is not a dropout"),
    (["--text", TEXT, "--position", "99"], "--position 99 is out of range"),
    (["--text", TEXT, "--p", "1"], "--p must be above 0 and below 1"),
    (["--text", TEXT, "--p", "0"], "--p must be above 0 and below 1"),
    (["--text", TEXT, "--p", "x"], "--p must be a number"),
    (["--text", TEXT, "--seed", "-1"], "--seed must be at least 0"),
    (["--text", "~~~"], "--text"),
])
def test_bad_inputs_are_one_line_errors(ckpt, capsys, args, message):
    code, _, err = run(capsys, "--ckpt", ckpt, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_missing_or_foreign_checkpoint(tmp_path, capsys):
    code, _, err = run(capsys, "--ckpt", tmp_path / "none", "--text", TEXT)
    assert code == 2 and "does not exist" in err
    with pytest.raises(SystemExit) as stop:
        main(["explain", "dropout", "--help"])
    assert stop.value.code == 0 and "the mask it drew" in capsys.readouterr().out
