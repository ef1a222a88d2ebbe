"""Data parallelism on one machine: a batch split into row shards whose forward
and backward passes run in parallel threads.

Why threads pay here: NumPy releases the GIL inside its ufuncs and BLAS calls,
so two shards run side by side, every op of one beside the other's, where
BLAS's own threads share only the matrix products and leave softmax, the
small per-head products and every elementwise pass to one core. BLAS is held
to one thread meanwhile, so its threads and the shards' do not fight for the
cores. Measured (bench/RESULTS.md): 15% faster than BLAS on two threads for
the benchmark GPT on a 2-core machine.

The loss is a mean over the targets that are not ``ignore_index``, so shard i,
with mean m_i over n_i such targets (``loss_terms``), counts with weight
n_i / Σ n: the batch's mean is Σ m_i·n_i / Σ n whatever the rows hold.

The result does not depend on thread timing: each shard's gradients go to a
store of its own (``Tensor.backward(leaf_grads=...)``) and are summed in shard
order, and with dropout each shard draws from a generator of its own, seeded
from the model's (or, for Dropout built without one, from the default
generator) before any shard starts. The number of shards changes results only
by float rounding.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

from threadpoolctl import ThreadpoolController

from .backend import xp
from .nn import Dropout, default_rng, dropout_generator


def loss_terms(targets, ignore_index: int = -100) -> int:
    """How many terms a slice of a batch adds to the batch's mean loss: its
    targets that are not ``ignore_index`` (the ones cross-entropy averages over).

    Slices with means m_i over n_i terms make the batch mean Σ m_i·n_i / Σ n_i,
    so slice i's gradient counts with weight n_i / Σ n_i — for threads sharing
    a batch here, and the same for processes that share one.
    """
    return int((xp.asarray(targets) != ignore_index).sum())


class ShardedBackward:
    """``loss.backward()`` for ``model(x, y)`` with the batch split over ``shards`` threads.

    ``step(x, y, scale)`` returns the batch's mean loss (a float) and adds
    ``scale`` × its gradient to every parameter's ``.grad`` — the same as
    ``(model(x, y)[1] * scale).backward()`` up to float rounding. With one
    shard it is exactly that. ``ignore_index``: the target value the model's
    loss leaves out of its mean (cross_entropy's default).
    """

    def __init__(self, model, shards: int = 2, ignore_index: int = -100):
        self.model, self.shards, self.ignore_index = model, max(1, int(shards)), ignore_index
        self.params = model.parameters()
        self._pool = ThreadPoolExecutor(self.shards - 1, thread_name_prefix="shard") if self.shards > 1 else None
        self._blas = ThreadpoolController() if self.shards > 1 else None
        self._dropouts = [m for _, m in model.named_modules() if isinstance(m, Dropout) and m.p > 0]

    def step(self, x, y, scale: float = 1.0) -> float:
        B = len(x)
        n = min(self.shards, B)
        cuts = [B * i // n for i in range(n + 1)]  # shard i holds rows cuts[i]:cuts[i+1]
        terms = [loss_terms(y[a:b], self.ignore_index) for a, b in zip(cuts, cuts[1:])]
        total = sum(terms)
        if n == 1 or total == 0:  # nothing to split (no terms: the model's own NaN mean, zero gradient)
            _, loss = self.model(x, y)
            (loss * scale).backward()
            return loss.item()
        rngs = self._shard_rngs(n)
        # A shard with no terms adds nothing (and its own mean, 0/0, would be NaN).
        jobs = [(x[a:b], y[a:b], scale * k / total, rng)
                for a, b, k, rng in zip(cuts, cuts[1:], terms, rngs) if k]
        with self._blas.limit(limits=1, user_api="blas"):
            futures = [self._pool.submit(self._shard, *job) for job in jobs[1:]]
            results = [self._shard(*jobs[0])] + [f.result() for f in futures]
        self._add_grads([grads for _, grads in results])
        return sum(loss * k for (loss, _), k in zip(results, [k for k in terms if k])) / total

    def _shard_rngs(self, n: int) -> list:
        """One generator per shard, seeded from the model's dropout generator (advancing it), or
        from the default generator when its Dropout has none; Nones without dropout."""
        if not self._dropouts or not self.model.training:
            return [None] * n
        source = next((m.rng for m in self._dropouts if m.rng is not None), None) or default_rng()
        return [xp.random.default_rng(int(s)) for s in source.integers(0, 2**63 - 1, size=n)]

    def _shard(self, x, y, weight: float, rng):
        grads = {}
        with dropout_generator(rng) if rng is not None else nullcontext():
            _, loss = self.model(x, y)
            (loss * weight).backward(leaf_grads=grads)
        return loss.item(), grads

    def _add_grads(self, stores: list):
        for p in self.params:  # in shard order: the sum does not depend on which thread finished first
            for grads in stores:
                g = grads.get(id(p))
                if g is None:
                    continue
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad += g
