"""The cost of snapshots on a default ``scratchllm train``: time and disk, against ``--snapshots 0``.

The default run (built-in corpus, char tokens, 4 layers, width 128, 2000 steps)
is trained in this process with snapshots off and with the default 20,
alternately, ``--rounds`` times each. Printed: the wall time of each run, the
time spent writing snapshots (measured around each write, so a busy machine
does not hide it in the noise of the whole run), the snapshots' size on disk
beside the checkpoint's, and the sample-free command it stands for.

    python bench/snapshots.py                    # 1 round of each: ~2 × a default run
    python bench/snapshots.py --max-iters 500 --rounds 2
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import header  # noqa: E402

from scratchllm import snapshots  # noqa: E402
from scratchllm.train import TrainConfig, Trainer  # noqa: E402


def folder_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def one_run(out: Path, n: int, max_iters: int) -> dict:
    writes = []
    real = snapshots.write_snapshot

    def timed(*args, **kw):
        t0 = time.perf_counter()
        path = real(*args, **kw)
        writes.append(time.perf_counter() - t0)
        return path

    snapshots.write_snapshot = timed  # the loop calls it through the module
    try:
        cfg = TrainConfig(out=str(out), snapshots=n, max_iters=max_iters, progress=False, sample_tokens=0)
        trainer = Trainer(cfg)
        t0 = time.perf_counter()
        trainer.fit(echo=lambda *a: None)
        seconds = time.perf_counter() - t0
    finally:
        snapshots.write_snapshot = real
    count, size = snapshots.snapshots_size(out)
    return {"seconds": seconds, "writes": len(writes), "write_s": sum(writes), "count": count, "bytes": size,
            "ckpt_bytes": folder_bytes(out / "ckpt"), "params": trainer.model.num_parameters()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-iters", type=int, default=TrainConfig.max_iters)
    ap.add_argument("--snapshots", type=int, default=TrainConfig.snapshots)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    print(header())
    print(f"command: scratchllm train --max-iters {args.max_iters} --sample-tokens 0 --snapshots N, "
          f"N = 0 and {args.snapshots}, {args.rounds} round(s), alternating\n")
    runs = {0: [], args.snapshots: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):  # the data is tokenised before the timed part (fit)
            for n in runs:
                res = one_run(Path(tmp) / f"run-{n}-{r}", n, args.max_iters)
                runs[n].append(res)
                print(f"  --snapshots {n:>2}: {res['seconds']:7.1f} s; {res['count']} snapshots written in "
                      f"{res['write_s'] * 1e3:.0f} ms, {res['bytes'] / 1e6:.2f} MB")
    off, on = runs[0], runs[args.snapshots]
    best = lambda rs, k: min(r[k] for r in rs)  # noqa: E731
    res = on[0]
    print(f"\nmodel: {res['params']:,} parameters; checkpoint (weights + Adam moments) {res['ckpt_bytes'] / 1e6:.2f} MB")
    print(f"time, best of {args.rounds}: --snapshots 0 {best(off, 'seconds'):.1f} s, --snapshots {args.snapshots} "
          f"{best(on, 'seconds'):.1f} s (difference {best(on, 'seconds') - best(off, 'seconds'):+.1f} s)")
    per = res["write_s"] / max(res["writes"], 1)
    print(f"writing the snapshots: {res['write_s'] * 1e3:.0f} ms in all, {per * 1e3:.1f} ms each, "
          f"{res['write_s'] / best(on, 'seconds'):.2%} of the run")
    print(f"disk: {res['count']} snapshots, {res['bytes'] / 1e6:.2f} MB ({res['bytes'] / res['count'] / 1e6:.2f} MB "
          f"each); --snapshots 0: none")


if __name__ == "__main__":
    main()
