"""Tokenizer speed on tinyshakespeare: BPE training vs Hugging Face `tokenizers`,
GPT-2 encoding vs `tiktoken`; unigram training and encoding vs `sentencepiece`.

    python bench/tokenizers.py [--data ../shared/data] [--rounds 5] [--unigram-rounds 3]
    python bench/tokenizers.py --translate-steps 1500     # + Multi30k BLEU, BPE vs unigram

The translation comparison trains `scratchllm translate-train`'s default model
twice, with a BPE and with a unigram tokenizer of 8000 pieces, for the same
number of steps (one thread each, one after the other), then scores test2016.

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
    ap.add_argument("--unigram-vocab", type=int, default=8000)
    ap.add_argument("--unigram-rounds", type=int, default=3, help="rounds of the unigram rows (0: skip them)")
    ap.add_argument("--translate-steps", type=int, default=0,
                    help="also train translate-train with BPE and with unigram for this many steps each (slow)")
    ap.add_argument("--translate-out", type=Path, default=ROOT / "out" / "bench-tokenizers-translate")
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

    if args.unigram_rounds:
        unigram_section(text, args.unigram_rounds, args.unigram_vocab)
    if args.translate_steps:
        translation_section(args.data, args.translate_steps, args.translate_out)


def unigram_section(text: str, rounds: int, vocab_size: int) -> None:
    """Unigram training and encoding, ours vs sentencepiece (both trained in this process)."""
    import io

    import sentencepiece as spm

    from scratchllm.tokenizers import UnigramTokenizer

    lines = text.split("\n")

    def train_sp():
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, vocab_size=vocab_size,
                                       model_type="unigram", num_threads=2, minloglevel=2)
        return spm.SentencePieceProcessor(model_proto=buf.getvalue())

    trained = {}
    fns = {"ours, 2 workers": lambda: trained.__setitem__("ours", UnigramTokenizer().train(text, vocab_size)),
           "ours, 1 worker": lambda: UnigramTokenizer().train(text, vocab_size, workers=1),
           "sentencepiece": lambda: trained.__setitem__("sp", train_sp())}
    t = medians(fns, rounds)
    ours, sp = trained["ours"], trained["sp"]
    tpc = {k: len(enc(text)) / len(text) for k, enc in (("ours", ours.encode), ("sp", sp.encode))}
    overlap = len({ours.id_to_token(i) for i in range(ours.vocab_size)}
                  & {sp.id_to_piece(i) for i in range(sp.get_piece_size())}) / vocab_size

    # encoding: sentencepiece's own model, read by ours, so both cut identically
    import tempfile

    ref = sp
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "m.model").write_bytes(sp.serialized_model_proto())
        mine = UnigramTokenizer.from_sentencepiece(Path(d) / "m.model")
    out = {}
    e = medians({"cold": lambda: out.__setitem__("cold", mine.encode(text)),
                 "warm": lambda: out.__setitem__("warm", mine.encode(text)),
                 "sp": lambda: out.__setitem__("sp", ref.encode(text)),
                 "lines": lambda: out.__setitem__("lines", mine.encode_batch(lines)),
                 "sp lines": lambda: out.__setitem__("sp lines", ref.encode(lines))},
                rounds, before={"cold": mine.clear_cache})
    n = len(out["sp"])
    same = out["cold"] == out["warm"] == out["sp"] and out["lines"] == out["sp lines"]
    tok_s = {k: n / v / 1e6 for k, v in e.items()}
    print(f"\nunigram, tinyshakespeare, vocab {vocab_size}; sentencepiece {spm.__version__}; "
          f"{rounds} rounds, medians\n")
    print("| task | ours | sentencepiece | ours vs sentencepiece speed | note |")
    print("|---|---|---|---|---|")
    print(f"| train unigram, 2 workers | {t['ours, 2 workers']:.2f} s | {t['sentencepiece']:.2f} s (2 threads) | "
          f"{t['sentencepiece'] / t['ours, 2 workers']:.2f}x | tokens/char: ours {tpc['ours']:.4f}, "
          f"sentencepiece {tpc['sp']:.4f}; {overlap:.1%} of the pieces the same |")
    print(f"| train unigram, 1 worker | {t['ours, 1 worker']:.2f} s | | "
          f"{t['sentencepiece'] / t['ours, 1 worker']:.2f}x | |")
    print(f"| encode whole text, empty cache | {tok_s['cold']:.2f} M tok/s | {tok_s['sp']:.2f} M tok/s | "
          f"{e['sp'] / e['cold']:.2f}x | sentencepiece's model; {n:,} tokens; ids identical: "
          f"{'yes' if same else 'NO'} |")
    print(f"| encode whole text, warm cache | {tok_s['warm']:.2f} M tok/s | {tok_s['sp']:.2f} M tok/s | "
          f"{e['sp'] / e['warm']:.2f}x | |")
    print(f"| encode a list of lines, warm cache | {tok_s['lines']:.2f} M tok/s | {tok_s['sp lines']:.2f} M tok/s | "
          f"{e['sp lines'] / e['lines']:.2f}x | {len(lines):,} lines; `encode_batch(lines)`, `sp.encode(lines)` |")


def translation_section(data: Path, steps: int, out: Path) -> None:
    """BPE vs unigram for translate-train: same model, same number of steps, test2016 BLEU."""
    import json

    from threadpoolctl import threadpool_limits

    from scratchllm.data import multi30k
    from scratchllm.metrics import bleu_details
    from scratchllm.translate import translate_texts
    from scratchllm.translation_train import TranslationConfig, TranslationTrainer

    threadpool_limits(1, user_api="blas")
    de, en = multi30k("test2016", str(data))
    rows = []
    for kind in ("bpe", "unigram"):
        cfg = TranslationConfig(data_dir=str(data), out=str(out / kind), tokenizer=kind, epochs=10_000,
                                max_steps=steps, progress=False)
        t0 = time.perf_counter()
        trainer = TranslationTrainer(cfg, echo=lambda line: print(line, flush=True))
        trainer.fit()
        minutes = (time.perf_counter() - t0) / 60
        hyps = translate_texts(trainer.model, trainer.tokenizer, de, beam_size=4, length_penalty=0.6, batch_size=32)
        score = bleu_details(hyps, en)
        tokens = sum(len(trainer.tokenizer.encode(s, disallowed_special=())) for s in de)
        rows.append((kind, minutes, trainer.train_tokens / max(trainer.train_seconds, 1e-9), tokens, score))
        (out / kind / "test2016.hyp.en").write_text("".join(h + "\n" for h in hyps))
    print(f"\nMulti30k de->en, translate-train defaults, {steps} steps each, 1 thread, test2016 beam 4\n")
    print("| tokenizer | minutes (incl. tokenizer training) | train tokens/s | test2016 German tokens | test2016 BLEU |")
    print("|---|---:|---:|---:|---|")
    for kind, minutes, tps, tokens, score in rows:
        print(f"| {kind} | {minutes:.1f} | {tps:,.0f} | {tokens:,} | {score} |")
    (out / "results.json").write_text(json.dumps([{"tokenizer": k, "minutes": m, "tokens_per_s": t,
                                                   "test_tokens": n, "bleu": s.score} for k, m, t, n, s in rows]))


if __name__ == "__main__":
    main()
