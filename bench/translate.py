"""German → English translation on Multi30k: the default `scratchllm translate-train`
configuration trained under a wall-clock limit, its test2016 BLEU, and its
training speed against the same model in PyTorch.

1. Speed: the first batches of epoch 1, each trained by a fresh scratchllm
   model and by torch.nn.Transformer (same sizes, pre-norm, shared embedding
   tied to the output, sinusoidal positions, dropout 0.1, label smoothing
   0.1, Adam, clipping — written here), interleaved batch by batch.
   Tokens/s counts source + target tokens, padding excluded.
2. Quality: the default configuration trained on Multi30k train until the
   clock runs out (--minutes, default 120), val loss and greedy val BLEU after
   every epoch, then beam search (4, α 0.6) on test2016, scored by
   scratchllm.metrics.bleu and by sacrebleu on the same detokenised, cased
   output.

    python bench/translate.py                   # the full run: about 2 h 10 min
    python bench/translate.py --minutes 10      # a smoke run
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
from scratchllm.metrics import bleu_details  # noqa: E402
from scratchllm.nn import sinusoidal_encoding  # noqa: E402
from scratchllm.optim import clip_grad_norm  # noqa: E402
from scratchllm.translate import translate_texts  # noqa: E402
from scratchllm.translation_train import (TranslationConfig, TranslationTrainer, build_model,  # noqa: E402
                                          build_optimizer, inverse_sqrt_lr)


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
        opt.lr = inverse_sqrt_lr(i, cfg.lr, cfg.warmup_steps)
        ours.zero_grad()
        loss = ours.loss(*batch, label_smoothing=cfg.label_smoothing)
        loss.backward()
        clip_grad_norm(ours.parameters(), cfg.grad_clip)
        opt.step()

    def step_ref(i, batch):
        for g in ref_opt.param_groups:
            g["lr"] = inverse_sqrt_lr(i, cfg.lr, cfg.warmup_steps)
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


# ---- quality -------------------------------------------------------------------------------
def curve_table(log_path: Path) -> str:
    lines = log_path.read_text().splitlines() if log_path.exists() else []
    epochs = [r for r in map(json.loads, lines) if r["kind"] == "epoch"]
    rows = [(r["epoch"], r["step"], f"{r['elapsed_s'] / 60:.1f}", f"{r['train_loss']:.3f}", f"{r['val_loss']:.3f}",
             f"{r.get('val_bleu', float('nan')):.2f}", f"{r['tokens_per_s']:,.0f}") for r in epochs]
    return table(rows, ["epoch", "step", "minutes", "train loss (smoothed)", "val loss", "val BLEU (greedy)",
                        "tokens/s"])


def quality(trainer: TranslationTrainer, data_dir: str, beam: int, out: Path) -> dict:
    import sacrebleu

    trainer.fit()
    t0 = time.perf_counter()
    de, en = multi30k("test2016", data_dir)
    hyps = translate_texts(trainer.model, trainer.tokenizer, de, beam_size=beam, length_penalty=0.6, batch_size=32)
    decode_s = time.perf_counter() - t0
    (out / "test2016.hyp.en").write_text("".join(h + "\n" for h in hyps))
    ours, ref = bleu_details(hyps, en), sacrebleu.corpus_bleu(hyps, [en])
    tps = trainer.train_tokens / max(trainer.train_seconds, 1e-9)
    print(f"\nTraining curve (val BLEU: greedy, first {trainer.cfg.bleu_sentences} val sentences)\n")
    print(curve_table(trainer.log_path))
    print(f"\n{trainer.epoch} epochs + {trainer.batch} batches, {trainer.step} steps; training {tps:,.0f} tokens/s "
          f"(source + target, excluding evaluation)")
    print(f"test2016, beam {beam}, α 0.6 ({decode_s:.0f} s to translate {len(de)} sentences):")
    print(f"  scratchllm.metrics.bleu: {ours}")
    print(f"  sacrebleu:               {ref}")
    return {"bleu": ours.score, "sacrebleu": ref.score, "precisions": ours.precisions, "train_tokens_per_s": tps,
            "epochs": trainer.epoch, "batches": trainer.batch, "steps": trainer.step, "decode_s": decode_s}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=120.0, help="wall-clock limit for training (default: 120)")
    ap.add_argument("--data-dir", default=shared_data_dir(), help="folder holding multi30k/ (default: ../shared/data)")
    ap.add_argument("--out", default="out/bench-translate", help="run directory (default: out/bench-translate)")
    ap.add_argument("--speed-batches", type=int, default=20, help="batches timed for the speed comparison")
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2,
                    help="threads for NumPy's BLAS and for PyTorch alike (default: 2, the machine's cores; "
                         "1 on a machine shared with other jobs, where spinning threads distort both)")
    ap.add_argument("--progress", action="store_true", help="show the training progress bar")
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads, user_api="blas")  # NumPy's BLAS; PyTorch's threads are set in speed()
    os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)  # a BLAS loaded later (by another library)

    # the default configuration; the clock, not the epoch count, ends the run
    cfg = TranslationConfig(data_dir=args.data_dir, out=args.out, epochs=10_000, minutes=args.minutes,
                            progress=args.progress)
    out = Path(args.out)
    trainer = TranslationTrainer(cfg, echo=lambda line: print(line, flush=True))
    print(f"config: {json.dumps({k: v for k, v in asdict(cfg).items() if k not in ('data_dir', 'out')})}\n")
    result = {"speed": speed(trainer, args.speed_batches, args.threads) if args.speed_batches else None}
    result["quality"] = quality(trainer, args.data_dir, args.beam, out)
    result["minutes"], result["threads"] = args.minutes, args.threads
    (out / "results.json").write_text(json.dumps(result, indent=1))
    if result["speed"]:
        print(f"\nspeed ratio scratchllm / pytorch (tokens/s): {result['speed']['ratio']:.2f}")


if __name__ == "__main__":
    main()
