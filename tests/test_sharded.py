"""ShardedBackward: a batch split over threads gives the gradient of the whole batch."""
import numpy as np
import pytest

from scratchllm.models import GPT, GPTConfig
from scratchllm.sharded import ShardedBackward, loss_terms
from scratchllm.tensor import Tensor


def tiny_gpt(dropout=0.0, dtype=np.float64):
    cfg = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=dropout)
    return GPT(cfg, seed=3).astype(dtype)


def batch(B, T=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 11, (B, T)), rng.integers(0, 11, (B, T))


def grads(model):
    return {name: p.grad.copy() for name, p in model.named_parameters()}


@pytest.mark.parametrize("B,shards", [(4, 2), (5, 3), (6, 4), (2, 5)])
def test_matches_one_backward(B, shards):
    x, y = batch(B)
    model = tiny_gpt()
    _, loss = model(x, y)
    (loss * 0.5).backward()
    want, want_loss = grads(model), loss.item()
    model.zero_grad()
    got_loss = ShardedBackward(model, shards).step(x, y, scale=0.5)
    assert got_loss == pytest.approx(want_loss, rel=1e-12)
    for name, g in grads(model).items():
        np.testing.assert_allclose(g, want[name], rtol=1e-10, atol=1e-13, err_msg=name)


def test_adds_to_existing_gradients():
    x, y = batch(4)
    model = tiny_gpt()
    sharded = ShardedBackward(model, 2)
    sharded.step(x, y)
    once = grads(model)
    sharded.step(x, y)
    for name, g in grads(model).items():
        np.testing.assert_allclose(g, 2 * once[name], rtol=1e-12, err_msg=name)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_float32_results_repeat_bit_for_bit(dropout):
    x, y = batch(12, seed=1)
    runs = []
    for _ in range(2):
        model = tiny_gpt(dropout, np.float32)
        losses = [ShardedBackward(model, 2).step(x, y) for _ in range(3)]
        runs.append((losses, grads(model)))
    assert runs[0][0] == runs[1][0]
    for name, g in runs[0][1].items():
        assert np.array_equal(g, runs[1][1][name]), name


def test_dropout_masks_differ_between_shards():
    # Two identical halves: with one generator per shard their losses differ;
    # were both shards seeded alike they would be equal.
    x, y = batch(1)
    x2, y2 = np.repeat(x, 2, axis=0), np.repeat(y, 2, axis=0)
    model = tiny_gpt(dropout=0.5)
    sharded = ShardedBackward(model, 2)
    seen = []
    sharded._shard = lambda *job, f=sharded._shard: seen.append(f(*job)[0]) or (seen[-1], {})
    sharded.step(x2, y2)
    assert len(seen) == 2 and seen[0] != seen[1]


def test_backward_into_store_leaves_grad_alone():
    w = Tensor(np.ones(3), requires_grad=True)
    store = {}
    ((w * w).sum() * 2).backward(leaf_grads=store)
    assert w.grad is None
    np.testing.assert_allclose(store[id(w)], 4 * np.ones(3))


@pytest.mark.parametrize("B,shards", [(4, 2), (5, 3), (6, 4)])
def test_ignored_targets_weighted_by_what_the_loss_averages(B, shards):
    # The loss is a mean over the targets that are not ignore_index: a shard
    # holding few of them must count for little, whatever its number of rows.
    x, y = batch(B, seed=2)
    y = y.copy()
    y[0, 1:] = -100  # the first row keeps one target
    y[-1, ::2] = -100
    model = tiny_gpt()
    _, loss = model(x, y)
    loss.backward()
    want, want_loss = grads(model), loss.item()
    model.zero_grad()
    got_loss = ShardedBackward(model, shards).step(x, y)
    assert got_loss == pytest.approx(want_loss, rel=1e-12)
    for name, g in grads(model).items():
        np.testing.assert_allclose(g, want[name], rtol=1e-10, atol=1e-13, err_msg=name)


def test_shard_with_no_target_adds_nothing():
    x, y = batch(4, seed=4)
    y = y.copy()
    y[:2] = -100  # the first shard has nothing to average: its NaN mean must not leak in
    model = tiny_gpt()
    _, loss = model(x, y)
    loss.backward()
    want = grads(model)
    model.zero_grad()
    assert ShardedBackward(model, 2).step(x, y) == pytest.approx(loss.item(), rel=1e-12)
    for name, g in grads(model).items():
        np.testing.assert_allclose(g, want[name], rtol=1e-10, atol=1e-13, err_msg=name)


def test_loss_terms_counts_targets_not_ignored():
    assert loss_terms(np.array([[1, -100, 3], [-100, -100, 0]])) == 3
    assert loss_terms(np.array([0, 0, 5, 0]), ignore_index=0) == 1


@pytest.mark.parametrize("late", ["main", "worker"])
def test_dropout_without_generator_does_not_depend_on_thread_timing(late):
    # Dropout modules built without a generator: each shard still draws from one
    # of its own (seeded from the default generator), so whichever thread runs
    # first, the masks and hence loss and gradients are the same.
    import threading
    import time

    from scratchllm import nn

    x, y = batch(4, seed=5)

    def run(delay_in):
        model = tiny_gpt(dropout=0.5)
        for _, m in model.named_modules():
            if isinstance(m, nn.Dropout):
                m.rng = None
        nn.manual_seed(7)
        sharded = ShardedBackward(model, 2)
        main = threading.main_thread()

        def shard(*job, f=sharded._shard):
            on_main = threading.current_thread() is main
            if on_main == (delay_in == "main"):
                time.sleep(0.2)  # the other shard runs its whole forward first
            return f(*job)

        sharded._shard = shard
        return sharded.step(x, y), grads(model)

    other = "worker" if late == "main" else "main"
    (loss_a, grads_a), (loss_b, grads_b) = run(late), run(other)
    assert loss_a == loss_b
    for name, g in grads_a.items():
        assert np.array_equal(g, grads_b[name]), name
