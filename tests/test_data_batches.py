"""Batches: random windows, token files, splits, length-grouped padded batches."""
import json

import numpy as np
import pytest

from scratchllm.data import (get_batch, length_grouped_batches, pad_batch, random_batches,
                             read_token_bin, read_token_meta, train_val_split, write_token_bin)
from scratchllm.errors import ScratchError


def test_get_batch_shapes_and_shift():
    tokens = np.arange(1000)
    x, y = get_batch(tokens, 8, 16, np.random.default_rng(0))
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == np.int64
    # With tokens == positions, each row is a run of consecutive numbers.
    assert np.array_equal(y, x + 1)
    assert np.all(np.diff(x, axis=1) == 1)
    assert x.min() >= 0 and y.max() <= 999


def test_get_batch_reaches_both_ends():
    tokens = np.arange(6)
    x, y = get_batch(tokens, 200, 5, np.random.default_rng(1))
    assert np.array_equal(x, np.tile(np.arange(5), (200, 1)))   # only one window fits
    assert np.array_equal(y, np.tile(np.arange(1, 6), (200, 1)))


def test_determinism_by_seed():
    tokens = np.random.default_rng(5).integers(0, 50, size=500)
    a = get_batch(tokens, 4, 8, np.random.default_rng(7))
    b = get_batch(tokens, 4, 8, np.random.default_rng(7))
    c = get_batch(tokens, 4, 8, np.random.default_rng(8))
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    stream = random_batches(tokens, 4, 8, np.random.default_rng(7))
    assert np.array_equal(next(stream)[0], a[0])


def test_too_short_stream():
    with pytest.raises(ScratchError, match="too few for block size 10"):
        get_batch(np.arange(10), 2, 10, np.random.default_rng(0))


def test_train_val_split():
    train, val = train_val_split(np.arange(100), 0.9)
    assert np.array_equal(train, np.arange(90)) and np.array_equal(val, np.arange(90, 100))
    with pytest.raises(ScratchError):
        train_val_split(np.arange(10), 1.0)


@pytest.mark.parametrize("vocab, dtype", [(65, "uint16"), (50257, "uint16"), (65536, "uint16"),
                                          (65537, "uint32"), (100_000, "uint32")])
def test_token_bin_round_trip(tmp_path, vocab, dtype):
    ids = np.random.default_rng(0).integers(0, vocab, size=1000)
    ids[0] = vocab - 1
    path = write_token_bin(ids, tmp_path / "train.bin", vocab_size=vocab)
    assert path.stat().st_size == 1000 * np.dtype(dtype).itemsize
    side = json.loads((tmp_path / "train.bin.json").read_text())
    assert (side["dtype"], side["count"], side["vocab_size"]) == (dtype, 1000, vocab)
    back = read_token_bin(path)
    assert isinstance(back, np.memmap) and back.dtype == np.dtype(dtype)
    assert np.array_equal(back, ids)
    x, y = get_batch(back, 3, 7, np.random.default_rng(0))
    assert x.dtype == np.int64 and np.array_equal(x[:, 1:], y[:, :-1])


def test_token_bin_infers_vocab_and_handles_empty(tmp_path):
    write_token_bin([3, 1, 2], tmp_path / "a.bin")
    assert read_token_meta(tmp_path / "a.bin")["vocab_size"] == 4
    write_token_bin(np.array([], dtype=np.int64), tmp_path / "e.bin", vocab_size=10)
    assert len(read_token_bin(tmp_path / "e.bin")) == 0


def test_token_bin_errors(tmp_path):
    with pytest.raises(ScratchError, match="outside the vocabulary"):
        write_token_bin([0, 5], tmp_path / "x.bin", vocab_size=5)
    with pytest.raises(ScratchError, match="outside the vocabulary"):
        write_token_bin([-1, 2], tmp_path / "x.bin")
    with pytest.raises(ScratchError, match="sidecar.*missing|missing"):
        read_token_bin(tmp_path / "none.bin")
    path = write_token_bin(np.arange(100), tmp_path / "t.bin", vocab_size=100)
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(ScratchError, match="truncated"):
        read_token_bin(path)


def test_pad_batch():
    arr, lens = pad_batch([[5, 6, 7], [8], []], pad_id=0)
    assert arr.dtype == np.int64 and lens.tolist() == [3, 1, 0]
    assert arr.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]]


def check_grouping(batches, src, tgt, max_tokens):
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(src)))                   # every index exactly once
    for b in batches:
        assert len(b) * max(src[i] for i in b) <= max_tokens
        assert len(b) * max(tgt[i] for i in b) <= max_tokens


def test_length_grouped_batches_budget_and_cover():
    rng = np.random.default_rng(0)
    src = rng.integers(1, 40, size=2000).tolist()
    tgt = (np.array(src) + rng.integers(-5, 10, size=2000)).clip(1).tolist()
    batches = length_grouped_batches(src, tgt, 400, np.random.default_rng(1))
    check_grouping(batches, src, tgt, 400)
    # Grouping by length keeps padding low: most of the budget holds real tokens.
    real = sum(src[i] for b in batches for i in b)
    padded = sum(len(b) * max(src[i] for i in b) for b in batches)
    assert real / padded > 0.9


def test_length_grouped_batches_determinism_and_shuffle():
    src, tgt = list(range(1, 101)) * 3, list(range(1, 101)) * 3
    a = length_grouped_batches(src, tgt, 200, np.random.default_rng(3))
    b = length_grouped_batches(src, tgt, 200, np.random.default_rng(3))
    c = length_grouped_batches(src, tgt, 200, np.random.default_rng(4))
    assert a == b and a != c
    fixed = length_grouped_batches(src, tgt, 200, shuffle=False)
    check_grouping(fixed, src, tgt, 200)
    lengths = [src[i] for b in fixed for i in b]
    assert lengths == sorted(lengths)                      # no shuffle: shortest first


def test_length_grouped_batches_hand_example():
    # Lengths 2,2,3,5 with budget 6: [2,2,3]? 3*3=9 > 6 -> [2,2] then [3] then [5].
    assert length_grouped_batches([5, 2, 3, 2], [1, 1, 1, 1], 6, shuffle=False) == [[1, 3], [2], [0]]


def test_length_grouped_batches_errors():
    with pytest.raises(ScratchError, match="example 1 has 9 source"):
        length_grouped_batches([3, 9], [3, 3], 8, shuffle=False)
    with pytest.raises(ScratchError, match="needs an rng"):
        length_grouped_batches([3], [3], 8)
