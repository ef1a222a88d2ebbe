"""``scratchllm translate-train``, ``translate``, ``translate-eval``: the
encoder–decoder Transformer, trained on sentence pairs and used to translate.

A sentence is always the value of ``--text``, never a bare word after the verb,
so no sentence can be taken for a sub-command.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from ..errors import ScratchError
from ..files import write_atomic
from . import add_config_options, check_output_dir, check_output_file

DEFAULT_OUT = "out-translate"

_HELP = {
    "data": "parallel dataset: 'multi30k' (German -> English); ignored when --src/--tgt are given",
    "data_dir": "folder holding the dataset files (DIR/multi30k/train.de.gz ...); else $SCRATCHLLM_DATA_DIR or the cache",
    "src": "training source sentences, one per line (instead of --data)",
    "tgt": "training target sentences, line-aligned with --src",
    "val_src": "validation source file (default: the last 5%% of the pairs, at most 1000)",
    "val_tgt": "validation target file, line-aligned with --val-src",
    "out": "run directory: tokenizer, checkpoint (OUT/ckpt), log.jsonl",
    "vocab_size": "joint vocabulary size (source and target together)",
    "tokenizer": "'bpe' (byte-level BPE) or 'unigram' (SentencePiece's unigram model, byte fallback)",
    "d_model": "model width",
    "n_head": "attention heads",
    "n_layers": "encoder layers, and as many decoder layers",
    "d_ff": "feed-forward hidden width",
    "dropout": "share of activations zeroed in training; 0.3 is planned for the two-hour run, and 0.2 scored "
               "higher in 30-minute runs, lower over the two-hour run's steps (bench/RESULTS.md)",
    "max_len": "longest sentence in tokens (longer training pairs are dropped)",
    "epochs": "passes over the training pairs, a resumed run continuing to this many (default: 0 = 30, or as "
              "many as --minutes allows)",
    "max_tokens": "batch size: padded tokens per batch on either side",
    "lr": "peak learning rate, reached after the warmup, then decaying as --schedule says",
    "schedule": "'linear': after the warmup a straight line down to 0 at the run's end (--minutes, else the last "
                "epoch); 'inverse-sqrt': the paper's lr*sqrt(warmup/step), open-ended",
    "average": "at the end, average the last this many epochs' weights into OUT/model if that scores better on "
               "validation than the last weights (1: the last weights)",
    "warmup_steps": "steps of linear learning-rate warmup",
    "eps": "Adam epsilon",
    "grad_clip": "clip the global gradient norm to this (0: no clipping)",
    "threads": "threads that share each batch, each taking a slice of its pairs (1: one thread, BLAS uses all "
               "cores); under mpirun, threads per rank, default 1",
    "bleu_sentences": "validation sentences translated (greedy) for BLEU after each epoch (0: none)",
    "log_interval": "write a training line to log.jsonl every this many steps",
    "max_steps": "stop, saving a checkpoint, at this step (0: no limit)",
    "minutes": "plan the run to end in this many minutes of wall-clock time: the schedule ends there, and the "
               "end's averaging and decoding choice fit in (0: no limit); a resumed run counts the time already spent",
    "save_minutes": "also save a checkpoint this often within an epoch (0: only after epochs)",
    "snapshots": "keep the weights of this many steps in OUT/snapshots, to watch the model learn: step 0, the last, "
                 "and more early than late (0: none)",
}
_SKIP = {"progress", "tune_decoding"}


def register(sub):
    _register_train(sub)
    _register_translate(sub)
    _register_eval(sub)


# ---- translate-train ------------------------------------------------------------------
def _register_train(sub):
    from ..translation_train import TranslationConfig

    p = sub.add_parser("translate-train", help="train a Transformer to translate (default: Multi30k German -> English)",
                       description="Train the encoder-decoder Transformer of 'Attention is all you need' on sentence "
                                   "pairs: Multi30k German -> English by default, or --src/--tgt files. A joint BPE "
                                   "tokenizer is learned first; after 20 steps it says how long the run will take "
                                   "on this machine (with --minutes, again after the first epoch); val loss and val BLEU are printed after each epoch; "
                                   "Ctrl-C saves a checkpoint that --resume continues exactly.")
    add_config_options(p, TranslationConfig, _HELP, _SKIP)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-tune-decoding", action="store_true",
                   help="keep beam 4 and length penalty 0.6 instead of choosing them on validation at the end")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)


def _train_config(args):
    from ..distributed import launched
    from ..translation_train import TranslationConfig, check_config

    cfg = TranslationConfig()
    for f in fields(TranslationConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            setattr(cfg, f.name, value)
    if cfg.src or cfg.tgt:
        cfg.data = ""  # files given: no dataset
    cfg.progress = not args.no_progress
    cfg.tune_decoding = not args.no_tune_decoding
    if args.threads is None and launched()[1] > 1:
        cfg.threads = 1  # under mpirun the ranks share the cores: N ranks × 1 thread = N threads in one process
    check_config(cfg)  # every value, before any data is read or file written
    return cfg


def run_train(args):
    from ..distributed import guard

    with guard("translate-train"):  # under mpirun: an error on one rank ends them all
        return _run_train(args)


def _run_train(args):
    from .. import checkpoint
    from ..translate import translate_texts
    from ..translation_train import MODEL_DIR, TranslationTrainer

    cfg = _train_config(args)
    check_output_dir(cfg.out)  # before the data and the tokenizer, not after them
    trainer = TranslationTrainer(cfg, resume=args.resume)
    if not trainer.world.is_root:  # rank 0 alone speaks, saves and translates the examples
        trainer.fit()
        return 0
    if not args.resume and (Path(cfg.out) / "ckpt").exists():
        print(f"note: {cfg.out}/ckpt exists and will be replaced; use --resume to continue it", file=sys.stderr)
    data = trainer.train_data
    dropped = f" ({data.dropped} longer than {min(cfg.max_len, cfg.max_tokens)} tokens dropped)" if data.dropped else ""
    ranks = f"; {trainer.world.size} ranks × {trainer.cfg.threads} thread(s)" if trainer.world.size > 1 else ""
    print(f"Transformer: {trainer.model.num_parameters():,} parameters, joint vocabulary "
          f"{trainer.tokenizer.vocab_size}, {len(data):,} training pairs{dropped}, "
          f"{len(trainer.val_src):,} validation pairs; run directory {cfg.out}{ranks}")
    trainer.fit()
    print(f"checkpoint: {trainer.ckpt_dir} (to resume from)")
    if trainer.final is None:  # interrupted: the run has not chosen its weights yet
        return 0
    model, tokenizer = checkpoint.open_model(trainer.run / MODEL_DIR)
    decoding = trainer.final["decoding"]
    examples = trainer.val_src[:3]
    hyps = translate_texts(model, tokenizer, examples, beam_size=decoding["beam"],
                           length_penalty=decoding["length_penalty"])
    for src, ref, hyp in zip(examples, trainer.val_tgt, hyps):
        print(f"  source:    {src}\n  reference: {ref}\n  model:     {hyp}")
    return 0


# ---- decoding options shared by translate and translate-eval --------------------------
def _add_decoding(p):
    p.add_argument("--ckpt", "--model", dest="ckpt", default=DEFAULT_OUT, metavar="DIR",
                   help=f"checkpoint directory, or a run directory holding ckpt/; --model is another spelling "
                        f"(default: {DEFAULT_OUT})")
    p.add_argument("--beam", type=int, default=None, metavar="N",
                   help="beam size; 1 = greedy (default: the one the run chose on validation, else 4)")
    p.add_argument("--length-penalty", type=float, default=None, metavar="A",
                   help="GNMT length penalty alpha for beam search; 0 = raw log-probabilities (default: the one "
                        "the run chose on validation, else 0.6)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="sentences decoded together (default: 32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _load(args):
    """(model, tokenizer) of --ckpt, checked to be a translation model."""
    from .. import checkpoint
    from ..models.base import LanguageModel
    from ..translate import special_ids

    if args.beam is not None and args.beam < 1:
        raise ScratchError(f"--beam must be at least 1, got {args.beam}")
    if args.length_penalty is not None and args.length_penalty < 0:
        raise ScratchError(f"--length-penalty must be ≥ 0, got {args.length_penalty}")
    if args.batch_size < 1:
        raise ScratchError(f"--batch-size must be at least 1, got {args.batch_size}")
    model, _ = checkpoint.open_model(args.ckpt, tokenizer=False)
    if not (isinstance(model, LanguageModel) and model.is_encoder_decoder):
        raise ScratchError(f"{args.ckpt} holds a {getattr(model, 'kind', type(model).__name__)} model, not a "
                           "translation model: train one with 'scratchllm translate-train'")
    tokenizer = checkpoint.load_tokenizer(args.ckpt)
    special_ids(tokenizer)
    chosen = checkpoint.saved_config(args.ckpt).get("decoding") or {}
    args.chosen = args.beam is None and args.length_penalty is None and bool(chosen)
    if args.beam is None:
        args.beam = int(chosen.get("beam", 4))
    if args.length_penalty is None:
        args.length_penalty = float(chosen.get("length_penalty", 0.6))
    return model, tokenizer


def _translate(model, tokenizer, lines, args, progress, line_numbers=None):
    """Translations of lines; sentences too long for the model are cut, with a note saying which."""
    from ..translate import too_long, translate_texts

    long = too_long(model, tokenizer, lines)
    if long:
        numbers = [line_numbers[i] if line_numbers else i + 1 for i in long]
        shown = ", ".join(map(str, numbers[:5])) + (" …" if len(long) > 5 else "")
        print(f"note: {len(long)} sentence(s) longer than {model.config.max_len} tokens were cut to fit "
              f"(line {shown})", file=sys.stderr)
    return translate_texts(model, tokenizer, lines, beam_size=args.beam, length_penalty=args.length_penalty or None,
                           batch_size=args.batch_size, progress=progress, truncate=True)


# ---- translate ------------------------------------------------------------------------------
def _register_translate(sub):
    p = sub.add_parser("translate", help="translate a sentence (--text) or a file (--input) with a trained model",
                       description="Translate with a model trained by 'scratchllm translate-train'. "
                                   "A sentence: --text \"Ein Hund rennt über die Wiese.\" (repeat --text for "
                                   "several). A file: --input FILE, one sentence per line, translated in batches "
                                   "to --output (default: standard output); empty lines stay empty.")
    p.add_argument("--text", action="append", metavar="TEXT",
                   help="a sentence to translate, in quotes (may be repeated; one that starts with '-': --text='-…')")
    p.add_argument("--input", metavar="FILE", help="translate this file line by line (plain or .gz)")
    p.add_argument("--output", metavar="FILE", help="write the translations here (default: standard output)")
    _add_decoding(p)
    p.add_argument("stray", nargs="*", help=argparse.SUPPRESS)  # a sentence typed without --text
    p.set_defaults(func=run_translate)


def run_translate(args):
    from ..data import read_lines

    if args.stray:
        raise ScratchError(f"unexpected words {' '.join(args.stray)!r}: give the sentence with --text, in quotes, "
                           f"e.g. scratchllm translate --text \"Ein Hund rennt über die Wiese.\"")
    if bool(args.text) == bool(args.input):
        raise ScratchError("give either --text SENTENCE or --input FILE")
    if args.output and not args.input:
        raise ScratchError("--output goes with --input FILE")
    if args.output:
        check_output_file(args.output)  # before the translating, not after it
    model, tokenizer = _load(args)
    if args.text:
        for line in _translate(model, tokenizer, args.text, args, progress=False):
            print(line)
        return 0
    lines = read_lines(args.input)
    filled = [i for i, line in enumerate(lines) if line]
    out = [""] * len(lines)
    hyps = _translate(model, tokenizer, [lines[i] for i in filled], args, progress=not args.no_progress,
                      line_numbers=[i + 1 for i in filled])
    for i, hyp in zip(filled, hyps):
        out[i] = hyp
    text = "".join(line + "\n" for line in out)
    if args.output:
        write_atomic(args.output, text)
        print(f"{len(lines)} lines translated to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


# ---- translate-eval -------------------------------------------------------------------------
def _register_eval(sub):
    p = sub.add_parser("translate-eval", help="corpus BLEU of a translation model on a test set",
                       description="Translate a test set and print its corpus BLEU (sacreBLEU's default: 13a "
                                   "tokens, cased, on the detokenised output) with the 1- to 4-gram precisions "
                                   "and the brevity penalty. The test set is a Multi30k split (--split, German -> "
                                   "English) or two line-aligned files (--src, --ref).")
    p.add_argument("--split", default=None, help="Multi30k split: test2016 (default), val or train")
    p.add_argument("--data-dir", metavar="DIR", help="folder holding the Multi30k files; else $SCRATCHLLM_DATA_DIR or the cache")
    p.add_argument("--src", metavar="FILE", help="source sentences, one per line (instead of --split)")
    p.add_argument("--ref", metavar="FILE", help="reference translations, line-aligned with --src")
    p.add_argument("--output", metavar="FILE", help="also write the translations here")
    _add_decoding(p)
    p.set_defaults(func=run_eval)


def run_eval(args):
    from ..data import load_parallel, multi30k
    from ..metrics import bleu_details, bleu_signature

    if (args.src is None) != (args.ref is None):
        raise ScratchError("give both --src and --ref (line-aligned files)")
    if args.src and args.split:
        raise ScratchError("give either --split or --src/--ref, not both")
    if args.output:
        check_output_file(args.output)
    model, tokenizer = _load(args)
    if args.src:
        src, refs = load_parallel(args.src, args.ref)
        name = args.src
    else:
        name = args.split or "test2016"
        src, refs = multi30k(name, args.data_dir)
    hyps = _translate(model, tokenizer, src, args, progress=not args.no_progress)
    if args.output:
        write_atomic(args.output, "".join(h + "\n" for h in hyps))
    chosen = " (chosen on validation by translate-train)" if args.chosen else ""
    print(f"{name}: {len(src)} sentences, beam {args.beam}, length penalty {args.length_penalty:g}{chosen}")
    print(bleu_details(hyps, refs))
    print(f"signature: {bleu_signature()}")
    return 0
