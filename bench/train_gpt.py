"""GPT training speed and quality: scratchllm against a PyTorch GPT of the same
architecture, same config, same data, same process.

Config (the project's benchmark): tinyshakespeare char-level, block 64,
batch 12, 4 layers, 4 heads, width 128, dropout 0, AdamW (β₂ 0.99, weight
decay 0.1 on matrices), lr 1e-3, warmup 100, cosine to 1e-4 over 2000 steps,
gradient clipping 1.0.

    python bench/train_gpt.py                 # speed: interleaved steps, ms/step and ratio
    python bench/train_gpt.py --quality       # + 2000 steps of ours, val loss curve
    python bench/train_gpt.py --alone 3       # + each alone in 3 fresh processes: ms/step, peak memory
    python bench/train_gpt.py --profile       # + where a step of ours goes
    python bench/train_gpt.py --layouts 3     # + 2 MPI ranks × 1 thread, 1 process × 2 threads, PyTorch,
                                              #   each alone in fresh processes, 3 times (needs mpirun)
    python bench/train_gpt.py --model-scaling # + one rank's step and gradient bytes, default and medium model
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from common import header, table, use_torch_threads  # noqa: E402

from scratchllm.backend import retain_freed_memory  # noqa: E402
from scratchllm.data import dataset_file, get_batch  # noqa: E402
from scratchllm.distributed import DistributedBackward, world  # noqa: E402
from scratchllm.optim import CosineWithWarmup, clip_grad_norm  # noqa: E402
from scratchllm.sharded import ShardedBackward  # noqa: E402
from scratchllm.tokenizers import CharTokenizer  # noqa: E402
from scratchllm.train import TrainConfig, build_model, build_optimizer, estimate_loss  # noqa: E402

# As the scratchllm command does (SCRATCHLLM_MALLOC=default, set for PyTorch's runs, leaves malloc alone).
MALLOC_TUNED = retain_freed_memory()

CFG = TrainConfig(data="tinyshakespeare", n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12,
                  max_iters=2000, lr=1e-3, min_lr=1e-4, warmup_iters=100, weight_decay=0.1, beta2=0.99,
                  grad_clip=1.0, eval_iters=20, seed=1337)


def shared_data_dir():
    """../shared/data beside the repository, unless SCRATCHLLM_DATA_DIR says otherwise."""
    d = HERE.parent.parent / "shared" / "data"
    return d if d.is_dir() and not os.environ.get("SCRATCHLLM_DATA_DIR") else None


def load_data():
    text = dataset_file("tinyshakespeare", "input.txt", data_dir=shared_data_dir()).read_text()
    tok = CharTokenizer.from_text(text)
    ids = np.asarray(tok.encode(text), dtype=np.uint16)
    cut = int(0.9 * len(ids))
    return tok, ids[:cut], ids[cut:]


class Ours:
    def __init__(self, vocab, train_ids, threads=CFG.threads):
        self.model = build_model(CFG, vocab)
        self.opt = build_optimizer(self.model, CFG)
        w = world()  # under mpirun: each rank its slice of the batch, the gradients summed over MPI
        self.backward = ShardedBackward(self.model, threads) if w.size == 1 \
            else DistributedBackward(self.model, threads, w)
        self.sched = CosineWithWarmup(CFG.lr, CFG.min_lr, CFG.warmup_iters, CFG.max_iters)
        self.rng = np.random.default_rng(0)
        self.train_ids, self.it = train_ids, 0

    def step(self):
        x, y = get_batch(self.train_ids, CFG.batch_size, CFG.block_size, self.rng)
        self.opt.lr = self.sched(self.it)
        self.model.zero_grad()
        loss = self.backward.step(x, y)
        clip_grad_norm(self.model.parameters(), CFG.grad_clip)
        self.opt.step()
        self.it += 1
        return loss


class Reference:
    def __init__(self, ours_model, train_ids):
        import torch
        import torch_gpt

        torch_gpt.USE_SDPA = True  # torch's fastest eager attention
        self.torch = torch
        self.model = torch_gpt.TorchGPT.from_scratch(ours_model)
        params = list(self.model.parameters())
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": CFG.weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        self.opt = torch.optim.AdamW(groups, lr=CFG.lr, betas=(CFG.beta1, CFG.beta2))
        self.sched = CosineWithWarmup(CFG.lr, CFG.min_lr, CFG.warmup_iters, CFG.max_iters)
        self.rng = np.random.default_rng(0)
        self.train_ids, self.it = train_ids, 0

    def step(self):
        torch = self.torch
        x, y = get_batch(self.train_ids, CFG.batch_size, CFG.block_size, self.rng)
        for g in self.opt.param_groups:
            g["lr"] = self.sched(self.it)
        self.opt.zero_grad(set_to_none=True)
        _, loss = self.model(torch.from_numpy(x), torch.from_numpy(y))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), CFG.grad_clip)
        self.opt.step()
        self.it += 1
        return loss.item()


def speed(rounds: int, steps_per_round: int):
    """Interleaved rounds of ours (batch split over 2 threads, the default; and
    1 thread with BLAS on both cores) and PyTorch's, all from the same weights."""
    torch = use_torch_threads(2)
    tok, train_ids, _ = load_data()
    runners = {"scratchllm (--threads 2, the default)": Ours(tok.vocab_size, train_ids, threads=2),
               "scratchllm (--threads 1, BLAS on 2 threads)": Ours(tok.vocab_size, train_ids, threads=1)}
    runners["pytorch"] = Reference(next(iter(runners.values())).model, train_ids)
    first = {}
    for name, runner in runners.items():
        t0 = time.perf_counter()
        runner.step()
        first[name] = time.perf_counter() - t0
    for _ in range(5):
        for runner in runners.values():
            runner.step()
    times = {name: [] for name in runners}
    for _ in range(rounds):  # interleaved: a noisy neighbour hits all alike
        for name, runner in runners.items():
            time.sleep(0.25)  # the previous runner's idle BLAS/OpenMP threads stop spinning first
            t0 = time.perf_counter()
            for _ in range(steps_per_round):
                runner.step()
            times[name].append((time.perf_counter() - t0) / steps_per_round)
    med = {k: float(np.median(v)) for k, v in times.items()}
    tokens = CFG.batch_size * CFG.block_size
    print(header(torch))
    print(f"malloc: {'glibc thresholds raised (scratchllm.backend), for the whole process' if MALLOC_TUNED else 'default'}")
    print(f"\nGPT training step, {next(iter(runners.values())).model.num_parameters():,} parameters, "
          f"batch {CFG.batch_size} × block {CFG.block_size}; median of {rounds} interleaved rounds of {steps_per_round} steps\n")
    rows = [(name, f"{med[name] * 1e3:.1f}", f"{tokens / med[name]:,.0f}", f"{med['pytorch'] / med[name]:.2f}",
             f"{first[name]:.2f}") for name in runners]
    print(table(rows, ["", "ms/step", "tokens/s", "speed vs pytorch", "first step (s)"]))
    default = next(iter(runners))
    print(f"\nspeed ratio scratchllm / pytorch (tokens/s): {med['pytorch'] / med[default]:.2f}")
    return med


def quality():
    tok, train_ids, val_ids = load_data()
    ours = Ours(tok.vocab_size, train_ids)
    curve = []
    t0 = time.perf_counter()
    for it in range(CFG.max_iters + 1):
        if it % 250 == 0:
            losses = estimate_loss(ours.model, {"val": val_ids}, CFG, it)
            curve.append((it, losses["val"]))
            print(f"step {it}: val loss {losses['val']:.4f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
        if it < CFG.max_iters:
            ours.step()
    print("\n" + table([(str(s), f"{v:.3f}") for s, v in curve], ["step", "val loss (ours)"]))
    return curve


def _vm(field: str) -> float:
    """A /proc/self/status memory figure in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


ALONE = {  # name: (runner, environment); PyTorch's child keeps glibc's default malloc, as a PyTorch user has it
    "scratchllm (--threads 2)": ("ours2", {}),
    "scratchllm (--threads 1)": ("ours1", {}),
    "scratchllm (--threads 2), malloc left alone": ("ours2", {"SCRATCHLLM_MALLOC": "default"}),
    "pytorch": ("pytorch", {"SCRATCHLLM_MALLOC": "default"}),
}


def alone_child(which: str, steps: int = 60):
    """One implementation alone in this process: peak resident memory over 20
    steps (the high-water mark reset after set-up, so the growth is the steps'
    own), then the median ms/step of rounds of 10 steps."""
    tok, train_ids, _ = load_data()
    if which == "pytorch":
        use_torch_threads(2)
        runner = Reference(build_model(CFG, tok.vocab_size), train_ids)
    else:
        runner = Ours(tok.vocab_size, train_ids, threads=int(which[-1]))
    if world().size > 1:  # ranks: the median step of rank 0 (the ranks wait for one another each step)
        return ranks_child(runner, steps)
    runner.step()
    before = _vm("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    for _ in range(20):
        runner.step()
    peak = _vm("VmHWM")
    rounds = timed_rounds(runner, steps)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    print(json.dumps({"peak_mib": peak, "step_mib": peak - before, "ms": 1e3 * float(np.median(rounds)),
                      "faults": faults}))


def timed_rounds(runner, steps: int) -> list:
    """Seconds per step in each round of 10 steps."""
    rounds = []
    for _ in range(steps // 10):
        t0 = time.perf_counter()
        for _ in range(10):
            runner.step()
        rounds.append((time.perf_counter() - t0) / 10)
    return rounds


def ranks_child(runner, steps: int):
    for _ in range(5):
        runner.step()
    w, sums = world(), []
    ordered_sum = w.ordered_sum

    def timed_sum(*args):
        t0 = time.perf_counter()
        out = ordered_sum(*args)
        sums.append(time.perf_counter() - t0)
        return out

    w.ordered_sum = timed_sum
    rounds = timed_rounds(runner, steps)
    if world().is_root:
        print(json.dumps({"ms": 1e3 * float(np.median(rounds)), "sum_ms": 1e3 * float(np.median(sums))}), flush=True)


LAYOUTS = {  # name: command line of the child; each child times one layout alone
    "2 ranks × 1 thread (mpirun -n 2)": ["mpirun", "-n", "2", sys.executable, __file__, "--alone-child", "ours1"],
    "1 process × 2 threads (--threads 2)": [sys.executable, __file__, "--alone-child", "ours2"],
    "pytorch (2 threads)": [sys.executable, __file__, "--alone-child", "pytorch"],
}


def layouts(repeats: int):
    """The batch split over MPI ranks or over threads, and PyTorch: each alone in fresh processes,
    the three one after another, ``repeats`` times (so a noisy neighbour spreads over all)."""
    import shutil

    mpirun = Path(sys.executable).parent / "mpirun"
    mpirun = str(mpirun) if mpirun.exists() else shutil.which("mpirun")
    if mpirun is None:
        print("\nlayouts: no mpirun (pip install -e '.[mpi]'); skipped")
        return
    results, sum_ms = {name: [] for name in LAYOUTS}, []
    env = dict(os.environ, SCRATCHLLM_MALLOC="default")  # for PyTorch's child; ours apply their own
    for _ in range(repeats):
        for name, argv in LAYOUTS.items():
            argv = [mpirun, *argv[1:]] if argv[0] == "mpirun" else argv
            child_env = env if "pytorch" in name else dict(os.environ)
            out = subprocess.run(argv, capture_output=True, text=True, env=child_env, check=True).stdout
            record = json.loads(out.strip().splitlines()[-1])
            results[name].append(record["ms"])
            sum_ms.extend([record["sum_ms"]] if "sum_ms" in record else [])
    ms = {name: float(np.median(v)) for name, v in results.items()}
    tokens = CFG.batch_size * CFG.block_size
    first, second, ref = LAYOUTS
    best = {name: min(v) for name, v in results.items()}  # the run least slowed by other work on the machine
    rows = [(name, f"{ms[name]:.1f}", f"{tokens / ms[name] * 1e3:,.0f}", f"{ms[ref] / ms[name]:.2f}",
             f"{best[name]:.1f}", " ".join(f"{v:.1f}" for v in results[name])) for name in LAYOUTS]
    print(f"\nLayouts, each alone in fresh processes (median over {repeats} runs of the median of 6 rounds of "
          f"10 steps; batch {CFG.batch_size} × block {CFG.block_size}, the same 2 shards either way)\n")
    print(table(rows, ["", "ms/step", "tokens/s", "speed vs pytorch", "best run", "each run (ms/step)"]))
    print(f"\nranks / threads (tokens/s): {ms[second] / ms[first]:.2f} (best runs: {best[second] / best[first]:.2f}); of a 2-rank step, the gradient sum over MPI "
          f"(rank 0, waiting for rank 1 included): {np.median(sum_ms):.2f} ms")


def model_scaling(steps: int = 20):
    """What a data-parallel step costs one rank with one thread, and what it must exchange:
    the default (small) and the medium model at batch 12 × 64."""
    from threadpoolctl import threadpool_limits

    from scratchllm.train import PRESETS

    tok, train_ids, _ = load_data()
    rows, steps_s = [], {}
    for preset in ("small", "medium"):
        cfg = TrainConfig(**{**CFG.__dict__, "n_layer": PRESETS[preset][0], "n_head": PRESETS[preset][1],
                             "n_embd": PRESETS[preset][2]})
        model = build_model(cfg, tok.vocab_size)
        opt = build_optimizer(model, cfg)
        rng = np.random.default_rng(0)
        times = []
        with threadpool_limits(1, user_api="blas"):
            for i in range(steps + 2):
                x, y = get_batch(train_ids, cfg.batch_size, cfg.block_size, rng)
                t0 = time.perf_counter()
                model.zero_grad()
                model(x, y)[1].backward()
                clip_grad_norm(model.parameters(), cfg.grad_clip)
                opt.step()
                if i >= 2:
                    times.append(time.perf_counter() - t0)
        n = model.num_parameters()
        rows.append((preset, f"{n:,}", f"{4 * n / 2**20:.1f}", f"{1e3 * float(np.median(times)):.0f}"))
        steps_s[preset] = (4 * n, float(np.median(times)))
    print("\nOne rank, one thread, batch 12 × 64: gradient bytes to sum each step (float32) and the step's time\n")
    print(table(rows, ["model", "parameters", "gradient (MiB)", "ms/step (12 rows, 1 thread)"]))
    ranks = (2, 4, 8, 16, 32, 64)
    print(f"\nModelled efficiency on {LINK_GBIT:g} Gb/s Ethernet ({LINK_EFF:.0%} of it, {LATENCY_S * 1e6:.0f} µs a message), "
          "12 rows per rank: compute / (compute + gradient sum), the sum not overlapped with compute\n")
    rows = []
    for preset, (nbytes, t) in steps_s.items():
        for name, cost in (("ordered chain + broadcast (bit-exact)", chain_seconds),
                           ("ring all-reduce (order left to the library)", ring_seconds)):
            rows.append((preset, name) + tuple(f"{t / (t + cost(nbytes, r)):.0%} ({1e3 * cost(nbytes, r):.0f} ms)"
                                               for r in ranks))
    print(table(rows, ["model", "gradient sum"] + [f"{r} ranks" for r in ranks]))


LINK_GBIT, LINK_EFF, LATENCY_S = 10.0, 0.9, 50e-6  # 10 Gb/s Ethernet, TCP


def chain_seconds(nbytes: int, ranks: int) -> float:
    """distributed.World.ordered_sum: a chain through the ranks in chunks, then MPICH's broadcast of a large
    message (scatter + ring allgather, ≈ 2 × the bytes through each link)."""
    from scratchllm.distributed import CHUNK

    bw = LINK_GBIT * 1e9 / 8 * LINK_EFF
    chunk = min(4 * CHUNK, nbytes)
    chain = (math.ceil(nbytes / chunk) + ranks - 2) * (chunk / bw + LATENCY_S)  # k chunks through N − 1 hops
    bcast = 2 * nbytes * (ranks - 1) / ranks / bw + (ranks + np.log2(ranks)) * LATENCY_S
    return chain + bcast


def ring_seconds(nbytes: int, ranks: int) -> float:
    """A ring all-reduce (reduce-scatter + allgather): 2 (N−1)/N × the bytes through each link."""
    bw = LINK_GBIT * 1e9 / 8 * LINK_EFF
    return 2 * nbytes * (ranks - 1) / ranks / bw + 2 * (ranks - 1) * LATENCY_S


def alone(repeats: int):
    """Each implementation in fresh processes, one after another, ``repeats`` times."""
    results = {name: [] for name in ALONE}
    for _ in range(repeats):
        for name, (which, env) in ALONE.items():
            out = subprocess.run([sys.executable, __file__, "--alone-child", which], capture_output=True, text=True,
                                 env=dict(os.environ, **env), check=True).stdout
            results[name].append(json.loads(out.strip().splitlines()[-1]))
    torch_ms = float(np.median([r["ms"] for r in results["pytorch"]]))
    rows = []
    for name, rs in results.items():
        ms = float(np.median([r["ms"] for r in rs]))
        rows.append((name, f"{ms:.1f}", f"{torch_ms / ms:.2f}", f"{max(r['peak_mib'] for r in rs):.0f}",
                     f"{max(r['step_mib'] for r in rs):.1f}", f"{np.median([r['faults'] for r in rs]):,.0f}"))
    print(f"\nEach alone in a fresh process (median over {repeats} processes of the median of 6 rounds of 10 steps; "
          "peak memory over 20 steps after one warm-up step, 'during a step' = that peak minus the resident "
          "memory before the steps)\n")
    print(table(rows, ["", "ms/step", "speed vs pytorch", "peak RSS (MiB)", "during a step (MiB)",
                       "page faults (whole process)"]))


def profile(steps: int = 100):
    """Where a step of ours goes: its phases with the batch on 2 threads, one
    half-batch shard run alone, and how well single ops use two threads."""
    import threading

    from threadpoolctl import threadpool_limits

    tok, train_ids, _ = load_data()
    ours = Ours(tok.vocab_size, train_ids, threads=2)
    sharded, times = ours.backward, {}

    def timed(key, fn):
        def run(*args):
            t0 = time.perf_counter()
            out = fn(*args)
            times.setdefault(key() if callable(key) else key, []).append(time.perf_counter() - t0)
            return out
        return run

    main_thread = threading.main_thread()
    sharded._shard = timed(lambda: "shard on the main thread" if threading.current_thread() is main_thread
                           else "shard on the worker thread", sharded._shard)
    sharded._add_grads = timed("sum of the shards' gradients", sharded._add_grads)
    sharded.step = timed("both shards, forward + backward (wall)", sharded.step)
    ours.opt.step = timed("AdamW", ours.opt.step)
    ours.step = timed("whole step", ours.step)
    for _ in range(10):
        ours.step()
    times.clear()
    for _ in range(steps):
        ours.step()
    x, y = get_batch(train_ids, CFG.batch_size // 2, CFG.block_size, np.random.default_rng(1))
    with threadpool_limits(1, user_api="blas"):
        alone = timed("one shard alone (6 rows, 1 thread)", lambda: (ours.model(x, y)[1].backward()))
        for _ in range(steps):
            alone()
    rows = [(k, f"{1e3 * float(np.median(v)):.2f}") for k, v in times.items()]
    print(f"\nPhases of ours (--threads 2), median ms over {steps} steps\n")
    print(table(rows, ["", "ms"]))
    print("\nSingle ops (forward + backward at a shard's size), alone and as two copies on two threads\n")
    print(table(op_scaling(), ["op", "µs alone (1 thread)", "speed-up with 2 threads"]))


def op_scaling(repeats: int = 200):
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    import scratchllm.functional as F
    from scratchllm.tensor import Tensor

    rng = np.random.default_rng(0)

    def param(*shape):
        return Tensor(rng.standard_normal(shape).astype(np.float32) * 0.1, requires_grad=True)

    x, h, qkv = param(6, 64, 128), param(6, 64, 512), param(6, 64, 384)
    w, b, ln_w, ln_b = param(384, 128), param(384), param(128), param(128)
    ops = {"linear 128→384": lambda: F.linear(x, w, b).backward(np.ones((6, 64, 384), np.float32)),
           "gelu (6·64×512)": lambda: F.gelu(h).backward(np.ones((6, 64, 512), np.float32)),
           "layer_norm (6·64×128)": lambda: F.layer_norm(x, ln_w, ln_b).backward(np.ones((6, 64, 128), np.float32)),
           "causal self-attention, 4 heads": lambda: F.self_attention(qkv, 4).backward(np.ones((6, 64, 128), np.float32))}

    def loop(op):
        for _ in range(repeats):
            op()

    rows = []
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(1) as pool:
        for name, op in ops.items():
            loop(op)
            t0 = time.perf_counter()
            loop(op)
            one = time.perf_counter() - t0
            t0 = time.perf_counter()
            other = pool.submit(loop, op)
            loop(op)
            other.result()
            both = time.perf_counter() - t0
            rows.append((name, f"{one / repeats * 1e6:.0f}", f"{2 * one / both:.2f}×"))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=10, help="steps per round")
    ap.add_argument("--quality", action="store_true", help="also train ours for 2000 steps and print the val curve")
    ap.add_argument("--alone", type=int, default=0, metavar="N",
                    help="also time each alone in N fresh processes (and report its peak memory)")
    ap.add_argument("--alone-child", help=argparse.SUPPRESS)
    ap.add_argument("--profile", action="store_true", help="also print where a step of ours goes")
    ap.add_argument("--layouts", type=int, default=3, metavar="N",
                    help="also time 2 MPI ranks × 1 thread, 1 process × 2 threads and PyTorch, each alone in "
                         "fresh processes, N times (0: skip; needs mpirun)")
    ap.add_argument("--model-scaling", action="store_true",
                    help="also time one rank's step (1 thread) for the default and medium model")
    args = ap.parse_args()
    if args.alone_child:
        return alone_child(args.alone_child)
    speed(args.rounds, args.steps)
    if args.layouts:
        layouts(args.layouts)
    if args.model_scaling:
        model_scaling()
    if args.alone:
        alone(args.alone)
    if args.profile:
        profile()
    if args.quality:
        quality()


if __name__ == "__main__":
    main()
