"""``scratchllm export``: write a trained model as a Hugging Face directory (a GPT as GPT-2)."""
from __future__ import annotations

import argparse
import sys

from ..errors import ScratchError
from . import check_output_dir

DESCRIPTION = """\
Write a checkpoint (e.g. the out/ of `scratchllm train`) as a Hugging Face
directory that transformers loads with from_pretrained(OUTDIR):
config.json + model.safetensors — a GPT as GPT-2 (GPT2LMHeadModel), a Llama
as the Llama-family model that computes the same (LlamaForCausalLM, or
Mistral / Qwen2 / Qwen3 where those features are used) — plus the tokenizer
files when the checkpoint's tokenizer has a Hugging Face form (BPE; a
character-level tokenizer has none: then only the model is written). Only
GPTs with learned positions can be exported (GPT-2 has no fixed sinusoidal
encoding); a Transformer (encoder–decoder) cannot be."""


def register(subparsers):
    p = subparsers.add_parser("export", help="write a GPT or Llama checkpoint as a Hugging Face directory",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", "--model", dest="ckpt", default="out", metavar="PATH",
                   help="checkpoint directory (or any model scratchllm reads); --model is another spelling "
                        "(default: out)")
    p.add_argument("--hf", required=True, metavar="OUTDIR",
                   help="folder to write (new, empty, or an earlier export of the same kind, which is replaced)")
    p.add_argument("--no-tokenizer", action="store_true", help="write only the model, not the tokenizer")
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import checkpoint
    from ..hf import save_hf

    check_output_dir(args.hf)
    model, _ = checkpoint.open_model(args.ckpt, tokenizer=False)
    tokenizer, note = None, "no tokenizer"
    if not args.no_tokenizer:
        try:
            tokenizer = checkpoint.load_tokenizer(args.ckpt)
        except ScratchError:
            tokenizer = None  # a checkpoint without tokenizer.json: the model alone
        if tokenizer is not None and not hasattr(tokenizer, "save_hf"):
            print(f"note: the checkpoint's {type(tokenizer).__name__} has no Hugging Face form; "
                  "writing the model only", file=sys.stderr)
            tokenizer = None
        if tokenizer is not None:
            note = f"tokenizer: {type(tokenizer).__name__}, {tokenizer.vocab_size} tokens"
    if tokenizer is not None and tokenizer.vocab_size > getattr(model, "vocab_size", tokenizer.vocab_size):
        raise ScratchError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                           f"{model.vocab_size}; export with --no-tokenizer")
    out = save_hf(model, args.hf, tokenizer=tokenizer)
    m = model
    print(f"wrote {out}: {m.title} with {m.n_layer} layers, {m.n_head} heads, width {m.n_embd}, "
          f"vocab {m.vocab_size}, context {m.context_length} ({m.num_parameters():,} parameters; {note})")
    return 0
