"""GPT training speed and quality: scratchllm against a PyTorch GPT of the same
architecture, same config, same data, same process.

Config (the project's benchmark): tinyshakespeare char-level, block 64,
batch 12, 4 layers, 4 heads, width 128, dropout 0, AdamW (β₂ 0.99, weight
decay 0.1 on matrices), lr 1e-3, warmup 100, cosine to 1e-4 over 2000 steps,
gradient clipping 1.0.

    python bench/train_gpt.py                 # speed: interleaved steps, ms/step and ratio
    python bench/train_gpt.py --quality       # + 2000 steps of ours, val loss curve
    python bench/train_gpt.py --memory        # + peak memory of each, in fresh processes
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from common import header, table, use_torch_threads  # noqa: E402

import scratchllm as sl  # noqa: E402
from scratchllm.data import dataset_file, get_batch  # noqa: E402
from scratchllm.optim import CosineWithWarmup, clip_grad_norm  # noqa: E402
from scratchllm.sharded import ShardedBackward  # noqa: E402
from scratchllm.tokenizers import CharTokenizer  # noqa: E402
from scratchllm.train import TrainConfig, build_model, build_optimizer, estimate_loss  # noqa: E402

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
        self.backward = ShardedBackward(self.model, threads)
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
    torch = use_torch_threads(2)
    tok, train_ids, _ = load_data()
    ours = Ours(tok.vocab_size, train_ids)
    ref = Reference(ours.model, train_ids)
    t0 = time.perf_counter()
    ours.step()
    first_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref.step()
    first_ref = time.perf_counter() - t0
    for _ in range(5):
        ours.step(), ref.step()
    times = {"scratchllm": [], "pytorch": []}
    for _ in range(rounds):  # interleaved: a noisy neighbour hits both alike
        for name, runner in (("scratchllm", ours), ("pytorch", ref)):
            t0 = time.perf_counter()
            for _ in range(steps_per_round):
                runner.step()
            times[name].append((time.perf_counter() - t0) / steps_per_round)
    med = {k: float(np.median(v)) for k, v in times.items()}
    tokens = CFG.batch_size * CFG.block_size
    print(header(torch))
    print(f"\nGPT training step, {sl.models.GPT.__name__} {ours.model.num_parameters():,} parameters, "
          f"batch {CFG.batch_size} × block {CFG.block_size}; median of {rounds} interleaved rounds of {steps_per_round} steps\n")
    rows = [(name, f"{med[name] * 1e3:.1f}", f"{tokens / med[name]:,.0f}", f"{first:.2f}")
            for name, first in (("scratchllm", first_ours), ("pytorch", first_ref))]
    print(table(rows, ["", "ms/step", "tokens/s", "first step (s)"]))
    print(f"\nspeed ratio scratchllm / pytorch (tokens/s): {med['pytorch'] / med['scratchllm']:.2f}")
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


def memory_child(which: str):
    """Peak resident memory of 20 training steps of one implementation alone:
    the high-water mark is reset after set-up, so the growth is the steps' own."""
    tok, train_ids, _ = load_data()
    if which == "pytorch":
        use_torch_threads(2)
        runner = Reference(build_model(CFG, tok.vocab_size), train_ids)
    else:
        runner = Ours(tok.vocab_size, train_ids)
    runner.step()
    before = _vm("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    for _ in range(20):
        runner.step()
    peak = _vm("VmHWM")
    print(json.dumps({"peak_mib": peak, "step_mib": peak - before}))


def memory():
    rows = []
    for which in ("scratchllm", "pytorch"):
        out = subprocess.run([sys.executable, __file__, "--memory-child", which], capture_output=True, text=True,
                             env=dict(os.environ), check=True).stdout
        m = json.loads(out.strip().splitlines()[-1])
        rows.append((which, f"{m['peak_mib']:.0f}", f"{m['step_mib']:.1f}"))
    print("\nPeak resident memory, a fresh process each (peak over 20 steps after one warm-up step; "
          "'during a step' = that peak minus the resident memory before the steps)\n")
    print(table(rows, ["", "peak RSS (MiB)", "during a step (MiB)"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=10, help="steps per round")
    ap.add_argument("--quality", action="store_true", help="also train ours for 2000 steps and print the val curve")
    ap.add_argument("--memory", action="store_true", help="also measure peak memory of each in a fresh process")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        return memory_child(args.memory_child)
    speed(args.rounds, args.steps)
    if args.memory:
        memory()
    if args.quality:
        quality()


if __name__ == "__main__":
    main()
