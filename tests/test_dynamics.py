"""Dynamics over snapshots: head scores on constructed attention patterns (values by hand),
Procrustes against an SVD done here, parameter changes by hand, and the figures' traces."""
import math

import numpy as np
import pytest

from scratchllm import snapshots as S
from scratchllm import train as T
from scratchllm.explain import dynamics as D
from scratchllm.files import write_safetensors

TEXT = "the cat sat on the mat. the dog sat on the log. " * 40


def causal_uniform(T_):
    return np.tril(np.ones((T_, T_))) / np.arange(1, T_ + 1)[:, None]


# ---- head scores by hand ------------------------------------------------------------------------
def test_previous_token_score_by_hand():
    w = np.zeros((6, 6))
    w[0, 0] = 1
    for t in range(1, 6):
        w[t, t - 1], w[t, t] = 0.75, 0.25
    assert D.prev_token_score(w) == pytest.approx(0.75)
    # uniform causal attention: query t gives 1/(t+1) to t − 1
    assert D.prev_token_score(causal_uniform(5)) == pytest.approx((1 / 2 + 1 / 3 + 1 / 4 + 1 / 5) / 4)


def test_induction_score_by_hand():
    P = 4  # 8 tokens: a b c d a b c d; query t ≥ 4 should look at t − 3 (what followed it before)
    w = np.eye(8)
    for t in range(P, 2 * P):
        w[t] = 0
        w[t, t - P + 1] = 0.5
        w[t, t] = 0.5
    assert D.induction_score(w, P) == pytest.approx(0.5)
    assert D.induction_score(causal_uniform(8), P) == pytest.approx((1 / 5 + 1 / 6 + 1 / 7 + 1 / 8) / 4)
    with pytest.raises(Exception, match="period"):
        D.induction_score(w, 8)


def test_entropy_by_hand():
    # uniform over t + 1 keys: ln(t + 1) nats, queries 1 … 5
    assert D.attention_entropy(causal_uniform(6)) == pytest.approx(sum(math.log(t + 1) for t in range(1, 6)) / 5)
    assert D.attention_entropy(np.eye(6)) == 0  # all weight on one key
    w = np.eye(3)
    w[1] = [0.5, 0.5, 0]
    w[2] = [0.25, 0.25, 0.5]  # −(2·¼ ln ¼ + ½ ln ½) = 1.5 ln 2
    assert D.attention_entropy(w) == pytest.approx((math.log(2) + 1.5 * math.log(2)) / 2)


def test_scores_keep_the_leading_axes():
    w = np.stack([np.stack([causal_uniform(6), np.eye(6)])] * 3)  # (L=3, H=2, T, T)
    for f in (D.prev_token_score, D.attention_entropy, lambda x: D.induction_score(x, 3)):
        assert f(w).shape == (3, 2)
    assert D.prev_token_score(w)[0, 1] == 0


def test_repeated_random_ids():
    ids = D.repeated_random_ids(50, 7, seed=3)
    assert ids.shape == (1, 14) and (ids[0, :7] == ids[0, 7:]).all() and ids.max() < 50


# ---- Procrustes ---------------------------------------------------------------------------------
def test_procrustes_is_u_vt_of_the_svd_and_recovers_a_rotation():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((30, 3))
    Q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    B = A @ Q + 0.01 * rng.standard_normal((30, 3))
    U, _, Vt = np.linalg.svd(A.T @ B)
    R = D.procrustes(A, B)
    np.testing.assert_allclose(R, U @ Vt, atol=1e-12)
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(R, Q, atol=0.01)
    for _ in range(20):  # no other orthogonal matrix lays A closer to B
        O, _ = np.linalg.qr(rng.standard_normal((3, 3)))
        assert np.linalg.norm(A @ R - B) <= np.linalg.norm(A @ O - B)


def test_embedding_maps_do_not_flip():
    rng = np.random.default_rng(1)
    E = rng.standard_normal((40, 8)) * np.array([5, 3, 1, 1, 1, 1, 1, 1])  # two clear principal axes
    O, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    maps = D.embedding_maps({0: E, 10: -E, 20: E @ O + 3.0})  # the same cloud mirrored, turned, moved
    assert maps["steps"].tolist() == [0, 10, 20] and maps["xy"].shape == (3, 40, 2)
    np.testing.assert_allclose(maps["xy"][1], maps["xy"][0], atol=1e-9)
    np.testing.assert_allclose(maps["xy"][2], maps["xy"][0], atol=1e-9)
    # and the first map is the centred cloud on its first two principal axes (SVD here)
    Ec = E - E.mean(0)
    _, _, Vt = np.linalg.svd(Ec, full_matrices=False)
    np.testing.assert_allclose(np.abs(maps["xy"][0]), np.abs(Ec @ Vt[:2].T), atol=1e-9)


# ---- parameter changes --------------------------------------------------------------------------
def test_param_changes_by_hand(tmp_path):
    (tmp_path / "snapshots").mkdir()
    write_safetensors({"a": 2 * np.ones((2, 2), np.float32), "b": np.array([3, 5], np.float32),
                       "c": np.array([0, 0, 1], np.float32)}, S.snapshot_path(tmp_path, 5))
    write_safetensors({"a": np.ones((2, 2), np.float32), "b": np.array([3, 4], np.float32),
                       "c": np.zeros(3, np.float32)}, S.snapshot_path(tmp_path, 0))
    changes = D.param_changes(tmp_path, 0, 5)
    # c: from 0, ‖Δ‖ 1 of ‖W_b‖ 1; a: ‖Δ‖ 2 of ‖W_b‖ 4; b: ‖Δ‖ 1 of ‖W_b‖ √34
    assert [c["name"] for c in changes] == ["c", "a", "b"]
    assert [c["change"] for c in changes] == pytest.approx([1, 2, 1])
    assert [c["relative"] for c in changes] == pytest.approx([1, 0.5, 1 / math.sqrt(34)])
    fig = D.param_changes_figure(changes)
    assert list(fig.data[0].y) == ["b", "a", "c"]  # the most changed at the top
    assert list(fig.data[0].x) == pytest.approx([1 / math.sqrt(34), 0.5, 1])


# ---- over a real run --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("dyn")
    (d / "corpus.txt").write_text(TEXT)
    cfg = T.TrainConfig(data=str(d / "corpus.txt"), out=str(d / "run"), n_layer=2, n_head=2, n_embd=16,
                        block_size=16, batch_size=4, max_iters=12, eval_interval=100, eval_iters=1, progress=False,
                        sample_tokens=0, snapshots=4)
    T.train(cfg, echo=lambda *a: None)
    return d / "run"


def test_head_scores_over_training_are_each_snapshots_own(run):
    scores = D.head_scores_over_training(run, period=6)
    assert scores["steps"].tolist() == list(S.list_snapshots(run)) == [0, 1, 3, 12]
    for name in D.SCORES:
        assert scores[name].shape == (4, 2, 2)
    # at step 3, from a trace of that snapshot's model on the repeated sequence, worked out here
    from scratchllm.explain import trace

    model = S.load_snapshot(run, 3)
    ids = D.repeated_random_ids(model.vocab_size, 6)
    w = trace(model, ids)["h.1.attn.weights"][0, 0].astype(np.float64)  # layer 1, head 0: (12, 12)
    assert scores["previous token"][2, 1, 0] == pytest.approx(np.mean([w[t, t - 1] for t in range(1, 12)]))
    assert scores["induction"][2, 1, 0] == pytest.approx(np.mean([w[t, t - 5] for t in range(6, 12)]))
    ent = [-sum(x * math.log(x) for x in w[t, :t + 1] if x > 0) for t in range(1, 12)]
    assert scores["entropy"][2, 1, 0] == pytest.approx(np.mean(ent))
    fig = D.head_scores_figure(scores)
    assert len(fig.data) == 3 * 2 * 2
    assert fig.data[0].name == "layer 0 head 0" and list(fig.data[0].x) == [0, 1, 3, 12]
    np.testing.assert_allclose(fig.data[2 * 2 + 3].y, scores["induction"][:, 1, 1])  # panel 2, layer 1 head 1


def test_embedding_map_figure_has_a_frame_per_snapshot(run):
    maps = D.embedding_maps(run)
    assert maps["steps"].tolist() == [0, 1, 3, 12]
    V = S.load_snapshot(run, 0).vocab_size
    assert maps["xy"].shape == (4, V, 2)
    fig = D.embedding_map_figure(maps, labels=[str(i) for i in range(V)])
    assert [f.name for f in fig.frames] == ["0", "1", "3", "12"]
    np.testing.assert_allclose(fig.frames[3].data[0].x, maps["xy"][3, :, 0])
    assert [s.label for s in fig.layout.sliders[0].steps] == ["0", "1", "3", "12"]


def test_a_run_without_snapshots_is_one_clear_error(tmp_path):
    from scratchllm.errors import ScratchError

    with pytest.raises(ScratchError, match="has no snapshots: train with --snapshots"):
        D.head_scores_over_training(tmp_path)


@pytest.mark.parametrize("family", ["gpt", "llama", "transformer"])
def test_head_scores_of_every_family_read_its_self_attention(family):
    from scratchllm.explain import trace
    from scratchllm.models import GPT, GPTConfig, Transformer, TransformerConfig
    from scratchllm.models.llama import Llama, LlamaConfig

    model = {"gpt": lambda: GPT(GPTConfig(vocab_size=30, block_size=12, n_layer=2, n_head=2, n_embd=16)),
             "llama": lambda: Llama(LlamaConfig(vocab_size=30, hidden_size=16, intermediate_size=32,
                                                num_hidden_layers=2, num_attention_heads=2,
                                                num_key_value_heads=1, max_position_embeddings=12)),
             "transformer": lambda: Transformer(TransformerConfig(src_vocab_size=30, tgt_vocab_size=30, d_model=16,
                                                                  n_head=2, n_encoder_layers=1, n_decoder_layers=2,
                                                                  d_ff=32, max_len=12, dropout=0.0))}[family]()
    scores = D.head_scores(model)  # period 6: 12 tokens
    ids = D.repeated_random_ids(30, 6)
    name = "dec.1.self_attn.weights" if family == "transformer" else "h.1.attn.weights"
    tr = trace(model, (ids, ids) if family == "transformer" else ids)
    w = tr[name][0, 1].astype(np.float64)  # layer 1, head 1
    assert scores["previous token"].shape == (2, 2)
    assert scores["previous token"][1, 1] == pytest.approx(np.mean([w[t, t - 1] for t in range(1, 12)]))
    assert scores["induction"][1, 1] == pytest.approx(np.mean([w[t, t - 5] for t in range(6, 12)]))
