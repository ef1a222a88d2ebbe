"""Tensor methods that share a name with PyTorch's behave like PyTorch's:
forward values and gradients against torch, in float64. The same expression
runs on both (``lambda x: x.transpose(0, 2)``)."""
import numpy as np
import pytest

from scratchllm.tensor import Tensor

SHAPE = (2, 3, 4, 5)


def check_parity(fn, shape=SHAPE, pick=lambda out: out):
    """fn on a Tensor and on a torch tensor holding the same numbers: equal
    outputs, and equal gradients for the same upstream gradient."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    ours, theirs = Tensor(x.copy(), requires_grad=True), torch.tensor(x, requires_grad=True)
    out, ref = pick(fn(ours)), pick(fn(theirs))
    assert out.shape == tuple(ref.shape)
    np.testing.assert_allclose(out.data, ref.detach().numpy(), rtol=1e-13, atol=1e-15)
    g = rng.standard_normal(out.shape)
    out.backward(g)
    ref.backward(torch.tensor(g))
    np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("dims", [(0, 1), (1, 2), (0, 3), (-1, -2), (2, 2), (-4, 1)])
def test_transpose_swaps_two_dims(dims):
    check_parity(lambda x: x.transpose(*dims))


def test_transpose_then_matmul():
    check_parity(lambda x: x @ x.transpose(-2, -1), shape=(2, 3, 4))


@pytest.mark.parametrize("dims", [(0, 2, 1, 3), (3, 2, 1, 0), (-1, 0, -2, 1)])
def test_permute_with_dims_and_a_tuple(dims):
    check_parity(lambda x: x.permute(*dims))
    check_parity(lambda x: x.permute(dims))


def test_permute_rejects_what_is_not_a_permutation():
    x = Tensor(np.zeros((2, 3)))
    with pytest.raises(ValueError):
        x.permute(0, 0)
    with pytest.raises(ValueError):
        x.permute(0)


@pytest.mark.parametrize("op", ["sum", "mean"])
@pytest.mark.parametrize("dim", [None, 0, -1, 2, (1, 3), (0, -1)])
@pytest.mark.parametrize("keepdim", [False, True])
def test_sum_and_mean_take_dim_and_keepdim(op, dim, keepdim):
    if dim is None:  # torch's sum/mean have no keepdim without a dim
        check_parity(lambda x: getattr(x, op)())
    else:
        check_parity(lambda x: getattr(x, op)(dim=dim, keepdim=keepdim))
        check_parity(lambda x: getattr(x, op)(dim, keepdim))


@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("keepdim", [False, True])
def test_max_over_a_dim_gives_values_and_indices(dim, keepdim):
    torch = pytest.importorskip("torch")
    check_parity(lambda x: x.max(dim=dim, keepdim=keepdim), pick=lambda r: r.values)
    check_parity(lambda x: x.max(dim, keepdim)[0])
    x = np.random.default_rng(1).standard_normal(SHAPE)
    got = Tensor(x).max(dim=dim, keepdim=keepdim).indices
    np.testing.assert_array_equal(got.data, torch.tensor(x).max(dim=dim, keepdim=keepdim).indices.numpy())


def test_max_of_all():
    check_parity(lambda x: x.max())


def test_max_over_a_dim_gives_a_tie_gradient_to_the_index_it_returns():
    torch = pytest.importorskip("torch")
    x = np.array([[1.0, 3.0, 3.0], [2.0, 0.0, 2.0]])
    ours, theirs = Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    ours.max(dim=1).values.sum().backward()
    theirs.max(dim=1).values.sum().backward()
    np.testing.assert_array_equal(ours.grad, theirs.grad.numpy())


@pytest.mark.parametrize("shape", [(6, 20), (-1,), (2, -1, 5), (-1, 4, 5), (120,), (4, 30)])
@pytest.mark.parametrize("method", ["view", "reshape"])
def test_view_and_reshape_take_minus_one_and_both_spellings(shape, method):
    check_parity(lambda x: getattr(x, method)(*shape))
    check_parity(lambda x: getattr(x, method)(shape))


def test_numpy_spellings_stay():
    x = np.random.default_rng(2).standard_normal((2, 3, 4))
    a = Tensor(x)
    np.testing.assert_allclose(a.sum(axis=(0, 2), keepdims=True).data, x.sum(axis=(0, 2), keepdims=True))
    np.testing.assert_allclose(a.mean(axis=1).data, x.mean(axis=1))
    np.testing.assert_allclose(a.max(axis=-1, keepdims=True).data, x.max(axis=-1, keepdims=True))
    np.testing.assert_array_equal(a.swapaxes(0, 2).data, x.swapaxes(0, 2))
    np.testing.assert_array_equal(a.T.data, x.T)
    with pytest.raises(TypeError):
        a.sum(dim=0, axis=0)
