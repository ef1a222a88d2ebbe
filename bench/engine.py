"""Engine ops, ours vs PyTorch CPU: forward and forward + backward.

One transformer block's worth of ops at the GPT benchmark size
(B=12, T=64, C=128, H=4, D=32, vocabulary 65), float32:

    python bench/engine.py [--rounds 30] [--ops linear,gelu,...] [--baseline GIT_REV]

Every op runs with the same inputs and the same upstream gradient in both
libraries; they are timed interleaved in one process (median of rounds),
torch with 2 threads. ``ours/torch`` is the time ratio (below 1 = we are
faster); ``speed`` is torch time / our time. ``--baseline REV`` also times
``src/scratchllm/functional.py`` as it was at git revision REV (or a copy of
it at path REV), in the same rounds, to measure a change before/after.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import OtherLoad, header, interleaved, table, use_torch_threads  # noqa: E402

import scratchllm.functional as F  # noqa: E402
from scratchllm.tensor import Tensor  # noqa: E402

B, T, C, H, V = 12, 64, 128, 4, 65
D = C // H
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def functional_at(rev: str):
    """``scratchllm/functional.py`` as of git revision ``rev`` (or the file at
    path ``rev``), loaded as a module of the installed package (it shares
    today's Tensor)."""
    if os.path.isfile(rev):
        path = rev
    else:
        src = subprocess.run(["git", "show", f"{rev}:src/scratchllm/functional.py"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout
        path = os.path.join(tempfile.mkdtemp(), "functional_baseline.py")
        with open(path, "w") as f:
            f.write(src)
    spec = importlib.util.spec_from_file_location("scratchllm._functional_baseline", path)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "scratchllm"  # its relative imports resolve to the installed package
    spec.loader.exec_module(module)
    return module


def _runner(fn, params, upstream):
    """run(backward): ``fn(*params)`` and, if asked, its backward with ``upstream``."""
    def run(backward):
        for p in params:
            p.grad = None
        out = fn(*params)
        if backward:
            out.backward(upstream)
    return run


def cases(torch, ours_modules: dict):
    """{op: (shape text, {name: run(backward)})} for each of ``ours_modules`` and torch."""
    TF = torch.nn.functional
    rng = np.random.default_rng(0)
    targets = rng.integers(0, V, B * T)
    targets_t = torch.tensor(targets)
    specs = {  # op: (shape text, ours(F, *inputs), torch(*inputs), input shapes, input scale, output shape)
        "linear": (f"({B},{T},{C}) -> {4 * C}", lambda F, x, w, b: F.linear(x, w, b), TF.linear,
                   [(B, T, C), (4 * C, C), (4 * C,)], 0.1, (B, T, 4 * C)),
        "gelu": (f"({B},{T},{4 * C})", lambda F, x: F.gelu(x), lambda x: TF.gelu(x, approximate="tanh"),
                 [(B, T, 4 * C)], 1.0, (B, T, 4 * C)),
        "layer_norm": (f"({B},{T},{C})", lambda F, x, w, b: F.layer_norm(x, w, b, 1e-5),
                       lambda x, w, b: TF.layer_norm(x, (C,), w, b, 1e-5), [(B, T, C), (C,), (C,)], 1.0, (B, T, C)),
        "attention": (f"({B},{H},{T},{D}) causal", lambda F, q, k, v: F.attention(q, k, v, causal=True),
                      lambda q, k, v: TF.scaled_dot_product_attention(q, k, v, is_causal=True),
                      [(B, H, T, D)] * 3, 1.0, (B, H, T, D)),
        "cross_entropy": (f"({B * T},{V})", lambda F, z: F.cross_entropy(z, targets),
                          lambda z: TF.cross_entropy(z, targets_t), [(B * T, V)], 2.0, None),
    }
    out = {}
    for op, (shape, ours_fn, torch_fn, shapes, scale, out_shape) in specs.items():
        arrays = [(rng.standard_normal(s) * scale).astype(np.float32) for s in shapes]
        g = rng.standard_normal(out_shape).astype(np.float32) if out_shape else None
        runs = {}
        for name, module in ours_modules.items():
            params = [Tensor(a.copy(), requires_grad=True) for a in arrays]
            runs[name] = _runner(lambda *p, m=module, f=ours_fn: f(m, *p), params, g)
        params = [torch.tensor(a, requires_grad=True) for a in arrays]
        runs["torch"] = _runner(torch_fn, params, None if g is None else torch.tensor(g))
        out[op] = (shape, runs)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds per op (median is reported)")
    ap.add_argument("--settle", type=float, default=0.15,
                    help="seconds each contender runs untimed before its timed batch in a round (default 0.15)")
    ap.add_argument("--ops", default="", help="comma-separated subset of ops to run")
    ap.add_argument("--baseline", metavar="REV", help="also time functional.py as of this git revision (or file)")
    args = ap.parse_args(argv)
    torch = use_torch_threads(2)
    modules = {"ours": F}
    if args.baseline:
        modules["before"] = functional_at(args.baseline)
    print(header(torch))
    print(f"Config: B={B} T={T} C={C} H={H} D={D} V={V}, float32; median of {args.rounds} interleaved rounds"
          f" ({args.settle:g} s untimed settling before each timed batch)"
          + (f"; 'before' = functional.py at {args.baseline}" if args.baseline else "") + "\n")
    rows = []
    with OtherLoad() as load:
        for op, (shape, runs) in cases(torch, modules).items():
            if args.ops and op not in args.ops.split(","):
                continue
            kw = dict(rounds=args.rounds, settle_s=args.settle)
            fwd = interleaved({name: (lambda r=r: r(False)) for name, r in runs.items()}, **kw)
            both = interleaved({name: (lambda r=r: r(True)) for name, r in runs.items()}, **kw)
            row = [op, shape, f"{fwd['ours'] * 1e3:.3f}", f"{fwd['torch'] * 1e3:.3f}"]
            if args.baseline:
                row.append(f"{both['before'] * 1e3:.3f}")
            row += [f"{both['ours'] * 1e3:.3f}", f"{both['torch'] * 1e3:.3f}",
                    f"{both['ours'] / both['torch']:.2f}", f"{both['torch'] / both['ours']:.2f}x"]
            rows.append(row)
            print(f"  {op}: fwd+bwd ours {both['ours'] * 1e3:.3f} ms, torch {both['torch'] * 1e3:.3f} ms", flush=True)
    print()
    if load.fraction is not None:
        print(f"Other processes used {100 * load.fraction:.1f}% of the CPUs during the run"
              + (" -- disturbed figures: run again on an idle machine" if load.fraction > 0.05 else ""))
    headers = ["op", "shape", "fwd ours ms", "fwd torch ms"] + (["fwd+bwd before ms"] if args.baseline else [])
    headers += ["fwd+bwd ours ms", "fwd+bwd torch ms", "ours/torch", "speed (torch/ours)"]
    print(table(rows, headers))


if __name__ == "__main__":
    main()
