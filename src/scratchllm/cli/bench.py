"""``scratchllm bench``: how fast a GPT training step runs on this machine."""
from __future__ import annotations

import time


def register(sub):
    p = sub.add_parser("bench", help="time GPT training steps on this machine (tokens/s)",
                       description="Time training steps of a GPT on random tokens: the model of `scratchllm train` "
                                   "by default. For a side-by-side figure against PyTorch see bench/train_gpt.py "
                                   "in the source tree.")
    p.add_argument("--steps", type=int, default=30, help="timed steps (default: 30)")
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--vocab-size", type=int, default=65)
    p.set_defaults(func=run)


def run(args):
    import numpy as np

    from ..errors import ScratchError
    from ..models.gpt import GPT, GPTConfig
    from ..optim import AdamW, clip_grad_norm

    if args.steps < 1:
        raise ScratchError("--steps must be at least 1")
    cfg = GPTConfig(vocab_size=args.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                    n_head=args.n_head, n_embd=args.n_embd)
    model = GPT(cfg)
    opt = AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    rng = np.random.default_rng(0)
    B, T = args.batch_size, args.block_size

    def step():
        x = rng.integers(0, cfg.vocab_size, (B, T))
        y = rng.integers(0, cfg.vocab_size, (B, T))
        model.zero_grad()
        _, loss = model(x, y)
        loss.backward()
        clip_grad_norm(model.parameters(), 1.0)
        opt.step()

    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    print(f"GPT {model.num_parameters():,} parameters, batch {B} × block {T}")
    print(f"first step {first:.2f} s, "
          f"then median {med * 1e3:.1f} ms/step = {B * T / med:,.0f} tokens/s over {args.steps} steps")
    return 0
