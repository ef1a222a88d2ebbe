"""Data parallelism on one machine: a batch split into row shards whose forward
and backward passes run in parallel threads.

Why threads pay here: NumPy releases the GIL inside its ufuncs and BLAS calls,
so two shards run side by side, every op of one beside the other's, where
BLAS's own threads share only the matrix products and leave softmax, the
small per-head products and every elementwise pass to one core. BLAS is held
to one thread meanwhile, so its threads and the shards' do not fight for the
cores. Measured (bench/RESULTS.md): 15% faster than BLAS on two threads for
the benchmark GPT on a 2-core machine.

The result does not depend on thread timing: each shard's gradients go to a
store of its own (``Tensor.backward(leaf_grads=...)``) and are summed in shard
order, and with dropout each shard draws from a generator seeded from the
model's one. The number of shards changes results only by float rounding.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

from threadpoolctl import ThreadpoolController

from .backend import xp
from .nn import Dropout, dropout_generator


class ShardedBackward:
    """``loss.backward()`` for ``model(x, y)`` with the batch split over ``shards`` threads.

    ``step(x, y, scale)`` returns the batch's mean loss (a float) and adds
    ``scale`` × its gradient to every parameter's ``.grad`` — the same as
    ``(model(x, y)[1] * scale).backward()`` up to float rounding. With one
    shard it is exactly that.
    """

    def __init__(self, model, shards: int = 2):
        self.model, self.shards = model, max(1, int(shards))
        self.params = model.parameters()
        self._pool = ThreadPoolExecutor(self.shards - 1, thread_name_prefix="shard") if self.shards > 1 else None
        self._blas = ThreadpoolController() if self.shards > 1 else None
        self._dropout = next((m.rng for _, m in model.named_modules() if isinstance(m, Dropout) and m.p > 0), None)

    def step(self, x, y, scale: float = 1.0) -> float:
        B = len(x)
        n = min(self.shards, B)
        if n == 1:
            _, loss = self.model(x, y)
            (loss * scale).backward()
            return loss.item()
        cuts = [B * i // n for i in range(n + 1)]  # shard i holds rows cuts[i]:cuts[i+1]
        rngs = self._shard_rngs(n)
        jobs = [(x[a:b], y[a:b], scale * (b - a) / B, rng) for a, b, rng in zip(cuts, cuts[1:], rngs)]
        with self._blas.limit(limits=1, user_api="blas"):
            futures = [self._pool.submit(self._shard, *job) for job in jobs[1:]]
            results = [self._shard(*jobs[0])] + [f.result() for f in futures]
        self._add_grads([grads for _, grads in results])
        return sum(loss * (b - a) for (loss, _), a, b in zip(results, cuts, cuts[1:])) / B

    def _shard_rngs(self, n: int) -> list:
        """One generator per shard, seeded from the model's dropout generator (advancing it), or Nones."""
        if self._dropout is None or not self.model.training:
            return [None] * n
        return [xp.random.default_rng(int(s)) for s in self._dropout.integers(0, 2**63 - 1, size=n)]

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
