"""Data parallelism over MPI: several processes (ranks), on one machine or
many, train one model together.

Every rank holds the whole model and the same optimizer state. Each step,
every rank draws the same global batch, runs forward and backward on its
slice of the rows, and the slices' gradients are summed so that every rank
then takes the same optimizer step. ``mpirun -n 2 scratchllm train`` starts
two ranks; ``pip install "scratchllm[mpi]"`` brings ``mpi4py`` and MPICH
(with its ``mpirun``).

**The same numbers whatever the layout.** The batch is cut into
ranks × threads shards exactly as :class:`~scratchllm.sharded.ShardedBackward`
cuts it into that many threads in one process; each shard draws dropout from
the same generator seed, and counts with the same weight (its loss terms over
the batch's). The shard gradients are then added left to right in shard
order, the same additions one process makes: rank 0 adds its shards onto the
gradient so far and passes the sum to rank 1, which adds its own and passes it
on, and the last rank broadcasts the total (``ordered_sum``: a chain, cut in
chunks so that ranks work on different chunks at once). So 2 ranks × 1
thread equal 1 process × 2 threads bit for bit, whatever the timing; an MPI
Allreduce would leave the order of the additions to the library.

**Faults.** Ranks check at start that their settings, data and weights agree
(``check_same``). An error that every rank meets at once (such settings, a
NaN loss: :class:`SameOnAllRanks`) ends every rank with the one message of
rank 0; any other error on one rank aborts the job (``MPI_Abort``), and a rank
that dies is noticed by ``mpirun``, which ends the rest. Ranks that wait (for
rank 0 to evaluate or save) sleep between polls instead of spinning, so they
leave the cores to it.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import traceback
from contextlib import contextmanager

import numpy as np

from .errors import ScratchError
from .sharded import ShardedBackward, loss_terms

INSTALL = 'pip install "scratchllm[mpi]" (mpi4py and MPICH), then start with that install\'s mpirun'
# What launchers set in each process: MPICH and Intel MPI (PMI), Open MPI, MVAPICH.
RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
CHUNK = 1 << 16  # elements per message of the chain (256 KiB of float32): small enough that the chain
# fills quickly past many ranks, large enough that a message's latency is a fraction of its time (bench/RESULTS.md)
SPIN_S, POLL_S = 5e-3, 2e-4  # a wait tests without sleeping for 5 ms (a message due soon), then sleeps between tests


class SameOnAllRanks(ScratchError):
    """An error every rank meets at the same point (so no rank is left waiting):
    rank 0 reports it, the others leave quietly with the same status."""


def launched(environ=None) -> tuple[int, int]:
    """(rank, size) a launcher such as ``mpirun`` gave this process; (0, 1) when none did."""
    env = os.environ if environ is None else environ
    size = next((int(env[v]) for v in SIZE_VARS if env.get(v, "").isdigit()), 1)
    rank = next((int(env[v]) for v in RANK_VARS if env.get(v, "").isdigit()), 0)
    return rank, size


def _mpi(size: int):
    try:
        import mpi4py
    except ImportError:
        raise ScratchError(f"started by an MPI launcher with {size} ranks, but mpi4py is not installed: {INSTALL}") from None
    mpi4py.rc.thread_level = "funneled"  # only the main thread calls MPI; shard threads never do
    from mpi4py import MPI

    return MPI


class World:
    """The ranks of this run: one process alone (``comm`` None), or an MPI job."""

    def __init__(self, comm=None, MPI=None):
        self.comm, self.MPI = comm, MPI
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    # ---- waiting without spinning ----------------------------------------------------
    def _wait(self, *requests):
        requests, spin_until = list(requests), time.perf_counter() + SPIN_S
        while not self.MPI.Request.Testall(requests):
            time.sleep(0 if time.perf_counter() < spin_until else POLL_S)

    def barrier(self):
        if self.size > 1:
            self._wait(self.comm.Ibarrier())

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (e.g. one rank was interrupted)."""
        if self.size == 1:
            return bool(flag)
        out = np.zeros(1, np.int32)
        self._wait(self.comm.Iallreduce(np.array([int(bool(flag))], np.int32), out, op=self.MPI.MAX))
        return bool(out[0])

    def allgather(self, values: np.ndarray) -> np.ndarray:
        """(size, *values.shape): every rank's ``values``, in rank order."""
        values = np.ascontiguousarray(values)
        if self.size == 1:
            return values[None]
        out = np.empty((self.size,) + values.shape, values.dtype)
        self._wait(self.comm.Iallgather(values, out))
        return out

    @contextmanager
    def root_first(self):
        """``with world.root_first():`` rank 0 runs the block, then the others (files
        rank 0 writes in a shared folder are then there for them to reuse)."""
        if not self.is_root:
            self.barrier()
        yield
        if self.is_root:
            self.barrier()

    # ---- checks at start -------------------------------------------------------------
    def check_same(self, what: str, values: dict):
        """Refuse to go on (on every rank) unless every rank has the same ``values``
        (JSON-able values, or arrays, compared by their SHA-256)."""
        if self.size == 1:
            return
        mine = {k: _digest(v) if isinstance(v, np.ndarray) else v for k, v in values.items()}
        everyone = self.comm.allgather(json.dumps(mine, sort_keys=True, default=str))
        for rank, theirs in enumerate(everyone):
            if theirs != everyone[0]:
                a, b = json.loads(everyone[0]), json.loads(theirs)
                key = next(k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
                raise SameOnAllRanks(f"rank {rank} has other {what} than rank 0 ({key}: {_short(b.get(key))} "
                                     f"vs {_short(a.get(key))}); every rank must be started alike")

    # ---- the gradient sum ------------------------------------------------------------
    def ordered_sum(self, first, parts: list) -> np.ndarray:
        """``first + p0 + p1 + ...`` over every rank's ``parts`` in rank order, added left to
        right as one process would, on every rank. ``first`` (rank 0's counts) may be None:
        the sum then starts from the first part. Flat arrays of one length and dtype."""
        if self.size == 1:
            terms = ([first] if first is not None else []) + list(parts)
            acc = terms[0].copy()
            for p in terms[1:]:
                acc += p
            return acc
        like = first if first is not None else parts[0]
        acc = np.empty(like.size, like.dtype)
        chunks = [(lo, min(lo + CHUNK, acc.size)) for lo in range(0, acc.size, CHUNK)]
        prev, nxt = self.rank - 1, self.rank + 1
        recvs = [self.comm.Irecv(acc[lo:hi], source=prev, tag=i) for i, (lo, hi) in enumerate(chunks)] \
            if self.rank > 0 else []
        sends = []
        for i, (lo, hi) in enumerate(chunks):
            rest = parts
            if self.rank > 0:
                self._wait(recvs[i])
            elif first is not None:
                acc[lo:hi] = first[lo:hi]
            elif parts:
                acc[lo:hi], rest = parts[0][lo:hi], parts[1:]
            else:
                acc[lo:hi] = 0
            for p in rest:
                acc[lo:hi] += p[lo:hi]
            if nxt < self.size:
                sends.append(self.comm.Isend(acc[lo:hi], dest=nxt, tag=i))
        if sends:
            self._wait(*sends)
        self._wait(self.comm.Ibcast(acc, root=self.size - 1))
        return acc


def _digest(a: np.ndarray) -> str:
    return f"sha256:{hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]} {a.dtype} {a.shape}"


def _short(v) -> str:
    s = json.dumps(v, default=str)
    return s if len(s) <= 60 else s[:57] + "..."


_world: World | None = None


def world() -> World:
    """This process's world: an MPI job when a launcher started several ranks, else one process."""
    global _world
    if _world is None:
        _, size = launched()
        if size == 1:
            _world = World()
        else:
            MPI = _mpi(size)
            comm = MPI.COMM_WORLD
            if comm.Get_size() != size:
                raise ScratchError(f"the launcher started {size} ranks but MPI sees {comm.Get_size()}: this mpirun "
                                   f"belongs to another MPI than mpi4py's; {INSTALL}")
            _world = World(comm, MPI)
    return _world


@contextmanager
def guard(verb: str):
    """Around a command's work: in an MPI job, errors end every rank.

    :class:`SameOnAllRanks`: rank 0 reports it (the caller prints it), the others
    leave with status 2. Any other error: this rank prints it in one line (a
    traceback too if it is not a :class:`ScratchError`) and aborts the job, so
    no rank is left waiting for it."""
    rank, size = launched()
    if size == 1:
        yield
        return
    try:
        world()
        yield
    except SameOnAllRanks:
        if rank == 0:
            raise
        raise SystemExit(2)
    except ScratchError as e:
        if _world is None:  # mpi4py missing: every rank knows it; rank 0 says so
            if rank == 0:
                raise
            raise SystemExit(2)
        _abort(f"scratchllm {verb}: error on rank {rank}: {e}", 2)
    except KeyboardInterrupt:
        _abort(f"scratchllm {verb}: interrupted on rank {rank}", 130)
    except Exception as e:  # a bug: show where, then stop everyone
        traceback.print_exc()
        sys.stderr.flush()
        _abort(f"scratchllm {verb}: error on rank {rank}: {type(e).__name__}: {e}", 1)


def _abort(message: str, code: int):
    print(message, file=sys.stderr, flush=True)
    time.sleep(0.2)  # the launcher forwards what was printed before the abort tears the job down
    _world.comm.Abort(code)


# ---- the step ----------------------------------------------------------------------------
class DistributedBackward(ShardedBackward):
    """:class:`ShardedBackward` over the ranks of a :class:`World`: the batch is cut into
    ``world.size × threads`` shards, this rank runs its ``threads`` of them (in threads),
    and the gradients of all are summed in shard order on every rank.

    ``step(x, y, scale)`` gives on every rank what ``ShardedBackward(model,
    world.size * threads).step(x, y, scale)`` gives in one process, bit for bit.
    """

    def __init__(self, model, threads: int, world: World, ignore_index: int = -100):
        super().__init__(model, threads, ignore_index)
        from threadpoolctl import ThreadpoolController

        self.world = world
        self._blas = self._blas or ThreadpoolController()
        self._flat = [(p, p.data.size) for p in self.params]

    def step(self, x, y, scale: float = 1.0) -> float:
        B, w = len(x), self.world
        n = min(self.shards * w.size, B)
        cuts = [B * i // n for i in range(n + 1)]  # shard i holds rows cuts[i]:cuts[i+1]
        terms = [loss_terms(y[a:b], self.ignore_index) for a, b in zip(cuts, cuts[1:])]
        total = sum(terms)
        if n == 1 or total == 0:
            # What one process does then, every rank does alike: same gradient, no message.
            _, loss = self.model(x, y)
            (loss * scale).backward()
            return loss.item()
        rngs = self._shard_rngs(n)  # every rank draws all n seeds, so the generators stay in step
        mine = range(min(w.rank * self.shards, n), min((w.rank + 1) * self.shards, n))
        jobs = [(x[cuts[i]:cuts[i + 1]], y[cuts[i]:cuts[i + 1]], scale * terms[i] / total, rngs[i])
                for i in mine if terms[i]]
        with self._blas.limit(limits=1, user_api="blas"):  # as each shard runs in one process
            futures = [self._pool.submit(self._shard, *job) for job in jobs[1:]] if self._pool else []
            results = ([self._shard(*jobs[0])] if jobs else []) + [f.result() for f in futures]
        # Per rank: its shards' losses (in its first slots), then which parameters got a gradient.
        meta = np.zeros(self.shards + len(self._flat))
        meta[:len(results)] = [loss for loss, _ in results]
        meta[self.shards:] = [any(id(p) in g for _, g in results) or p.grad is not None for p, _ in self._flat]
        meta = w.allgather(meta)
        held = [sum(1 for i in range(r * self.shards, min((r + 1) * self.shards, n)) if terms[i]) for r in range(w.size)]
        losses = [v for r in range(w.size) for v in meta[r, :held[r]]]  # in shard order
        has_grad = meta[:, self.shards:].any(axis=0)
        first = self._flatten(lambda p: p.grad) if any(p.grad is not None for p, _ in self._flat) else None
        total_grad = w.ordered_sum(first, [self._flatten(lambda p, g=g: g.get(id(p))) for _, g in results])
        self._unflatten(total_grad, has_grad)
        return float(sum(loss * k for loss, k in zip(losses, [k for k in terms if k])) / total)

    def _flatten(self, grad_of) -> np.ndarray:
        """One flat array of the parameters' gradients, in parameter order; zeros where there is none."""
        out = np.zeros(sum(size for _, size in self._flat), self.params[0].dtype)
        at = 0
        for p, size in self._flat:
            g = grad_of(p)
            if g is not None:
                out[at:at + size] = g.ravel()
            at += size
        return out

    def _unflatten(self, flat: np.ndarray, has_grad):
        at = 0
        for (p, size), has in zip(self._flat, has_grad):
            if has:
                p.grad = flat[at:at + size].reshape(p.shape)
            at += size
