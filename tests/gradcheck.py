"""Finite-difference gradient checks, shared by the op, module and model tests.

``check_grads(fn, inputs)`` runs ``fn(*inputs)`` once with the engine and
back-propagates a random upstream gradient ``w`` (so every element of a
non-scalar output counts), then estimates d(Σ w·fn)/d(input) for every input
tensor that requires a gradient by central differences in float64, and
compares the two.

Inputs that are Tensors are switched to float64 *in place* for the check (so
parameters a closure reads, e.g. a module's weights, are perturbed too) and
restored afterwards. Everything else (integer ids, targets, masks) is passed
through unchanged. ``fn`` must be deterministic: build any random generator
inside it from a fixed seed.
"""
from __future__ import annotations

import numpy as np

from scratchllm.tensor import Tensor, no_grad


def _outputs(result):
    """The output tensors of ``fn``: one Tensor or a list/tuple of them."""
    return list(result) if isinstance(result, (list, tuple)) else [result]


def _weighted_sum(outputs, weights) -> float:
    return float(sum(np.sum(o.data.astype(np.float64) * w) for o, w in zip(outputs, weights)))


def check_grads(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, seed=0):
    """Assert that the engine's gradients of ``fn`` match central differences.

    Returns ``[(analytic, numeric), ...]`` for the inputs that were checked.
    An input whose gradient the engine leaves as ``None`` (no path to the
    output) is compared as zeros.
    """
    inputs = list(inputs)
    tensors = [t for t in inputs if isinstance(t, Tensor)]
    checked = [t for t in tensors if t.requires_grad]
    if not checked:
        raise ValueError("check_grads: no input requires a gradient")
    saved = [(t, t.data, t.grad) for t in tensors]
    try:
        for t in tensors:
            if t.data.dtype.kind == "f":
                t.data = t.data.astype(np.float64)  # a copy: the caller's array is left untouched
            t.grad = None
        outputs = _outputs(fn(*inputs))
        rng = np.random.default_rng(seed)
        weights = [rng.standard_normal(o.shape) for o in outputs]
        for o, w in zip(outputs, weights):
            assert o.data.dtype == np.float64, f"output dtype {o.data.dtype}: the op did not keep float64"
            if o.requires_grad:
                o.backward(w)
        results = []
        for i, t in enumerate(checked):
            analytic = np.zeros_like(t.data) if t.grad is None else np.array(t.grad, dtype=np.float64)
            assert analytic.shape == t.shape, f"input {i}: grad shape {analytic.shape} != {t.shape}"
            numeric = np.zeros_like(t.data)
            flat, nflat = t.data.reshape(-1), numeric.reshape(-1)  # views: perturbing flat perturbs t
            with no_grad():
                for j in range(flat.size):
                    orig = flat[j]
                    flat[j] = orig + eps
                    plus = _weighted_sum(_outputs(fn(*inputs)), weights)
                    flat[j] = orig - eps
                    minus = _weighted_sum(_outputs(fn(*inputs)), weights)
                    flat[j] = orig
                    nflat[j] = (plus - minus) / (2 * eps)
            np.testing.assert_allclose(
                analytic, numeric, rtol=rtol, atol=atol, err_msg=f"gradient of input {i} (shape {t.shape})"
            )
            results.append((analytic, numeric))
        return results
    finally:
        for t, data, grad in saved:
            t.data, t.grad = data, grad
