"""``scratchllm explain``: a small model's computation, written out as on paper.

    scratchllm explain classifier 32 107 56 11.2
    scratchllm explain charmlp --text "The "
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
  scratchllm explain charmlp --text "The "        the next character after a text"""


def register(subparsers) -> None:
    p = subparsers.add_parser("explain", help="show a small model's computation step by step",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=lambda args: _no_verb(p))
    sub = p.add_subparsers(dest="model", metavar="{classifier,charmlp}")

    c = sub.add_parser("classifier", help="the leaf / flower classifier on R G B VOLUME",
                       description="Every multiplication, sum and activation of the leaf / flower classifier "
                                   f"for one measurement, e.g. `scratchllm explain classifier {classify_cli.EXAMPLE}`.")
    c.add_argument("values", nargs="*", metavar="R G B VOLUME", help="colour 0–255 and volume in cm³")
    c.add_argument("--weights", metavar="DIR", help=f"a saved classifier (default: {classify_cli.DEFAULT_DIR}, "
                                                     "or one trained now from seed 0 if none is saved)")
    c.set_defaults(func=run_classifier)

    m = sub.add_parser("charmlp", help="the next-character model on a text",
                       description="The context window, the ids, the embeddings, the hidden layer and the most "
                                   "likely next characters of the CharMLP for one text.")
    m.add_argument("--text", required=True, help="the text so far; the model predicts the character after it")
    m.add_argument("--top", default="10", metavar="N", help="how many next characters to list (default: 10)")
    m.add_argument("--weights", metavar="DIR", help=f"a trained CharMLP (default: {charmlp_cli.DEFAULT_DIR}, "
                                                     "or a small one trained now if none is saved)")
    m.set_defaults(func=run_charmlp)


def _no_verb(parser) -> int:
    parser.print_help()
    return 2


def run_classifier(args) -> int:
    from ..explain import explain_classifier

    values = classify_cli.parse_measurement(args.values)
    model, source = classify_cli.load_classifier(args.weights)
    print(explain_classifier(model, values, source))
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

