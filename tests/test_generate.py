"""Sampling: filters on hand-made distributions, inverse-CDF draws, and the
generation loop with and without the KV cache."""
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchllm.errors import ScratchError
from scratchllm.generate import (
    generate,
    probabilities,
    sample_from_probs,
    sample_next,
    top_k_filter,
    top_p_filter,
)
from scratchllm.models.gpt import GPT, GPTConfig

NEG = -np.inf


# ---- top-k ----------------------------------------------------------------------
def test_top_k_keeps_the_k_largest():
    logits = np.array([[1.0, 3.0, 2.0, 5.0], [0.0, -1.0, 4.0, 2.0]])
    out = top_k_filter(logits, 2)
    np.testing.assert_array_equal(out, [[NEG, 3.0, NEG, 5.0], [NEG, NEG, 4.0, 2.0]])
    np.testing.assert_array_equal(top_k_filter(logits, 1), [[NEG, NEG, NEG, 5.0], [NEG, NEG, 4.0, NEG]])


def test_top_k_large_k_and_ties():
    logits = np.array([1.0, 2.0, 2.0, 0.5])
    np.testing.assert_array_equal(top_k_filter(logits, 4), logits)
    np.testing.assert_array_equal(top_k_filter(logits, 10), logits)
    # tied with the k-th largest: kept, as in PyTorch/HF
    np.testing.assert_array_equal(top_k_filter(logits, 1), [NEG, 2.0, 2.0, NEG])
    assert logits[0] == 1.0  # input untouched


# ---- top-p ----------------------------------------------------------------------
def _logits(probs):
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(probs, dtype=np.float64))


@pytest.mark.parametrize("p, kept", [
    (0.05, [1]),           # tiny p: the most likely token is always kept
    (0.5, [1]),            # 0.5 alone reaches 0.5
    (0.7, [1, 3]),         # 0.5 + 0.25
    (0.8, [1, 3, 0]),      # 0.75 < 0.8: one of the 0.125s joins; the lower id wins the tie
    (0.9, [0, 1, 2, 3]),
    (1.0, [0, 1, 2, 3]),
])
def test_top_p_nucleus_on_hand_made_distribution(p, kept):
    probs = np.array([0.125, 0.5, 0.125, 0.25])
    out = top_p_filter(_logits(probs), p)
    expect = np.full(4, NEG)
    expect[kept] = _logits(probs)[kept]
    np.testing.assert_array_equal(out, expect)


def test_top_p_rows_independent_and_after_top_k():
    logits = _logits([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
    out = top_p_filter(logits, 0.75)
    assert np.isfinite(out).tolist() == [[True, True, False], [False, True, True]]
    out = top_p_filter(logits, 0.65)
    assert np.isfinite(out).tolist() == [[True, True, False], [False, False, True]]
    # after top-k=1 only one token is left, whatever p is
    out = top_p_filter(top_k_filter(logits, 1), 0.99)
    assert np.isfinite(out).sum(axis=-1).tolist() == [1, 1]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.01, 1.0), min_size=1, max_size=12), st.floats(0.01, 1.0))
def test_top_p_is_the_smallest_set_reaching_p(weights, p):
    probs = np.array(weights) / np.sum(weights)
    keep = np.isfinite(top_p_filter(_logits(probs), p))
    mass = probs[keep].sum()
    assert keep[np.argmax(probs)]
    assert mass >= p - 1e-12 or keep.all()
    # every kept token is at least as likely as every dropped one
    if (~keep).any():
        assert probs[keep].min() >= probs[~keep].max()
    # dropping the least likely kept token falls short of p (it is the smallest set)
    if keep.sum() > 1:
        assert mass - probs[keep].min() < p + 1e-12


# ---- inverse-CDF draws ------------------------------------------------------------
def test_sample_from_probs_inverse_cdf():
    probs = np.tile([0.1, 0.2, 0.3, 0.4], (5, 1))
    u = np.array([0.0, 0.05, 0.15, 0.35, 0.95])
    assert sample_from_probs(probs, u).tolist() == [0, 0, 1, 2, 3]
    # unnormalised weights are fine: u scales with the total
    assert sample_from_probs(probs[:2] * 10, u[3:]).tolist() == [2, 3]


def test_sample_from_probs_never_picks_zero_probability():
    probs = np.array([[0.0, 0.5, 0.0, 0.5], [0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    for u in (0.0, 0.25, 0.5, 0.75, np.nextafter(1.0, 0.0)):
        tok = sample_from_probs(probs, np.full(3, u))
        assert (probs[np.arange(3), tok] > 0).all(), u


def test_sample_frequencies_follow_the_distribution():
    probs = np.array([0.1, 0.2, 0.3, 0.4])
    rng = np.random.default_rng(0)
    draws = sample_from_probs(np.tile(probs, (40_000, 1)), rng.random(40_000))
    freq = np.bincount(draws, minlength=4) / draws.size
    np.testing.assert_allclose(freq, probs, atol=0.01)


def test_sample_next_matches_an_independent_computation():
    logits = np.random.default_rng(1).standard_normal((3, 20)).astype(np.float32)
    T, k, p = 0.7, 8, 0.8
    got = sample_next(logits, T, k, p, np.random.default_rng(42))
    # by hand: scale, keep top k, nucleus, softmax, inverse CDF with the same uniform draws
    u = np.random.default_rng(42).random(3)
    expect = []
    for row, ui in zip(logits.astype(np.float64) / T, u):
        order = np.argsort(-row, kind="stable")[:k]
        pr = np.exp(row[order] - row[order].max())
        pr /= pr.sum()
        n = int(np.searchsorted(np.cumsum(pr), p) + 1)  # smallest prefix with mass >= p
        full = np.zeros_like(row)
        full[order[:n]] = pr[:n] / pr[:n].sum()  # back in vocabulary order
        expect.append(int(np.searchsorted(np.cumsum(full), ui, side="right")))
    assert got.tolist() == expect


def test_temperature_zero_is_argmax_and_draws_nothing():
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 2.9]])
    rng = np.random.default_rng(7)
    state = rng.bit_generator.state
    assert sample_next(logits, 0.0, 1, 0.5, rng).tolist() == [1, 0]
    assert rng.bit_generator.state == state


def test_probabilities_handles_minus_inf():
    pr = probabilities(np.array([0.0, NEG, 0.0]))
    np.testing.assert_allclose(pr, [0.5, 0.0, 0.5])


# ---- the generation loop -------------------------------------------------------------
def tiny_gpt(block_size=8, positional="learned", dropout=0.0, seed=0):
    cfg = GPTConfig(vocab_size=13, block_size=block_size, n_layer=2, n_head=2, n_embd=16,
                    positional=positional, dropout=dropout)
    return GPT(cfg, seed=seed)


PROMPT = np.array([[1, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize("positional", ["learned", "sinusoidal"])
@pytest.mark.parametrize("kw", [
    dict(temperature=1.0),
    dict(temperature=0.8, top_k=5),
    dict(temperature=1.3, top_p=0.9),
    dict(temperature=1.0, top_k=6, top_p=0.8),
    dict(temperature=0.0),
])
def test_cache_and_no_cache_give_the_same_tokens(positional, kw):
    model = tiny_gpt(block_size=8, positional=positional)
    n = 20  # runs well past block_size 8: the window slides
    for seed in (0, 1, 2):
        a = generate(model, PROMPT, n, seed=seed, use_cache=True, **kw)
        b = generate(model, PROMPT, n, seed=seed, use_cache=False, **kw)
        assert a.shape == (2, 3 + n)
        np.testing.assert_array_equal(a, b)


def test_cached_logits_match_uncached_step_by_step():
    """Each cached step's logits equal a full pass over the same window."""
    model = tiny_gpt(block_size=8)
    seen_cached, seen_full = [], []
    seq = generate(model, PROMPT, 12, seed=3)
    orig = model.forward

    def record(store):
        def fwd(ids, targets=None, cache=None):
            out = orig(ids, targets, cache)
            store.append(out.data[:, -1].copy())
            return out
        return fwd

    model.forward = record(seen_cached)
    generate(model, PROMPT, 12, seed=3)
    model.forward = orig
    for t in range(3, 3 + 12):  # each step's context: seq[:, :t], last 8 tokens
        seen_full.append(model(seq[:, max(0, t - 8):t]).data[:, -1])
    np.testing.assert_allclose(np.array(seen_cached), np.array(seen_full), rtol=1e-4, atol=1e-5)


def test_cache_feeds_one_token_per_step_until_the_window_slides():
    model = tiny_gpt(block_size=8)
    lengths = []
    orig = model.forward
    model.forward = lambda ids, targets=None, cache=None: (lengths.append((ids.shape[1], cache is not None)),
                                                          orig(ids, targets, cache))[1]
    generate(model, PROMPT, 10, seed=0)
    # prefill 3, then single tokens up to 8 in the cache, then the full window of 8 each step
    assert lengths == [(3, True)] + [(1, True)] * 5 + [(8, False)] * 4
    lengths.clear()
    generate(model, PROMPT, 4, seed=0, use_cache=False)
    assert lengths == [(3, False), (4, False), (5, False), (6, False)]


def test_seed_and_rng_reproducible():
    model = tiny_gpt()
    a = generate(model, PROMPT, 10, seed=5)
    np.testing.assert_array_equal(a, generate(model, PROMPT, 10, seed=5))
    np.testing.assert_array_equal(a, generate(model, PROMPT, 10, rng=np.random.default_rng(5)))
    assert not np.array_equal(a, generate(model, PROMPT, 10, seed=6))
    with pytest.raises(ScratchError):
        generate(model, PROMPT, 3, seed=1, rng=np.random.default_rng(1))


def test_rows_in_a_batch_are_independent_of_each_other_at_temperature_zero():
    model = tiny_gpt()
    both = generate(model, PROMPT, 12, temperature=0)
    for i in range(2):
        np.testing.assert_array_equal(both[i], generate(model, PROMPT[i], 12, temperature=0))


def test_on_token_streams_each_step():
    model = tiny_gpt()
    got = []
    out = generate(model, PROMPT, 7, seed=0, on_token=got.append)
    assert len(got) == 7 and all(t.shape == (2,) for t in got)
    np.testing.assert_array_equal(np.stack(got, axis=1), out[:, 3:])


def test_eval_mode_and_restore():
    model = tiny_gpt(dropout=0.5).train()
    a = generate(model, PROMPT, 10, seed=0)
    b = generate(model, PROMPT, 10, seed=0)  # dropout off while sampling: deterministic
    np.testing.assert_array_equal(a, b)
    assert model.training and all(m.training for _, m in model.named_modules())
    model.eval()
    generate(model, PROMPT, 2, seed=0)
    assert not model.training
    # no graph was recorded
    assert all(p.grad is None for p in model.parameters())


def test_long_prompt_is_cropped_with_a_warning():
    model = tiny_gpt(block_size=8)
    long = np.arange(20).reshape(2, 10) % 13
    with pytest.warns(UserWarning, match="block_size"):
        out = generate(model, long, 5, seed=0)
    assert out.shape == (2, 15)
    np.testing.assert_array_equal(out[:, :10], long)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cropped = generate(model, long[:, -8:], 5, seed=0)
    np.testing.assert_array_equal(out[:, 10:], cropped[:, 8:])


def test_shapes_and_edge_cases():
    model = tiny_gpt()
    one = generate(model, [1, 2], 4, seed=0)
    assert one.shape == (6,) and one.dtype == np.int64
    np.testing.assert_array_equal(generate(model, PROMPT, 0), PROMPT)
    assert generate(model, PROMPT, 3, seed=0).max() < 13
    np.testing.assert_array_equal(model.generate(PROMPT, 6, temperature=0.9, top_k=4, seed=2),
                                  generate(model, PROMPT, 6, temperature=0.9, top_k=4, seed=2))


@pytest.mark.parametrize("kw", [
    dict(temperature=-1.0), dict(temperature=float("nan")), dict(top_p=0.0), dict(top_p=1.5),
    dict(top_k=0), dict(top_k=2.5), dict(max_new_tokens=-1),
])
def test_bad_settings_raise_clear_errors(kw):
    model = tiny_gpt()
    args = dict(max_new_tokens=3, seed=0)
    args.update(kw)
    with pytest.raises(ScratchError):
        generate(model, PROMPT, **args)


def test_empty_prompt_is_an_error():
    with pytest.raises(ScratchError, match="empty"):
        generate(tiny_gpt(), np.zeros((1, 0), dtype=np.int64), 3)


# ---- the command line ------------------------------------------------------------------
TEXT = "hello world, how are you?\n"


@pytest.fixture
def char_ckpt(tmp_path):
    """A tiny GPT with a character tokenizer, saved as a checkpoint directory."""
    import scratchllm as sl
    from scratchllm.tokenizers import CharTokenizer

    tok = CharTokenizer.from_text(TEXT)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16), seed=0)
    path = tmp_path / "ckpt"
    sl.save(model, path, tokenizer=tok)
    return path, model, tok


def cli(*argv):
    from scratchllm.cli import main

    return main(["generate", *map(str, argv)])


def test_cli_streams_the_same_text_as_the_library(char_ckpt, capsys):
    path, model, tok = char_ckpt
    streamed = []
    for extra in ((), ("--no-cache",)):
        assert cli("--ckpt", path, "--prompt", "how", "--max-new-tokens", 30, "--seed", 4,
                   "--top-k", 6, "--temperature", 0.9, *extra) == 0
        streamed.append(capsys.readouterr().out)
    ids = generate(model, [tok.encode("how")], 30, seed=4, top_k=6, temperature=0.9)
    expect = "how" + tok.decode(ids[0, 3:].tolist())
    assert streamed[0] == streamed[1] == expect + ("" if expect.endswith("\n") else "\n")


def test_cli_samples_are_separated_and_reproducible(char_ckpt, capsys):
    path, model, tok = char_ckpt
    assert cli("--ckpt", path, "--prompt", "a", "--max-new-tokens", 20, "--seed", 1, "--num-samples", 3) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if "sample" in line] == [
        f"───── sample {i}/3 ─────" for i in (1, 2, 3)]
    rng = np.random.default_rng(1)  # samples come one after another from one generator
    for i in range(3):
        ids = generate(model, [tok.encode("a")], 20, rng=rng)
        assert "a" + tok.decode(ids[0, 1:].tolist()) in out
    assert cli("--ckpt", path, "--prompt", "a", "--max-new-tokens", 20, "--seed", 1, "--num-samples", 3) == 0
    assert capsys.readouterr().out == out


def test_cli_bpe_multibyte_characters_stream_whole(tmp_path, capsys):
    import scratchllm as sl
    from scratchllm.tokenizers import BPETokenizer

    tok = BPETokenizer().train("héllo wörld ünïcødé ☃ " * 5, vocab_size=262)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16), seed=1)
    sl.save(model, tmp_path / "bpe", tokenizer=tok)
    assert cli("--ckpt", tmp_path / "bpe", "--prompt", "hé", "--max-new-tokens", 40, "--seed", 0) == 0
    out = capsys.readouterr().out
    prompt_ids = tok.encode("hé")
    ids = generate(model, [prompt_ids], 40, seed=0)
    expect = "hé" + tok.decode(ids[0, len(prompt_ids):].tolist())
    assert out == expect + ("" if expect.endswith("\n") else "\n")


@pytest.mark.parametrize("args, message", [
    (("--prompt", "héllo Zed"), "does not know: 'Z' 'é'"),
    (("--temperature", "-1"), "--temperature"),
    (("--temperature", "warm"), "--temperature must be a number"),
    (("--top-p", "0"), "--top-p must be in (0, 1]"),
    (("--top-p", "1.5"), "--top-p must be in (0, 1]"),
    (("--top-k", "0"), "--top-k"),
    (("--max-new-tokens", "-3"), "--max-new-tokens"),
    (("--num-samples", "0"), "--num-samples"),
])
def test_cli_bad_input_is_one_clear_line(char_ckpt, capsys, args, message):
    path = char_ckpt[0]
    assert cli("--ckpt", path, *args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("scratchllm generate: error:") and message in err


def test_cli_missing_checkpoint(tmp_path, capsys):
    assert cli("--ckpt", tmp_path / "nowhere") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err and "scratchllm train" in err


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli("--help")
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--ckpt", "--prompt", "--max-new-tokens", "--temperature", "--top-k", "--top-p", "--seed",
                "--num-samples", "--no-cache"):
        assert opt in out


def test_cli_points_other_models_to_their_verb(tmp_path, capsys):
    import scratchllm as sl
    from scratchllm.models import CharMLP
    from scratchllm.tokenizers import CharTokenizer

    tok = CharTokenizer.from_text(TEXT)
    sl.save(CharMLP(tok.vocab_size, context=3), tmp_path / "mlp", tokenizer=tok)
    assert cli("--ckpt", tmp_path / "mlp") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a GPT" in err and "scratchllm charmlp generate" in err
