"""Greedy decoding and beam search, judged by the model's own scores computed
with full (uncached) forward passes: beam size 1 is greedy, a wider beam
scores at least as well as greedy, an exhaustive enumeration of every
hypothesis finds the same best one as a beam wide enough to hold them all,
and batching sentences changes nothing."""
import itertools

import numpy as np
import pytest

import scratchllm as sl
from scratchllm.models import Transformer, TransformerConfig
from scratchllm.translate import beam_search, greedy_decode

PAD, BOS, EOS = 0, 1, 2


def random_model(vocab, seed, d_model=16, max_len=24, dtype=np.float64):
    """A random model with next-token distributions far from uniform. (A tied
    output layer makes a random model copy its input token forever; an untied
    one varies more.)"""
    cfg = TransformerConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, d_model=d_model, n_head=2,
                            n_encoder_layers=2, n_decoder_layers=2, d_ff=32, dropout=0.0, max_len=max_len,
                            norm_first=bool(seed % 2), tie_output=False)
    model = Transformer(cfg, seed=seed).astype(dtype)
    model.lm_head.weight.data *= 2
    return model


def pick_eos(model, src, max_len):
    """A random model has no end token of its own: call EOS the token whose
    first appearance in greedy outputs ends them at the most different lengths."""
    never = greedy_decode(model, src, BOS, -1, max_len=max_len)
    def spread(tok):
        return len({h.index(tok) if tok in h else max_len for h in never})
    return max(range(2, model.config.tgt_vocab_size), key=spread)


def sources(vocab, lengths, seed):
    rng = np.random.default_rng(seed)
    src = np.full((len(lengths), max(lengths)), PAD)
    for i, n in enumerate(lengths):
        src[i, :n] = rng.integers(3, vocab, size=n)
    return src


def log_prob(model, src_row, hyp, eos=EOS):
    """Σ log p(y_i | y_<i, x) over hyp + EOS, from one full forward pass."""
    tgt_in = np.array([[BOS] + list(hyp)])
    tgt_out = [*hyp, eos]
    with sl.no_grad():
        logits = model(src_row[None], tgt_in).data[0].astype(np.float64)  # (T, V)
    logp = logits - logits.max(axis=-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=-1, keepdims=True))
    return float(logp[np.arange(len(tgt_out)), tgt_out].sum())


def normalised(score, n_tokens, alpha):
    return score / ((5 + n_tokens) / 6) ** alpha if alpha else score


@pytest.mark.parametrize("seed", [0, 1])
def test_beam_size_one_is_greedy(seed):
    model = random_model(12, seed, dtype=np.float32)
    src = sources(12, [7, 3, 5, 1, 6, 4, 2], seed)
    eos = pick_eos(model, src, 9)
    greedy = greedy_decode(model, src, BOS, eos, max_len=9)
    beam, scores = beam_search(model, src, BOS, eos, beam_size=1, length_penalty=None, max_len=9,
                               return_scores=True)
    assert beam == greedy
    assert len({len(h) for h in greedy}) > 2  # sentences ended at different steps
    for row, hyp, score in zip(src, greedy, scores):
        assert eos not in hyp and len(hyp) <= 9
        assert score == pytest.approx(log_prob(model, row, hyp, eos), abs=1e-4)


@pytest.mark.parametrize("alpha", [None, 0.6])
def test_beam_scores_at_least_greedy(alpha):
    for seed in range(3):
        model = random_model(15, seed)
        src = sources(15, [8, 4, 6, 2], seed + 10)
        eos = pick_eos(model, src, 10)
        greedy = greedy_decode(model, src, BOS, eos, max_len=10)
        beam, scores = beam_search(model, src, BOS, eos, beam_size=4, length_penalty=alpha, max_len=10,
                                   return_scores=True)
        for row, g, b, s in zip(src, greedy, beam, scores):
            beam_score = normalised(log_prob(model, row, b, eos), len(b) + 1, alpha)
            assert s == pytest.approx(beam_score, abs=1e-9)  # the reported score is the model's
            assert beam_score >= normalised(log_prob(model, row, g, eos), len(g) + 1, alpha) - 1e-9


@pytest.mark.parametrize("alpha", [None, 0.6])
def test_wide_beam_finds_the_exhaustive_best(alpha):
    vocab, max_len = 5, 3
    tokens = [t for t in range(vocab) if t != EOS]  # any token but EOS may precede EOS
    candidates = [list(h) for n in range(max_len + 1) for h in itertools.product(tokens, repeat=n)]
    assert len(candidates) == 1 + 4 + 16 + 64
    for seed in range(2):
        model = random_model(vocab, seed + 20)
        src = sources(vocab, [4, 2, 3], seed + 30)
        found, scores = beam_search(model, src, BOS, EOS, beam_size=len(candidates), length_penalty=alpha,
                                    max_len=max_len, return_scores=True)
        for row, hyp, score in zip(src, found, scores):
            every = [normalised(log_prob(model, row, h), len(h) + 1, alpha) for h in candidates]
            best = int(np.argmax(every))
            assert sorted(every)[-1] - sorted(every)[-2] > 1e-6  # a unique best
            assert hyp == candidates[best]
            assert score == pytest.approx(every[best], abs=1e-9)


def test_batching_changes_nothing():
    """Sentences finish at different steps and leave the batch; beams reorder the cache."""
    model = random_model(14, 3)
    src = sources(14, [6, 2, 9, 4, 5], 40)
    eos = pick_eos(model, src, 8)
    together = beam_search(model, src, BOS, eos, beam_size=3, max_len=8, return_scores=True)
    alone = [beam_search(model, row[None], BOS, eos, beam_size=3, max_len=8, return_scores=True) for row in src]
    assert len({len(h) for h in together[0]}) > 1
    assert together[0] == [a[0][0] for a in alone]
    np.testing.assert_allclose(together[1], [a[1][0] for a in alone], rtol=0, atol=1e-9)
    assert greedy_decode(model, src, BOS, eos, max_len=8) == [greedy_decode(model, row, BOS, eos, max_len=8)[0]
                                                             for row in src]


def test_inputs_modes_and_limits():
    model = random_model(10, 4, dtype=np.float32)
    model.train()
    ragged = [[3, 4, 5], [6]]
    as_array = np.array([[3, 4, 5], [6, PAD, PAD]])
    assert greedy_decode(model, ragged, BOS, EOS, max_len=5) == greedy_decode(model, as_array, BOS, EOS, max_len=5)
    assert beam_search(model, ragged, BOS, EOS, max_len=5) == beam_search(model, as_array, BOS, EOS, max_len=5)
    assert greedy_decode(model, [3, 4, 5], BOS, EOS, max_len=5) == greedy_decode(model, as_array[:1], BOS, EOS,
                                                                                 max_len=5)
    assert model.training  # decoding ran in eval mode and restored the mode
    hyps = greedy_decode(model, as_array, BOS, EOS)  # default max_len: 2·3 + 10
    assert all(len(h) <= 16 for h in hyps)
    with pytest.raises(sl.ScratchError, match="max_len"):
        beam_search(model, as_array, BOS, EOS, max_len=24)
    with pytest.raises(sl.ScratchError, match="beam_size"):
        beam_search(model, as_array, BOS, EOS, beam_size=0)


@pytest.mark.parametrize("alpha", [None, 0.6])
def test_candidates_are_the_finished_hypotheses_with_their_scores(alpha):
    model = random_model(13, 5)
    src = sources(13, [7, 3, 5, 6], 50)
    eos = pick_eos(model, src, 9)
    hyps, scores = beam_search(model, src, BOS, eos, beam_size=4, length_penalty=alpha, max_len=9,
                               return_scores=True)
    again, cands = beam_search(model, src, BOS, eos, beam_size=4, length_penalty=alpha, max_len=9,
                               return_candidates=True)
    assert again == hyps  # asking for the candidates changes nothing else
    assert beam_search(model, src, BOS, eos, beam_size=4, length_penalty=alpha, max_len=9,
                       return_scores=True, return_candidates=True) == (hyps, scores, cands)
    assert max(len(c) for c in cands) > 1
    for row, hyp, score, cs in zip(src, hyps, scores, cands):
        assert cs[0]["tokens"] == hyp and cs[0]["score"] == score  # the best is the one returned
        assert [c["score"] for c in cs] == sorted((c["score"] for c in cs), reverse=True)
        assert len({tuple(c["tokens"]) for c in cs}) == len(cs)  # each finished once
        for c in cs:
            assert eos not in c["tokens"] and len(c["tokens"]) <= 9
            lp = log_prob(model, row, c["tokens"], eos)
            assert c["log_prob"] == pytest.approx(lp, abs=1e-9)
            assert c["score"] == pytest.approx(normalised(lp, len(c["tokens"]) + 1, alpha), abs=1e-9)
