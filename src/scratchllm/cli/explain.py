"""``scratchllm explain``: a small model's computation, written out as on paper.

    scratchllm explain classifier 32 107 56 11.2
    scratchllm explain charmlp --text "The "
    scratchllm explain positions --ckpt out
    scratchllm explain bpe --tokenizer tok.json "cats"
"""
from __future__ import annotations

import argparse

from ..errors import ScratchError
from . import charmlp as charmlp_cli
from . import classify as classify_cli

DESCRIPTION = """\
Print every number a small model computes for one input, in order, as you would
on paper: inputs, weights, sums, activations, scores, the answer.

  scratchllm explain classifier 32 107 56 11.2    leaf or flower, neuron by neuron
  scratchllm explain charmlp --text "The "        the next character after a text
  scratchllm explain classifier 32 107 56 11.2 --label leaf    … and one training step by hand
  scratchllm explain positions                    the sinusoidal position table and its formula
  scratchllm explain bpe --tokenizer tok.json "cats"    byte-pair merges, one at a time"""


def register(subparsers) -> None:
    p = subparsers.add_parser("explain", help="show a small model's computation step by step",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=lambda args: _no_verb(p))
    sub = p.add_subparsers(dest="model")  # the help lists every model that has a sub-parser

    c = sub.add_parser("classifier", help="the leaf / flower classifier on R G B VOLUME",
                       description="Every multiplication, sum and activation of the leaf / flower classifier "
                                   f"for one measurement, e.g. `scratchllm explain classifier {classify_cli.EXAMPLE}`.")
    c.add_argument("values", nargs="*", metavar="R G B VOLUME", help="colour 0–255 and volume in cm³")
    c.add_argument("--weights", metavar="DIR", help=f"a saved classifier (default: {classify_cli.DEFAULT_DIR}, "
                                                     "or one trained now from seed 0 if none is saved)")
    c.add_argument("--label", metavar="CLASS", help="the right answer (leaf or flower): adds one training step by "
                                                    "hand, the loss, every gradient by the chain rule, the new weights")
    c.add_argument("--lr", default="0.1", help="learning rate of that step (default: 0.1)")
    c.set_defaults(func=run_classifier)

    m = sub.add_parser("charmlp", help="the next-character model on a text",
                       description="The context window, the ids, the embeddings, the hidden layer and the most "
                                   "likely next characters of the CharMLP for one text.")
    m.add_argument("--text", required=True, help="the text so far; the model predicts the character after it")
    m.add_argument("--top", default="10", metavar="N", help="how many next characters to list (default: 10)")
    m.add_argument("--weights", metavar="DIR", help=f"a trained CharMLP (default: {charmlp_cli.DEFAULT_DIR}, "
                                                     "or a small one trained now if none is saved)")
    m.set_defaults(func=run_charmlp)

    pos = sub.add_parser("positions", help="positional encodings: the sinusoidal table, or a checkpoint's rows",
                         description="The fixed sinusoidal table of Vaswani et al. (2017) with its formula, or, "
                                     "with --ckpt, the positions a model adds (its learned rows, or its table).")
    pos.add_argument("--ckpt", metavar="DIR", help="a GPT or Transformer checkpoint (ours or Hugging Face GPT-2)")
    pos.add_argument("--width", default="128", metavar="C",
                     help="width of the sinusoidal table without --ckpt (default: 128)")
    pos.add_argument("--positions", default="8", metavar="N", help="positions (rows) to show (default: 8)")
    pos.add_argument("--dims", default="8", metavar="N", help="dimensions (columns) to show (default: 8)")
    pos.set_defaults(func=run_positions)

    b = sub.add_parser("bpe", help="byte-pair encoding of a text, merge by merge",
                       description="Cut a text into pre-tokens, start each from its bytes and apply the merges "
                                   "one at a time, lowest rank first, e.g. "
                                   "`scratchllm explain bpe --tokenizer tok.json \"cats\"`.")
    b.add_argument("text", help="the text (a word, or a few)")
    b.add_argument("--tokenizer", required=True, metavar="PATH",
                   help="a BPE tokenizer file, or a folder with one (tokenizer.json, GPT-2's encoder.json + vocab.bpe)")
    b.set_defaults(func=run_bpe)


def _no_verb(parser) -> int:
    parser.print_help()
    return 2


def run_classifier(args) -> int:
    from ..explain import explain_classifier

    values = classify_cli.parse_measurement(args.values)
    lr = classify_cli.number(args.lr, "--lr", float)
    if lr <= 0:
        raise ScratchError(f"--lr must be above 0, got {args.lr}")
    model, source = classify_cli.load_classifier(args.weights)
    label = None
    if args.label is not None:
        if args.label not in model.classes:
            raise ScratchError(f"--label must be one of {', '.join(model.classes)}, got {args.label!r}")
        label = list(model.classes).index(args.label)
    print(explain_classifier(model, values, source))
    if label is not None:
        from ..explain.classifier import explain_training_step

        print()
        print(explain_training_step(model, values, label, lr, first_step=len(model.hidden) + 4))
    return 0


def run_positions(args) -> int:
    from ..explain.positions import explain_learned, explain_sinusoidal

    n_pos = classify_cli.number(args.positions, "--positions", int, 1)
    n_dims = classify_cli.number(args.dims, "--dims", int, 1)
    if args.ckpt is None:
        print(explain_sinusoidal(classify_cli.number(args.width, "--width", int, 1), n_pos, n_dims))
        return 0
    from .. import checkpoint

    model = checkpoint.load(args.ckpt)
    if not hasattr(model, "config") or getattr(model, "kind", "") not in ("gpt", "transformer"):
        raise ScratchError(f"{args.ckpt} holds a {type(model).__name__}, which has no positions: "
                           "give a GPT or Transformer checkpoint")
    print(explain_learned(model, n_pos, n_dims, source=str(args.ckpt)))
    return 0


def run_bpe(args) -> int:
    from .. import tokenizers
    from ..explain.bpe import explain_bpe

    print(explain_bpe(tokenizers.load(args.tokenizer), args.text, source=str(args.tokenizer)))
    return 0


def run_charmlp(args) -> int:
    from ..explain import explain_charmlp

    top = classify_cli.number(args.top, "--top", int, 1)
    if not args.text:
        raise ScratchError("--text is empty: give some text, e.g. --text \"The \"")
    model, tok, source = charmlp_cli.load_charmlp(args.weights)
    charmlp_cli.check_text(tok, args.text, "--text")
    print(explain_charmlp(model, tok, args.text, top=min(top, model.vocab_size), source=source))
    return 0

