"""``scratchllm train``: a GPT on the built-in corpus, or on your text."""
from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path

from ..errors import ScratchError
from . import add_config_options, check_output_dir

_HELP = {
    "data": "text to learn: 'builtin' (Python's documentation topics), 'tinyshakespeare', a file or a folder",
    "data_dir": "folder holding registered datasets (e.g. DIR/tinyshakespeare/input.txt); else $SCRATCHLLM_DATA_DIR or the cache",
    "tokenizer": "'char' (one token per character), 'bpe' (train a byte-level BPE), 'unigram' (train a "
                 "SentencePiece-style unigram model, lossless: identity normalisation, byte fallback), "
                 "or a tokenizer file",
    "bpe_vocab_size": "vocabulary size when --tokenizer bpe or unigram",
    "out": "run directory: token files, checkpoint (OUT/ckpt), log.jsonl, loss.png (with matplotlib)",
    "block_size": "context length in tokens",
    "grad_accum": "micro-batches per optimizer step (same gradient as a batch this many times bigger)",
    "max_iters": "optimizer steps in total (a resumed run continues to this many)",
    "min_lr": "learning rate at the end of the cosine decay",
    "warmup_iters": "steps of linear learning-rate warmup",
    "lr_decay_iters": "the learning-rate schedule's length: the cosine from --lr reaches --min-lr at this step and "
                      "stays there (0: --max-iters); kept on --resume unless given again",
    "threads": "threads that share each batch, each taking a slice of its rows (1: one thread, BLAS uses all cores); "
               "under mpirun, threads per rank, default 1",
    "grad_clip": "clip the global gradient norm to this (0: no clipping)",
    "eval_interval": "evaluate, log and save a checkpoint every this many steps",
    "eval_iters": "batches per evaluation",
    "sample_tokens": "tokens of text to sample at the end (0: none)",
    "n_layer": "transformer blocks, one after the other",
    "n_head": "attention heads in each block; must divide --n-embd",
    "n_embd": "width: the numbers in each token's vector (the embedding size)",
    "dropout": "share of activations zeroed during training, in [0, 1) (0: no dropout)",
    "positional": "position information: 'learned' (a trained row per position, as GPT-2) or 'sinusoidal' "
                  "(the fixed sine/cosine table of Vaswani et al.)",
    "arch": "the model: 'gpt' (GPT-2's design) or 'llama' (RMSNorm, rotary positions, SwiGLU, grouped-query "
            "attention; the same sizes give about the same parameter count)",
    "n_kv_head": "--arch llama: key/value heads, shared by groups of query heads; must divide --n-head "
                 "(0: half of them)",
    "batch_size": "sequences of --block-size tokens in each batch",
    "lr": "peak learning rate of AdamW, reached after the warmup",
    "weight_decay": "AdamW's decoupled weight decay on the weight matrices (0: none)",
    "beta1": "AdamW's decay of its running mean of gradients, in [0, 1)",
    "beta2": "AdamW's decay of its running mean of squared gradients, in [0, 1)",
    "seed": "seed of the initial weights and of the batches drawn (same seed, same run)",
    "snapshots": "keep the weights of this many steps in OUT/snapshots, to watch the model learn: step 0, the last, "
                 "and more early than late (0: none)",
}
_SKIP = {"progress", "bias", "val_frac"}


def register(sub):
    from ..train import PRESETS, TrainConfig

    p = sub.add_parser("train", help="train a GPT or a Llama (--arch llama); defaults: a small char-level GPT on the built-in corpus",
                       description="Train a GPT (or a Llama: --arch llama). With no arguments: 4 layers, width 128, char-level, on the "
                                   "built-in corpus (Python's own documentation text), a few minutes on 2 cores. "
                                   "Under 'mpirun -n N' the N ranks share each batch (README: several processes).")
    add_config_options(p, TrainConfig, _HELP, _SKIP)
    p.add_argument("--preset", choices=sorted(PRESETS), help="model size: " +
                   ", ".join(f"{k} = {v[0]} layers, {v[1]} heads, width {v[2]}" for k, v in PRESETS.items()))
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)

    pl = sub.add_parser("plot", help="plot the loss curves of a training run to a PNG")
    pl.add_argument("run", nargs="?", default="out", help="run directory with log.jsonl (default: out)")
    pl.add_argument("--output", help="PNG path (default: RUN/loss.png)")
    pl.set_defaults(func=run_plot)


def _config(args):
    from ..distributed import launched
    from ..train import PRESETS, TrainConfig

    cfg = TrainConfig()
    if args.preset:
        cfg.n_layer, cfg.n_head, cfg.n_embd = PRESETS[args.preset]
    for f in fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            setattr(cfg, f.name, value)
    cfg.progress = not args.no_progress
    if args.threads is None and launched()[1] > 1:
        cfg.threads = 1  # under mpirun the ranks share the cores: N ranks × 1 thread = N threads in one process
    for name in ("batch_size", "block_size", "max_iters", "n_layer", "n_head", "n_embd", "grad_accum", "eval_interval", "eval_iters"):
        if getattr(cfg, name) < 1:
            raise ScratchError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    check_config(cfg)
    check_output_dir(cfg.out)  # before the data and the tokenizer, not after them
    return cfg


def check_config(cfg) -> None:
    """Every value of a TrainConfig checked before any data is read or any file written."""
    from ..models.gpt import GPTConfig
    from ..snapshots import check_count

    for name in ("batch_size", "block_size", "max_iters", "n_layer", "n_head", "n_embd", "grad_accum", "eval_interval",
                 "eval_iters", "threads"):
        if getattr(cfg, name) < 1:
            raise ScratchError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    for name in ("warmup_iters", "lr_decay_iters", "sample_tokens", "weight_decay", "grad_clip", "min_lr"):
        if getattr(cfg, name) < 0:
            raise ScratchError(f"--{name.replace('_', '-')} must be at least 0, got {getattr(cfg, name)}")
    check_count(cfg.snapshots)
    if not cfg.lr > 0:
        raise ScratchError(f"--lr must be above 0, got {cfg.lr}")
    if not 0 <= cfg.dropout < 1:
        raise ScratchError(f"--dropout must be in [0, 1), got {cfg.dropout}")
    for name in ("beta1", "beta2"):
        if not 0 <= getattr(cfg, name) < 1:
            raise ScratchError(f"--{name} must be in [0, 1), got {getattr(cfg, name)}")
    if cfg.tokenizer not in ("char", "bpe", "unigram") and not Path(cfg.tokenizer).is_file():
        raise ScratchError(f"--tokenizer must be 'char', 'bpe', 'unigram' or a tokenizer file; "
                           f"{cfg.tokenizer} is none of these")
    if cfg.tokenizer in ("bpe", "unigram") and cfg.bpe_vocab_size < 260:
        raise ScratchError(f"--bpe-vocab-size must be at least 260 (the 256 bytes and some merges), "
                           f"got {cfg.bpe_vocab_size}")
    if cfg.arch not in ("gpt", "llama"):
        raise ScratchError(f"--arch must be 'gpt' or 'llama', not {cfg.arch!r}")
    if cfg.arch == "llama":
        _check_llama(cfg)
    try:  # the model's own checks (width divisible by heads, a known kind of positions)
        GPTConfig(vocab_size=1, block_size=cfg.block_size, n_layer=cfg.n_layer, n_head=cfg.n_head,
                  n_embd=cfg.n_embd, positional=cfg.positional)
    except ScratchError as e:
        raise ScratchError(str(e).replace("n_embd", "--n-embd").replace("n_head", "--n-head")
                           .replace("positional", "--positional")) from None


def _check_llama(cfg) -> None:
    from ..train import llama_config

    if cfg.dropout:
        raise ScratchError("--dropout is not available with --arch llama: the Llama family has no dropout")
    if cfg.n_kv_head < 0 or (cfg.n_kv_head and cfg.n_head % cfg.n_kv_head):
        raise ScratchError(f"--n-kv-head must divide --n-head ({cfg.n_head}), got {cfg.n_kv_head}")
    try:
        llama_config(cfg, vocab_size=1)
    except ScratchError as e:
        raise ScratchError(str(e).replace("hidden_size", "--n-embd").replace("num_attention_heads", "--n-head")
                           .replace("num_key_value_heads", "--n-kv-head")) from None


def run(args):
    from ..distributed import guard

    with guard("train"):  # under mpirun: an error on one rank ends them all
        return _run(args)


def _run(args):
    from ..generate import generate
    from ..train import Trainer

    cfg = _config(args)
    trainer = Trainer(cfg, resume=args.resume)
    if not trainer.world.is_root:  # rank 0 alone speaks, saves and samples
        trainer.fit()
        return 0
    if not args.resume and (Path(cfg.out) / "ckpt").exists():
        print(f"note: {cfg.out}/ckpt exists and will be replaced; use --resume to continue it", file=sys.stderr)
    m = trainer.model
    ranks = f"; {trainer.world.size} ranks × {trainer.cfg.threads} thread(s)" if trainer.world.size > 1 else ""
    print(f"{m.title}: {m.num_parameters():,} parameters, vocab {trainer.tokenizer.vocab_size}, "
          f"{len(trainer.train_ids):,} training tokens; run directory {cfg.out}{ranks}")
    trainer.fit()
    print(f"checkpoint: {trainer.ckpt_dir}")
    print(_curves_line(cfg.out))
    if trainer.cfg.sample_tokens and trainer.step >= trainer.cfg.max_iters:
        print("--- sample ---")
        tok = trainer.tokenizer
        prompt = tok.encode("\n") if "\n" in tok.decode(list(range(tok.vocab_size))) else [0]
        ids = generate(m, [prompt], trainer.cfg.sample_tokens, temperature=0.8, seed=trainer.cfg.seed)
        print(tok.decode([int(i) for i in ids[0, len(prompt):]]))
    return 0


def _curves_line(run) -> str:
    """Where the loss curves are: loss.png when matplotlib draws it, else the log and how to draw it."""
    from ..plot import plot_run

    try:
        png = plot_run(run, quiet=True)
    except ScratchError as e:
        return f"loss curves: none drawn ({e})"
    if png is not None:
        return f"loss curves: {png}"
    return (f"loss curves: {Path(run) / 'log.jsonl'}, one line per evaluation; for {Path(run) / 'loss.png'}: "
            f"pip install matplotlib (the plot extra), then scratchllm plot {run}")


def run_plot(args):
    from ..plot import plot_run
    from . import check_output_file

    if args.output:
        check_output_file(args.output)
    path = plot_run(args.run, args.output)
    print(path)
    return 0
