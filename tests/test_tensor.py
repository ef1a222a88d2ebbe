"""Tensor and the basic ops: float64 gradient checks and autograd mechanics."""
import importlib
import sys

import numpy as np
import pytest

import scratchllm as sl
from scratchllm.tensor import Tensor, no_grad, unbroadcast

from gradcheck import check_grads

T = importlib.import_module("scratchllm.tensor")  # the module (sl.tensor is the factory function)


def leaf(shape, seed=0, low=None, high=None):
    """A float64 leaf requiring grad: normal values, or uniform in [low, high)."""
    rng = np.random.default_rng(seed)
    data = rng.standard_normal(shape) if low is None else rng.uniform(low, high, shape)
    return Tensor(data, requires_grad=True)


def distinct(shape, seed=0):
    """Values far from ties (for max): a shuffled arange, spread apart."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    return Tensor(rng.permutation(n).reshape(shape) * 0.1 + 0.01, requires_grad=True, dtype=np.float64)


# ---- the checker itself ---------------------------------------------------------
def test_check_grads_catches_a_wrong_backward():
    def wrong_square(a):  # forward a², backward claims a instead of 2a
        return T._op(a.data * a.data, (a,), lambda g: (g * a.data,))

    check_grads(lambda a: a * a, [leaf((3,))])
    with pytest.raises(AssertionError):
        check_grads(wrong_square, [leaf((3,))])


def test_check_grads_restores_inputs():
    a = Tensor(np.arange(3, dtype=np.float32), requires_grad=True)
    before = a.data
    check_grads(lambda t: t * 2.0, [a])
    assert a.data is before and a.dtype == np.float32 and a.grad is None


# ---- elementwise arithmetic with broadcasting ------------------------------
BINARY = {"add": T.add, "sub": T.sub, "mul": T.mul, "div": T.div}
BROADCAST = [((3, 4), (3, 4)), ((3, 4), (4,)), ((3, 4), (1, 4)), ((3, 4), (3, 1)), ((2, 3, 4), (3, 1)),
             ((4,), (2, 3, 4)), ((1, 4), (3, 1)), ((3, 4), ()), ((), (3, 4))]


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("sa, sb", BROADCAST)
def test_binary_broadcast_grad(name, sa, sb):
    a = leaf(sa, 1)
    b = leaf(sb, 2, 0.5, 2.0) if name == "div" else leaf(sb, 2)  # denominators away from 0
    check_grads(BINARY[name], [a, b])


@pytest.mark.parametrize("fn", [
    lambda a: a + 2.5, lambda a: 2.5 + a, lambda a: a - 2.5, lambda a: 2.5 - a,
    lambda a: a * -3.0, lambda a: -3.0 * a, lambda a: a / 4.0, lambda a: 4.0 / a,
    lambda a: a + np.arange(4.0), lambda a: np.arange(4.0) * a, lambda a: -a,
], ids=["t+s", "s+t", "t-s", "s-t", "t*s", "s*t", "t/s", "s/t", "t+arr", "arr*t", "neg"])
def test_scalar_operand_grad(fn):
    check_grads(fn, [leaf((3, 4), 0, 0.5, 2.0)])


@pytest.mark.parametrize("e", [2, 3, 0.5, -1, -1.5])
def test_pow_grad(e):
    check_grads(lambda a: a ** e, [leaf((3, 4), 0, 0.5, 2.0)])


def test_pow_zero_exponent_at_zero():
    a = Tensor(np.array([0.0, 2.0]), requires_grad=True)
    (a ** 0).sum().backward()
    np.testing.assert_array_equal(a.grad, [0.0, 0.0])  # as torch: no NaN at 0


def test_astype_grad_keeps_source_dtype():
    a = Tensor(np.array([1.0, 2.0]), requires_grad=True)  # float64
    b = a.astype(np.float32)
    assert b.dtype == np.float32
    (b * b).sum().backward()
    assert a.grad.dtype == np.float64
    np.testing.assert_array_equal(a.grad, [2.0, 4.0])


def test_exp_log_sqrt_grad():
    check_grads(T.exp, [leaf((3, 4))])
    check_grads(T.log, [leaf((3, 4), 0, 0.1, 3.0)])
    check_grads(lambda a: a.sqrt(), [leaf((3, 4), 0, 0.1, 3.0)])


def test_same_operand_twice():
    check_grads(lambda a: a * a + a / (a + 5.0), [leaf((3, 4), 0, 0.5, 2.0)])


# ---- reductions ------------------------------------------------------------
AXES = [None, 0, 1, -1, (0, 2), (-1, 0)]


@pytest.mark.parametrize("op", ["sum", "mean", "max"])
@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("keepdims", [False, True])
def test_reduction_grad(op, axis, keepdims):
    a = distinct((2, 3, 4)) if op == "max" else leaf((2, 3, 4))
    check_grads(lambda t: getattr(t, op)(axis=axis, keepdims=keepdims), [a])


@pytest.mark.parametrize("op", ["sum", "mean", "max"])
@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("keepdims", [False, True])
def test_reduction_forward_matches_numpy(op, axis, keepdims):
    a = distinct((2, 3, 4))
    out = getattr(a, op)(axis=axis, keepdims=keepdims)
    np.testing.assert_allclose(out.data, getattr(np, op)(a.data, axis=axis, keepdims=keepdims), rtol=1e-12)


def test_max_ties_share_gradient():
    a = Tensor(np.array([[1.0, 3.0, 3.0], [2.0, 0.0, -1.0]]), requires_grad=True)
    a.max(axis=1).sum().backward()
    np.testing.assert_array_equal(a.grad, [[0, 0.5, 0.5], [1, 0, 0]])


# ---- shapes -------------------------------------------------------------------
@pytest.mark.parametrize("fn", [
    lambda a: a.reshape(6, 4), lambda a: a.reshape((4, -1)), lambda a: a.view(24),
    lambda a: a.transpose(0, 2), lambda a: a.permute(1, 0, 2), lambda a: a.permute((2, 0, 1)),
    lambda a: a.permute(0, 2, 1), lambda a: a.T, lambda a: a.swapaxes(0, 2),
    lambda a: a.permute(-1, 0, 1).reshape(4, 6) * 2.0,
], ids=["reshape", "reshape-1", "view", "transpose", "permute3", "permute-tuple", "permute", "T",
        "swapaxes", "permute-reshape"])
def test_shape_grad(fn):
    check_grads(fn, [leaf((2, 3, 4))])


def test_shape_forward_matches_numpy():
    a = leaf((2, 3, 4))
    np.testing.assert_array_equal(a.T.data, a.data.T)
    np.testing.assert_array_equal(a.permute(2, 0, 1).data, a.data.transpose(2, 0, 1))
    np.testing.assert_array_equal(a.swapaxes(0, 1).data, a.data.swapaxes(0, 1))


# ---- indexing -----------------------------------------------------------------
INDEXES = {
    "int": 1, "neg-int": -1, "slice": slice(1, 3), "step": (slice(None), slice(None, None, 2)),
    "neg-step": (slice(None, None, -1), 1), "ellipsis": (Ellipsis, 2), "newaxis": (None, 0),
    "int-array-repeats": np.array([0, 2, 2, 1, 0]), "list-repeats": [3, 3, 0],
    "2d-int-array": np.array([[0, 1], [1, 1]]), "array-pairs": (np.array([0, 1, 1]), np.array([2, 2, 0])),
    "slice-and-array": (slice(1, None), np.array([3, 3, 1])), "bool-mask": "mask",
}


@pytest.mark.parametrize("name", INDEXES)
def test_getitem_grad(name):
    a = leaf((4, 5))
    index = a.data > 0.2 if name == "bool-mask" else INDEXES[name]
    check_grads(lambda t: t[index], [a])
    np.testing.assert_array_equal(a[index].data, a.data[index])


def test_getitem_repeats_accumulate_by_hand():
    a = Tensor(np.zeros(3), requires_grad=True)
    a[np.array([2, 0, 2, 2])].sum().backward()
    np.testing.assert_array_equal(a.grad, [1.0, 0.0, 3.0])


def test_getitem_with_tensor_index():
    a = leaf((5,))
    idx = Tensor(np.array([4, 4, 1]))
    check_grads(lambda t: t[idx], [a])


# ---- concatenate / split / stack ------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concatenate_grad(axis):
    shapes = [[(2, 3, 4), (1, 3, 4)], [(2, 3, 4), (2, 1, 4), (2, 2, 4)], [(2, 3, 1), (2, 3, 4)]][axis if axis >= 0 else 2]
    tensors = [leaf(s, i) for i, s in enumerate(shapes)]
    check_grads(lambda *ts: T.concatenate(ts, axis=axis), tensors)


def test_concatenate_with_constant():
    a = leaf((2, 3))
    check_grads(lambda t: T.concatenate([t, np.ones((1, 3))], axis=0), [a])


@pytest.mark.parametrize("sections, axis", [(2, -1), (3, 1), ([1, 3], 0), ([2, 0, 2], -1)])
def test_split_grad(sections, axis):
    a = leaf((4, 3, 4))
    check_grads(lambda t: t.split(sections, axis=axis), [a])  # all parts, each with its own upstream gradient
    check_grads(lambda t: T.split(t, sections, axis)[-1] * 2.0, [a])  # only one part used


def test_split_rejects_bad_sizes():
    a = leaf((4, 6))
    with pytest.raises(ValueError):
        a.split(4, axis=1)
    with pytest.raises(ValueError):
        a.split([2, 3], axis=1)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_stack_grad(axis):
    tensors = [leaf((3, 4), i) for i in range(3)]
    check_grads(lambda *ts: T.stack(ts, axis=axis), tensors)
    np.testing.assert_array_equal(T.stack(tensors, axis).data, np.stack([t.data for t in tensors], axis))


# ---- where ----------------------------------------------------------------------
@pytest.mark.parametrize("sc, sa, sb", [((3, 4), (3, 4), (3, 4)), ((3, 1), (3, 4), (4,)), ((4,), (3, 4), ())])
def test_where_grad(sc, sa, sb):
    cond = np.random.default_rng(5).random(sc) > 0.5
    check_grads(lambda a, b: T.where(cond, a, b), [leaf(sa, 1), leaf(sb, 2)])


def test_where_scalar_branch_and_tensor_cond():
    cond = Tensor(np.array([True, False, True]))
    check_grads(lambda a: T.where(cond, a, 0.0), [leaf((3,))])
    check_grads(lambda a: T.where(cond, -1.0, a), [leaf((3,))])


# ---- matmul -----------------------------------------------------------------
@pytest.mark.parametrize("sa, sb", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((3, 4), (2, 4, 5)),
                                    ((2, 1, 3, 4), (5, 4, 2)), ((2, 3, 4), (2, 4, 1))])
def test_matmul_grad(sa, sb):
    a, b = leaf(sa, 1), leaf(sb, 2)
    check_grads(T.matmul, [a, b])
    check_grads(lambda x, y: x @ y, [a, b])
    np.testing.assert_allclose((a @ b).data, a.data @ b.data)


def test_matmul_with_array_operand():
    w = np.random.default_rng(3).standard_normal((4, 2))
    check_grads(lambda a: a @ w, [leaf((3, 4))])
    check_grads(lambda a: w.T @ a, [leaf((4, 3))])


def test_matmul_rejects_vectors():
    with pytest.raises(ValueError):
        T.matmul(leaf((3,)), leaf((3, 2)))


def test_unbroadcast_by_hand():
    g = np.ones((2, 3, 4))
    np.testing.assert_array_equal(unbroadcast(g, (4,)), np.full(4, 6.0))
    np.testing.assert_array_equal(unbroadcast(g, (3, 1)), np.full((3, 1), 8.0))
    np.testing.assert_array_equal(unbroadcast(g, ()), 24.0)
    assert unbroadcast(g, (2, 3, 4)) is g


# ---- autograd mechanics ------------------------------------------------------
def test_grad_accumulates_across_backward_calls():
    a = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (a * 3.0).sum().backward()
    (a * a).sum().backward()
    np.testing.assert_array_equal(a.grad, [3.0 + 2.0, 3.0 + 4.0])
    a.zero_grad()
    assert a.grad is None


def test_tensor_used_twice_gets_sum():
    a = Tensor(np.array([2.0, -1.0]), requires_grad=True)
    b = a * 4.0
    (b + b * a).sum().backward()  # d/da (4a + 4a²) = 4 + 8a
    np.testing.assert_array_equal(a.grad, [20.0, -4.0])


def test_diamond_graph():
    a = Tensor(np.array(3.0), requires_grad=True)
    b, c = a * 2.0, a + 1.0
    d = b * c  # 2a(a+1) -> 4a + 2 = 14
    (d + b).backward()  # + 2
    assert a.grad == 16.0


def test_no_grad_records_nothing():
    a = Tensor(np.ones(3), requires_grad=True)
    with no_grad():
        b = (a * 2.0).sum()
        assert not sl.is_grad_enabled()
    assert sl.is_grad_enabled()
    assert not b.requires_grad and b.is_leaf and b._parents == ()
    with pytest.raises(RuntimeError):
        b.backward()
    assert a.grad is None


def test_no_grad_restores_on_error():
    with pytest.raises(KeyError):
        with no_grad():
            raise KeyError
    assert sl.is_grad_enabled()


def test_backward_non_scalar_needs_gradient():
    a = Tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(RuntimeError, match="non-scalar"):
        (a * 2.0).backward()
    (a * 2.0).backward(np.full((2, 3), 0.5))
    np.testing.assert_array_equal(a.grad, np.ones((2, 3)))


def test_constants_get_no_grad():
    a, c = Tensor(np.ones(3), requires_grad=True), Tensor(np.ones(3))
    (a * c).sum().backward()
    assert c.grad is None and not c.requires_grad


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_preserved(dtype):
    rng = np.random.default_rng(0)
    a = Tensor(rng.uniform(0.5, 2, (3, 4)).astype(dtype), requires_grad=True)
    b = Tensor(rng.uniform(0.5, 2, (4,)).astype(dtype), requires_grad=True)
    w = Tensor(rng.standard_normal((4, 2)).astype(dtype), requires_grad=True)
    h = ((a * b + 1.0 - b / 2.0) / b) ** 2 @ w  # (3, 2)
    parts = h.split([1, 2], axis=0)
    out = T.concatenate([T.stack([parts[0][0], parts[1][1]], 0).T, h.T], axis=1)  # (2, 5)
    y = (out.exp().log().max(axis=1).sum() + out.mean() + T.where(out.data > 0, out, 0.0).sum()) * 0.5
    assert y.dtype == dtype
    y.backward()
    for t in (a, b, w):
        assert t.grad.dtype == dtype and t.grad.shape == t.shape


def test_python_floats_default_to_float32():
    assert Tensor([1.0, 2.0]).dtype == np.float32
    assert Tensor(np.zeros(2)).dtype == np.float64  # arrays keep their dtype
    assert (Tensor(np.zeros(2, np.float32)) + 1.5).dtype == np.float32


def test_deep_chain_no_recursion_limit():
    a = Tensor(np.array(1.0), requires_grad=True)
    y = a
    for _ in range(max(5000, sys.getrecursionlimit() + 1000)):
        y = y + 1.0
    y.backward()
    assert a.grad == 1.0 and y.item() == 1.0 + max(5000, sys.getrecursionlimit() + 1000)


def test_backward_frees_graph():
    a = Tensor(np.ones(3), requires_grad=True)
    y = (a * 2.0).sum()
    y.backward()
    with pytest.raises(RuntimeError):
        y.backward()  # the graph is gone, as in PyTorch without retain_graph
    h = a * 2.0
    h.sum().backward()
    with pytest.raises(RuntimeError, match="already used"):
        (h * 3.0).sum().backward()  # not a silent wrong gradient through a freed node


def test_leaf_grad_is_own_copy():
    a = Tensor(np.ones(3), requires_grad=True)
    g = np.full(3, 2.0)
    a.backward(g)
    g[:] = 0
    np.testing.assert_array_equal(a.grad, [2.0, 2.0, 2.0])


def test_detach_and_numpy():
    a = Tensor(np.arange(3.0), requires_grad=True)
    d = (a * 2.0).detach()
    assert not d.requires_grad and d.is_leaf
    assert isinstance(a.numpy(), np.ndarray) and a.shape == (3,) and len(a) == 3 and a.ndim == 1


def test_grad_mode_is_per_thread():
    """Two threads leave no_grad() in the opposite order they entered: each
    restores only its own mode, so grad mode stays on everywhere afterwards."""
    import threading

    inside, first_left = threading.Barrier(2), threading.Event()
    seen = {}

    def worker(name, leave_first):
        with no_grad():
            inside.wait(timeout=5)
            if not leave_first:
                first_left.wait(timeout=5)
            seen[name] = sl.is_grad_enabled()
        if leave_first:
            first_left.set()
        seen[name + " after"] = sl.is_grad_enabled()

    threads = [threading.Thread(target=worker, args=(n, f)) for n, f in (("a", True), ("b", False))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert seen == {"a": False, "b": False, "a after": True, "b after": True}
    assert sl.is_grad_enabled()
    a = Tensor(np.ones(2), requires_grad=True)
    assert (a * 2.0).requires_grad


def test_no_grad_in_one_thread_leaves_another_training():
    """A thread held inside no_grad() (say, a web request) while another runs a
    sharded training step: the step's graph is recorded and its gradient is right."""
    import threading

    from scratchllm.models import GPT, GPTConfig
    from scratchllm.sharded import ShardedBackward

    model = GPT(GPTConfig(vocab_size=7, block_size=4, n_layer=1, n_head=1, n_embd=8), seed=0).astype(np.float64)
    x = np.array([[1, 2, 3, 4], [0, 6, 5, 1]])
    _, loss = model(x, x)
    loss.backward()
    want = {n: p.grad.copy() for n, p in model.named_parameters()}
    model.zero_grad()

    entered, release = threading.Event(), threading.Event()

    def hold_no_grad():
        with no_grad():
            entered.set()
            release.wait(timeout=10)

    holder = threading.Thread(target=hold_no_grad)
    holder.start()
    try:
        assert entered.wait(timeout=5)
        ShardedBackward(model, 2).step(x, x)
    finally:
        release.set()
        holder.join(timeout=10)
    for n, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, want[n], rtol=1e-10, atol=1e-13, err_msg=n)
