"""PyTorch as a reference: run the same computation in both and compare.

Tests import this only through ``pytest.importorskip("torch")`` so the core
suite still runs where torch is not installed.
"""
from __future__ import annotations

import numpy as np
import torch

import scratchllm as sl

torch.set_num_threads(2)

RTOL, ATOL = 1e-5, 1e-6  # float32 parity bound for forward values and gradients


def pair(array, requires_grad=True):
    """The same float array as (our Tensor, torch tensor), both with their own copy."""
    array = np.asarray(array)
    ours = sl.Tensor(array.copy(), requires_grad=requires_grad)
    ref = torch.tensor(array.copy(), requires_grad=requires_grad)
    return ours, ref


def assert_close(ours, ref, rtol=RTOL, atol=ATOL, err_msg=""):
    """Compare an array / Tensor of ours with a torch tensor (or array)."""
    ours = ours.data if isinstance(ours, sl.Tensor) else np.asarray(ours)
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert ours.shape == ref.shape, f"shape {ours.shape} != {ref.shape} {err_msg}"
    assert ours.dtype == ref.dtype, f"dtype {ours.dtype} != {ref.dtype} {err_msg}"
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=atol, err_msg=err_msg)


def compare(ours_fn, ref_fn, arrays, seed=0, rtol=RTOL, atol=ATOL):
    """Run ``ours_fn`` on Tensors and ``ref_fn`` on torch tensors made from the
    same float32 ``arrays``; compare outputs and, after back-propagating the same
    random upstream gradient, the gradient of every input."""
    pairs = [pair(a) for a in arrays]
    out = ours_fn(*[p[0] for p in pairs])
    ref = ref_fn(*[p[1] for p in pairs])
    assert_close(out, ref, rtol, atol, "forward")
    w = np.random.default_rng(seed).standard_normal(ref.shape).astype(np.float32)
    out.backward(w)
    ref.backward(torch.from_numpy(w))
    for i, (o, r) in enumerate(pairs):
        assert_close(o.grad, r.grad, rtol, atol, f"gradient of input {i}")
