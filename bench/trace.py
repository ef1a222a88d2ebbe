"""What a trace costs: ``scratchllm.explain.trace`` of the default GPT (the one
``scratchllm train`` builds: 4 layers, 4 heads, width 128, its character
vocabulary) on 64 tokens with targets, against the plain forward + backward it
wraps, and the size of its JSON.

    python bench/trace.py [--rounds 30] [--blas-threads 1]

BLAS is held to one thread by default: the matrices of one 64-token pass are
too small to share, and on a busy 2-core machine a second thread only waits.
"""
from __future__ import annotations

import argparse

import numpy as np

from common import OtherLoad, header, interleaved

from scratchllm.data.corpus import builtin_text
from scratchllm.explain import trace
from scratchllm.models import GPT, GPTConfig
from scratchllm.tokenizers import CharTokenizer
from scratchllm.train import TrainConfig


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--blas-threads", type=int, default=1)
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.blas_threads, user_api="blas")

    tcfg = TrainConfig()
    vocab = CharTokenizer().train(builtin_text()).vocab_size
    model = GPT(GPTConfig(vocab_size=vocab, block_size=tcfg.block_size, n_layer=tcfg.n_layer, n_head=tcfg.n_head,
                          n_embd=tcfg.n_embd))
    rng = np.random.default_rng(0)
    T = 64
    ids, targets = rng.integers(0, vocab, (1, T)), rng.integers(0, vocab, (1, T))

    def plain():
        _, loss = model(ids, targets)
        loss.backward()
        model.zero_grad()

    fns = {"forward + backward": plain, "trace with targets": lambda: trace(model, ids, targets),
           "trace without targets": lambda: trace(model, ids)}
    with OtherLoad() as load:
        times = interleaved(fns, rounds=args.rounds)
    print(header())
    print(f"GPT: {tcfg.n_layer} layers, {tcfg.n_head} heads, width {tcfg.n_embd}, vocabulary {vocab}; "
          f"{T} tokens, batch 1")
    for name, t in times.items():
        print(f"  {name:<24}{t * 1e3:8.1f} ms")
    tr = trace(model, ids, targets)
    print(f"  {len(tr.names())} values, each with its gradient; to_json(): {len(tr.to_json()) / 1e6:.1f} MB")
    other = "n/a" if load.fraction is None else f"{100 * load.fraction:.0f}%"
    print(f"CPU time taken by other processes during the run: {other}")


if __name__ == "__main__":
    main()
