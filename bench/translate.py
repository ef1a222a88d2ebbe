"""German → English translation on Multi30k: the default `scratchllm translate-train`
run planned to 30, 60 and 120 minutes, two seeds each, scored on test2016 and on
validation sentences no choice was made on; and its training speed against the
same model in PyTorch.

1. Speed: the first batches of epoch 1, each trained by a fresh scratchllm
   model and by torch.nn.Transformer (same sizes, pre-norm, shared embedding
   tied to the output, sinusoidal positions, the default dropout and label
   smoothing, Adam, clipping — written here), interleaved batch by batch.
   Tokens/s counts source + target tokens, padding excluded. Where the
   environment sets OPENBLAS_CORETYPE or OPENBLAS_L2_SIZE, the speed is measured
   again in a child process without them (what a user's machine runs).
2. Quality: for each --minutes M and --seeds S, `scratchllm translate-train
   --minutes M --seed S` (the README's command) in its own process, then the
   weights and decoding it chose (OUT/model) translate test2016 and the
   validation sentences after the first --bleu-sentences (the "unseen" set:
   neither the epoch BLEU, the averaging choice nor the decoding choice read
   them), scored by scratchllm.metrics.bleu and by sacrebleu on the same
   detokenised, cased output. --score RUN_DIR scores runs already made.

    python bench/translate.py                              # 2 × (30 + 60 + 120) min: about 7 h
    python bench/translate.py --minutes 10 --seeds 0       # a smoke run
    python bench/translate.py --score out/run-a out/run-b  # runs made by translate-train
    python bench/translate.py --score out/run-a --windows  # averaging the last 1 … 5 epochs
    python bench/translate.py --shapes                     # tokens/s of other model shapes
    python bench/translate.py --minutes 30 --set tokenizer=unigram --set vocab-size=6000   # a lever changed
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import header, table, use_torch_threads  # noqa: E402

from scratchllm.data import multi30k  # noqa: E402
from scratchllm.metrics import bleu_details, bleu_signature  # noqa: E402
from scratchllm.nn import sinusoidal_encoding  # noqa: E402
from scratchllm.optim import clip_grad_norm  # noqa: E402
from scratchllm.translate import translate_texts  # noqa: E402
from scratchllm.translation_train import (EPOCHS_DIR, TranslationConfig, TranslationTrainer,  # noqa: E402
                                          build_model, build_optimizer, linear_decay_lr, mean_weights)


def shared_data_dir() -> str:
    """$SCRATCHLLM_DATA_DIR, else ../shared/data beside the repository."""
    return os.environ.get("SCRATCHLLM_DATA_DIR") or str(HERE.parent.parent / "shared" / "data")


# ---- the reference ------------------------------------------------------------------------
def torch_model(cfg: TranslationConfig, vocab: int, pad: int):
    import warnings

    import torch
    from torch import nn

    # nested tensors are an inference fast path; training never uses them
    warnings.filterwarnings("ignore", message="enable_nested_tensor is True")

    class TorchTranslator(nn.Module):
        """torch.nn.Transformer with our embedding, positions and tied output layer."""

        def __init__(self):
            super().__init__()
            C = cfg.d_model
            self.embed = nn.Embedding(vocab, C)
            nn.init.normal_(self.embed.weight, std=C ** -0.5)
            self.core = nn.Transformer(C, cfg.n_head, cfg.n_layers, cfg.n_layers, cfg.d_ff, cfg.dropout,
                                       batch_first=True, norm_first=True)
            self.drop = nn.Dropout(cfg.dropout)
            self.register_buffer("pe", torch.from_numpy(sinusoidal_encoding(cfg.max_len, C)).float())

        def embed_at(self, ids):
            return self.drop(self.embed(ids) * math.sqrt(cfg.d_model) + self.pe[:ids.shape[1]])

        def loss(self, src, tgt_in, tgt_out):
            T = tgt_in.shape[1]
            causal = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)  # True: may not attend
            h = self.core(self.embed_at(src), self.embed_at(tgt_in), tgt_mask=causal, tgt_is_causal=True,
                          src_key_padding_mask=src == pad, tgt_key_padding_mask=tgt_in == pad,
                          memory_key_padding_mask=src == pad)
            logits = h @ self.embed.weight.T  # (B, T, V)
            return nn.functional.cross_entropy(logits.reshape(-1, vocab), tgt_out.reshape(-1), ignore_index=pad,
                                               label_smoothing=cfg.label_smoothing)

    return TorchTranslator()


def speed(trainer: TranslationTrainer, n_batches: int, threads: int, warmup: int = 3) -> dict:
    """Tokens/s of one training step, ours and PyTorch's, on the same batches, interleaved."""
    from threadpoolctl import threadpool_limits

    torch = use_torch_threads(threads)
    threadpool_limits(threads, user_api="blas")  # again: importing torch may load a BLAS of its own
    cfg, data = trainer.cfg, trainer.train_data
    ours = build_model(cfg, trainer.tokenizer)
    opt = build_optimizer(ours, cfg)
    ref = torch_model(cfg, trainer.tokenizer.vocab_size, data.pad)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)

    def step_ours(i, batch):
        opt.lr = linear_decay_lr(i, i / 6000, cfg.lr, cfg.warmup_steps)
        ours.zero_grad()
        loss = ours.loss(*batch, label_smoothing=cfg.label_smoothing)
        loss.backward()
        clip_grad_norm(ours.parameters(), cfg.grad_clip)
        opt.step()

    def step_ref(i, batch):
        for g in ref_opt.param_groups:
            g["lr"] = linear_decay_lr(i, i / 6000, cfg.lr, cfg.warmup_steps)
        ref_opt.zero_grad(set_to_none=True)
        loss = ref.loss(*(torch.from_numpy(a) for a in batch))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), cfg.grad_clip)
        ref_opt.step()

    seconds, tokens = {"scratchllm": 0.0, "pytorch": 0.0}, 0
    for i, rows in enumerate(trainer.epoch_batches(0)[:warmup + n_batches]):
        batch = data.batch(rows)
        for name, step in (("scratchllm", step_ours), ("pytorch", step_ref)):
            t0 = time.perf_counter()
            step(i, batch)
            if i >= warmup:
                seconds[name] += time.perf_counter() - t0
        if i >= warmup:
            tokens += int((batch[0] != data.pad).sum() + (batch[2] != data.pad).sum())
    result = {name: tokens / s for name, s in seconds.items()}
    result["ratio"] = result["scratchllm"] / result["pytorch"]
    print(header(torch))
    print(f"\nTraining step, {ours.num_parameters():,} parameters, {n_batches} Multi30k batches of at most "
          f"{cfg.max_tokens} padded tokens a side (after {warmup} warm-up batches), interleaved\n")
    print(table([(k, f"{result[k]:,.0f}") for k in ("scratchllm", "pytorch")], ["", "tokens/s"]))
    print(f"\nspeed ratio scratchllm / pytorch: {result['ratio']:.2f}\n", flush=True)
    return result


# ---- shapes ---------------------------------------------------------------------------------
SHAPES = [  # (d_model, layers a side, d_ff, vocabulary); the first is the default
    (256, 3, 1024, 8000), (256, 3, 1024, 6000), (256, 2, 1024, 8000), (256, 4, 1024, 8000),
    (192, 3, 768, 8000), (384, 3, 1536, 8000),
]


def shape_speed(data_dir: str, out: Path, n_batches: int, warmup: int = 3) -> list[dict]:
    """Tokens/s of translate-train's own step (its threads, its sharding) for each shape, on the first
    batches of epoch 1 (the same sentence pairs for each shape of one vocabulary)."""
    rows, results = [], []
    for d_model, layers, d_ff, vocab in SHAPES:
        cfg = TranslationConfig(data_dir=data_dir, out=str(out / "shape"), progress=False, d_model=d_model,
                                n_layers=layers, d_ff=d_ff, vocab_size=vocab, snapshots=0)
        trainer = TranslationTrainer(cfg, echo=lambda line: None)
        batches = trainer.epoch_batches(0)[:warmup + n_batches]
        seconds, tokens = 0.0, 0
        for i, rows_i in enumerate(batches):
            t0 = time.perf_counter()
            _, n = trainer.train_step(rows_i)
            if i >= warmup:
                seconds += time.perf_counter() - t0
                tokens += n
        r = {"d_model": d_model, "layers": layers, "d_ff": d_ff, "vocab": vocab,
             "parameters": trainer.model.num_parameters(), "tokens_per_s": tokens / seconds,
             "tokens_per_pair": tokens / sum(len(b) for b in batches[warmup:])}
        results.append(r)
        rows.append((f"{d_model} / {layers}+{layers} / {d_ff} / {vocab}", f"{r['parameters'] / 1e6:.2f} M",
                     f"{r['tokens_per_pair']:.1f}", f"{r['tokens_per_s']:,.0f}",
                     f"{r['tokens_per_s'] / r['tokens_per_pair']:.1f}"))
        print(f"  {rows[-1]}", flush=True)
    print(table(rows, ["d_model / layers / d_ff / vocab", "parameters", "tokens per pair", "tokens/s",
                       "pairs/s"]))
    return results


# ---- quality -------------------------------------------------------------------------------
def read_log(run: Path) -> list[dict]:
    path = run / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def curve_table(run: Path) -> str:
    epochs = [r for r in read_log(run) if r["kind"] == "epoch"]
    rows = [(r["epoch"], r["step"], f"{r['elapsed_s'] / 60:.1f}", f"{r['lr']:.2e}", f"{r['train_loss']:.3f}",
             f"{r['val_loss']:.3f}", f"{r.get('val_bleu', float('nan')):.2f}", f"{r['tokens_per_s']:,.0f}")
            for r in epochs]
    return table(rows, ["epoch", "step", "minutes", "lr", "train loss", "val loss", "val BLEU (greedy)", "tokens/s"])


def train_run(minutes: float, seed: int, data_dir: str, out: Path, settings: list[str] = ()) -> float:
    """The README's command in its own process (with ``settings``, NAME=VALUE, as --NAME VALUE);
    returns its wall-clock seconds."""
    import subprocess

    cmd = [sys.executable, "-m", "scratchllm", "translate-train", "--minutes", f"{minutes:g}", "--seed", str(seed),
           "--data-dir", data_dir, "--out", str(out), "--no-progress"]
    for setting in settings:
        name, value = setting.split("=", 1)
        cmd += [f"--{name}", value]
    print("$ " + " ".join(cmd[2:]), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def score_run(run: Path, data_dir: str) -> dict:
    """test2016 and the unseen validation sentences, translated with the run's chosen weights and decoding."""
    import sacrebleu

    from scratchllm import checkpoint

    model, tokenizer = checkpoint.open_model(run / "model")
    decoding = checkpoint.saved_config(run / "model")["decoding"]
    cfg = checkpoint.read_train_state(run / "ckpt")["train_config"]
    tuned = cfg["bleu_sentences"]
    val_de, val_en = multi30k("val", data_dir)
    sets = {"test2016": multi30k("test2016", data_dir), f"val[{tuned}:] (unseen)": (val_de[tuned:], val_en[tuned:])}
    result = {"decoding": decoding, "final": next((r for r in reversed(read_log(run)) if r["kind"] == "final"), {})}
    for name, (de, en) in sets.items():
        t0 = time.perf_counter()
        hyps = translate_texts(model, tokenizer, de, beam_size=decoding["beam"],
                               length_penalty=decoding["length_penalty"], batch_size=32)
        seconds = time.perf_counter() - t0
        (run / f"{name.split()[0]}.hyp.en").write_text("".join(h + "\n" for h in hyps))
        ours, ref = bleu_details(hyps, en), sacrebleu.corpus_bleu(hyps, [en])
        result[name] = {"bleu": ours.score, "sacrebleu": ref.score, "details": str(ours), "sentences": len(de),
                        "seconds": seconds}
        print(f"{run} {name}, beam {decoding['beam']}, length penalty {decoding['length_penalty']:g} "
              f"({seconds:.0f} s for {len(de)} sentences):\n  scratchllm.metrics.bleu: {ours}\n"
              f"  sacrebleu:               {ref}", flush=True)
    print(f"signature: {bleu_signature()}")
    return result


def run_settings(run: Path) -> tuple[float, int, str]:
    """(minutes, seed, the settings that differ from translate-train's defaults) of a run, from its checkpoint."""
    from scratchllm import checkpoint

    cfg = checkpoint.read_train_state(run / "ckpt")["train_config"]
    defaults = asdict(TranslationConfig())
    own = ("minutes", "seed", "data_dir", "out", "progress", "max_steps")
    changed = [f"{k.replace('_', '-')}={v}" for k, v in cfg.items() if k in defaults and k not in own
               and v != defaults[k]]
    return cfg.get("minutes", 0.0), cfg.get("seed", 0), ", ".join(changed) or "default"


def quality(runs: list[Path], data_dir: str) -> list[dict]:
    rows, results = [], []
    for run in runs:
        minutes, seed, settings = run_settings(run)
        r = score_run(run, data_dir) | {"run": str(run), "minutes": minutes, "seed": seed, "settings": settings}
        final, log = r["final"], read_log(run)
        epochs = [x for x in log if x["kind"] == "epoch"]
        print(f"\n{run}: training curve\n\n{curve_table(run)}\n", flush=True)
        test, unseen = r["test2016"]["bleu"], next(v["bleu"] for k, v in r.items() if k.startswith("val["))
        rows.append((settings, f"{minutes:g}" if minutes else "-", seed, final.get("step", "?"),
                     len(epochs), f"{final.get('run_seconds', 0) / 60:.1f}", final.get("weights", "?"),
                     f"{r['decoding']['beam']} / {r['decoding']['length_penalty']:g}",
                     f"{max((x.get('val_bleu', 0) for x in epochs), default=0):.2f}", f"{test:.2f}", f"{unseen:.2f}",
                     f"{unseen - test:+.2f}"))
        results.append(r)
    print(table(rows, ["settings", "minutes", "seed", "steps", "epochs", "run (min)", "weights", "beam / α",
                       "best epoch val BLEU (greedy)", "test2016 BLEU", "unseen val BLEU", "unseen − test"]))
    return results


def averaging_windows(runs: list[Path], data_dir: str, most: int = 5) -> list[dict]:
    """Val BLEU (greedy, the validation sentences the run tuned on) of the mean of the last k epochs'
    weights, k = 1 (the last weights alone) … ``most``: what `--average k` would have given each run."""
    import numpy as np

    from scratchllm import checkpoint
    from scratchllm import snapshots as snap
    from scratchllm.metrics import bleu

    val_de, val_en = multi30k("val", data_dir)
    rows, results = [], []
    for run in runs:
        model, tokenizer = checkpoint.open_model(run / "ckpt")
        tuned = checkpoint.read_train_state(run / "ckpt")["train_config"]["bleu_sentences"]
        step = next(r["step"] for r in reversed(read_log(run)) if r["kind"] == "final")
        steps = [step] + [s for s in snap.list_snapshots(run, EPOCHS_DIR) if s < step][::-1][:most - 1]
        weights = [{k: np.array(v) for k, v in model.state_dict().items()}]  # the last weights, then older
        weights += [snap.read_snapshot(run, s, folder=EPOCHS_DIR) for s in steps[1:]]
        scores = {}
        for k in range(1, len(weights) + 1):
            model.load_state_dict(mean_weights(reversed(weights[:k])))  # oldest first, as translate-train sums
            hyps = translate_texts(model, tokenizer, val_de[:tuned], beam_size=1, length_penalty=None,
                                   batch_size=100)
            scores[k] = bleu(hyps, val_en[:tuned])
            print(f"  {run}: the last {k} ({', '.join(map(str, steps[:k]))}): {scores[k]:.2f}", flush=True)
        results.append({"run": str(run), "steps": steps, "val_bleu": scores})
        rows.append((str(run), *(f"{scores[k]:.2f}" if k in scores else "-" for k in range(1, most + 1))))
    print("\nval BLEU (greedy) of the mean of the last k epochs' weights (k = 1: the last weights)\n")
    print(table(rows, ["run", *(f"k = {k}" for k in range(1, most + 1))]))
    return results


def speed_without_openblas_settings(args) -> dict | None:
    """The speed again in a child without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, when this environment sets them."""
    import subprocess

    if not {"OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"} & set(os.environ):
        print("OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are not set: the speed above is what a user's machine runs")
        return None
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    out = Path(args.out) / "speed-unset.json"
    subprocess.run([sys.executable, __file__, "--speed-only", "--speed-json", str(out), "--threads", str(args.threads),
                    "--data-dir", args.data_dir, "--out", args.out, "--speed-batches", str(args.speed_batches)],
                   env=env, check=True)
    return json.loads(out.read_text())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[30.0, 60.0, 120.0],
                    help="budgets of the default run (default: 30 60 120)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds of each budget (default: 0 1)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="settings",
                    help="a translate-train setting changed from its default for these runs (repeatable), "
                         "e.g. --set tokenizer=unigram; the run's folder is named after it")
    ap.add_argument("--score", nargs="+", type=Path, metavar="RUN", help="score these run directories instead of training")
    ap.add_argument("--windows", action="store_true",
                    help="with --score: the val BLEU of the mean of the last 1 … 5 epochs' weights of each run")
    ap.add_argument("--data-dir", default=shared_data_dir(), help="folder holding multi30k/ (default: ../shared/data)")
    ap.add_argument("--out", default="out/bench-translate", help="folder of the runs (default: out/bench-translate)")
    ap.add_argument("--speed-batches", type=int, default=20, help="batches timed for the speed comparison (0: none)")
    ap.add_argument("--shapes", action="store_true",
                    help="only the tokens/s of translate-train's step for several model shapes and vocabularies")
    ap.add_argument("--speed-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--speed-json", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=2,
                    help="threads for NumPy's BLAS and for PyTorch alike in the speed comparison (default: 2)")
    args = ap.parse_args()
    settings = []
    for setting in args.settings:  # checked before any speed run or training, not minutes into the command
        name, sep, value = setting.partition("=")
        if not sep or name.replace("-", "_") not in TranslationConfig.__dataclass_fields__:
            ap.error(f"--set {setting}: give NAME=VALUE with NAME a translate-train option (e.g. tokenizer=unigram)")
        settings.append(f"{name.replace('_', '-')}={value}")  # one spelling: translate-train's flag and the folder
    args.settings = settings
    from threadpoolctl import threadpool_limits

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"threads": args.threads}
    if args.windows:
        if not args.score:
            ap.error("--windows reads runs already made: give them with --score RUN …")
        result["windows"] = averaging_windows(args.score, args.data_dir)
        (out / "windows.json").write_text(json.dumps(result, indent=1))
        return
    if args.shapes:
        result["shapes"] = shape_speed(args.data_dir, out, args.speed_batches or 20)
        (out / "shapes.json").write_text(json.dumps(result, indent=1))
        return
    if args.speed_batches:
        threadpool_limits(args.threads, user_api="blas")  # NumPy's BLAS; PyTorch's threads are set in speed()
        cfg = TranslationConfig(data_dir=args.data_dir, out=str(out / "speed"), progress=False, threads=args.threads)
        trainer = TranslationTrainer(cfg, echo=lambda line: None)
        print(f"config: {json.dumps({k: v for k, v in asdict(cfg).items() if k not in ('data_dir', 'out')})}\n")
        result["speed"] = speed(trainer, args.speed_batches, args.threads)
        if args.speed_only:
            Path(args.speed_json).write_text(json.dumps(result["speed"]))
            return
        result["speed_openblas_unset"] = speed_without_openblas_settings(args)
    if args.score:
        runs = args.score
    else:
        runs = []
        suffix = "".join(f"-{s.replace('=', '-')}" for s in args.settings)
        for minutes in args.minutes:
            for seed in args.seeds:
                run = out / f"m{minutes:g}-s{seed}{suffix}"
                train_run(minutes, seed, args.data_dir, run, args.settings)
                runs.append(run)
    result["quality"] = quality(runs, args.data_dir)
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    if result.get("speed"):
        print(f"\nspeed ratio scratchllm / pytorch (tokens/s): {result['speed']['ratio']:.2f}")


if __name__ == "__main__":
    main()
