"""Tokenizer speed on tinyshakespeare: BPE training vs Hugging Face `tokenizers`,
GPT-2 encoding vs `tiktoken`.

    python bench/tokenizers.py [--data ../shared/data] [--rounds 5]

Ours and the reference run in the same process, alternating round by round;
each figure is the median over rounds. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# This file is named tokenizers.py: keep its folder off the import path so
# that `import tokenizers` finds Hugging Face's package, not this script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def seconds(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def medians(fns: dict, rounds: int, before: dict | None = None) -> dict:
    """Median seconds of each fn, the fns taking turns each round."""
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            if before and k in before:
                before[k]()
            times[k].append(seconds(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def hf_trainer(text: str, vocab_size: int):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([text], trainer)
    return tok


def tiktoken_gpt2(gpt2_dir: Path):
    import tiktoken
    import tiktoken_ext.openai_public as op
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # read the local files, cache nothing
    ranks = data_gym_to_mergeable_bpe_ranks(str(gpt2_dir / "vocab.bpe"), str(gpt2_dir / "encoder.json"))
    return tiktoken.Encoding(name="gpt2-local", pat_str=op.r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--vocab-size", type=int, default=4096)
    args = ap.parse_args()

    import json

    import regex
    import tiktoken
    import tokenizers

    from scratchllm.tokenizers import BPETokenizer

    text = (args.data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    gpt2_dir = args.data / "gpt2"
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores); Python {platform.python_version()}; "
          f"tiktoken {tiktoken.__version__}; tokenizers {tokenizers.__version__}; regex {regex.__version__}")
    print(f"text: tinyshakespeare, {len(text.encode()):,} bytes; {args.rounds} rounds, medians\n")

    # -- training --------------------------------------------------------------
    trained = {}
    t = medians({"ours": lambda: trained.__setitem__("ours", BPETokenizer("gpt2").train(text, args.vocab_size)),
                 "hf": lambda: trained.__setitem__("hf", hf_trainer(text, args.vocab_size))}, args.rounds)
    hf_model = json.loads(trained["hf"].to_str())["model"]
    hf_merges = [m if isinstance(m, str) else " ".join(m) for m in hf_model["merges"]]
    same = hf_merges == trained["ours"].to_dict()["merges"]

    # -- encoding -----------------------------------------------------------------
    ours = BPETokenizer.from_gpt2(gpt2_dir / "encoder.json", gpt2_dir / "vocab.bpe")
    ref = tiktoken_gpt2(gpt2_dir)
    out = {}
    # One non-ASCII character sends the whole text through the `regex` engine
    # instead of the ASCII fast path (see tokenizers/patterns.py).
    mixed = text + "\u00e9"
    e = medians({"cold": lambda: out.__setitem__("cold", ours.encode(text)),
                 "warm": lambda: out.__setitem__("warm", ours.encode(text)),
                 "tiktoken": lambda: out.__setitem__("tiktoken", ref.encode_ordinary(text)),
                 "mixed": lambda: out.__setitem__("mixed", ours.encode(mixed)),
                 "tiktoken mixed": lambda: out.__setitem__("tiktoken mixed", ref.encode_ordinary(mixed))},
                args.rounds, before={"cold": ours.clear_cache})
    n = len(out["tiktoken"])
    ids_same = out["cold"] == out["warm"] == out["tiktoken"] and out["mixed"] == out["tiktoken mixed"]

    tok_s = {k: n / v / 1e6 for k, v in e.items()}
    rows = [
        (f"train BPE, vocab {args.vocab_size}, GPT-2 pattern", f"{t['ours']:.2f} s", f"{t['hf']:.2f} s",
         f"{t['hf'] / t['ours']:.2f}x", f"same merges as HF: {'yes' if same else 'NO'}"),
        ("encode, GPT-2 vocab, empty cache", f"{tok_s['cold']:.2f} M tok/s", f"{tok_s['tiktoken']:.2f} M tok/s",
         f"{e['tiktoken'] / e['cold']:.2f}x", f"{n:,} tokens; ids identical: {'yes' if ids_same else 'NO'}"),
        ("encode, GPT-2 vocab, warm cache", f"{tok_s['warm']:.2f} M tok/s", f"{tok_s['tiktoken']:.2f} M tok/s",
         f"{e['tiktoken'] / e['warm']:.2f}x", ""),
        ("encode, warm cache, + one non-ASCII char", f"{tok_s['mixed']:.2f} M tok/s",
         f"{tok_s['tiktoken mixed']:.2f} M tok/s", f"{e['tiktoken mixed'] / e['mixed']:.2f}x",
         "Unicode `regex` split, no ASCII fast path"),
    ]
    print("| task | ours | reference (HF tokenizers / tiktoken) | ours vs reference speed | note |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
