"""``scratchllm path``: each model of the path trained on the same text for the same time, and the
validation loss each reaches (the article's "what makes LLMs work so well?", in numbers)."""
from __future__ import annotations

import argparse
import sys

from ..errors import ScratchError
from . import number

DESCRIPTION = """\
Train each model of the path on the same text for the same time and compare
their validation loss on the same held-out characters (the last 10%):

  bigram counts   how often each character followed the previous one (no training)
  CharMLP         the previous 8 characters, embeddings, a tanh layer
  GPT, context 1  a GPT that sees one character: attention has nothing to add
  small GPT       2 layers, width 64, context 64
  larger GPT      4 layers, width 128, context 64

--minutes is the whole budget, shared equally by the four trained models.
The table gives the loss in nats and in bits per character, and a sample
from each model.

  scratchllm path                          the built-in corpus, 4 minutes
  scratchllm path --data tinyshakespeare --minutes 20"""


def register(sub):
    p = sub.add_parser("path", help="the models of the path trained for the same time: a table of their losses",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="builtin",
                   help="the text: 'builtin' (Python's documentation topics), 'tinyshakespeare', a file or a folder "
                        "(default: builtin)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="folder holding registered datasets; else $SCRATCHLLM_DATA_DIR or the cache")
    p.add_argument("--minutes", default="4", metavar="M",
                   help="training time in all, a quarter for each trained model (default: 4)")
    p.add_argument("--threads", default="2", metavar="N",
                   help="threads that share each GPT batch, as in `scratchllm train` (default: 2)")
    p.add_argument("--seed", default="0", help="seed of the weights, the batches and the samples (default: 0)")
    p.add_argument("--sample-chars", default="80", metavar="N", help="characters sampled from each model (default: 80)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..path import format_table, run_path

    minutes = number(args.minutes, "--minutes", float)
    if not 0 < minutes <= 24 * 60:
        raise ScratchError(f"--minutes must be above 0 and at most a day (1440), got {args.minutes}")
    threads = number(args.threads, "--threads", int, 1)
    seed = number(args.seed, "--seed", int, 0)
    chars = number(args.sample_chars, "--sample-chars", int, 1)
    if chars > 10_000:
        raise ScratchError(f"--sample-chars must be at most 10000, got {chars}")
    info, rows = run_path(args.data, minutes, args.data_dir, seed=seed, threads=threads, sample_chars=chars,
                          echo=lambda s: print(s, file=sys.stderr))
    print(format_table(info, rows))
    return 0
