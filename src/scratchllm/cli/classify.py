"""``scratchllm classify``: train the leaf / flower classifier, or ask it.

    scratchllm classify train               train from a fixed seed, save to out/classifier
    scratchllm classify 32 107 56 11.2      leaf or flower? (same as `classify predict ...`)

The four numbers are R G B (0–255) and the volume in cm³. A first word that
is not a sub-verb is read as the start of those numbers, so `train` can never
be mistaken for a number, nor a number (even a negative one) for an option.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from ..errors import ScratchError
from . import Parser, check_output_dir, number

DEFAULT_DIR = "out/classifier"
EXAMPLE = "32 107 56 11.2"
VERBS = ("train", "predict")

DESCRIPTION = f"""\
A tiny neural network that tells leaves from flowers by colour (R, G, B, 0–255)
and volume (cm³): 4 inputs, a hidden layer, 2 outputs (leaf, flower); the larger
output is the answer.

  scratchllm classify train              train it (about a second) and save it to {DEFAULT_DIR}
  scratchllm classify {EXAMPLE}     ask it (same as `classify predict {EXAMPLE}`)
  scratchllm explain classifier {EXAMPLE}   see every multiplication it does"""


class _DefaultVerbParser(Parser):
    """Reads `classify 32 107 56 11.2` as `classify predict 32 107 56 11.2`."""

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        if args and args[0] not in VERBS and args[0] not in ("-h", "--help"):
            args.insert(0, "predict")
        return super().parse_known_args(args, namespace)


def register(subparsers) -> None:
    p = subparsers.add_parser("classify", help="leaf or flower? train the classifier or ask it",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=lambda args: _no_verb(p))
    sub = p.add_subparsers(dest="action", metavar="{train,predict}", parser_class=Parser)
    p.__class__ = _DefaultVerbParser  # the first word picks a sub-verb, or is the first number

    t = sub.add_parser("train", help="train from a fixed seed and save (about a second)",
                       description="Generate the labelled data, train with gradient descent and early stopping "
                                   "on the validation loss, print the epochs, save the best weights.")
    t.add_argument("--out", default=DEFAULT_DIR, metavar="DIR", help=f"where to save (default: {DEFAULT_DIR})")
    t.add_argument("--seed", default="0", help="seed of the data and of the initial weights (default: 0)")
    t.add_argument("--hidden", default="8", metavar="SIZES",
                   help="hidden layer sizes, comma-separated, e.g. 8 or 16,8; 3 is the article's picture (default: 8)")
    t.add_argument("--activation", default="relu", choices=["relu", "tanh", "sigmoid", "gelu"],
                   help="activation of the hidden neurons (default: relu)")
    t.add_argument("--epochs", default="300", metavar="N", help="most passes over the data (default: 300)")
    t.add_argument("--patience", default="25", metavar="N",
                   help="stop after this many epochs without a better validation loss (default: 25)")
    t.add_argument("--lr", default="0.1", help="learning rate (default: 0.1)")
    t.add_argument("--examples", default="1000", metavar="N", help="examples to generate, 20%% for validation (default: 1000)")
    t.set_defaults(func=run_train)

    q = sub.add_parser("predict", help="classify one measurement: R G B VOLUME",
                       description=f"Classify one measurement, e.g. `scratchllm classify {EXAMPLE}`.")
    q.add_argument("values", nargs="*", metavar="R G B VOLUME",
                   help="colour 0–255 and volume in cm³ (the word `predict` may be left out)")
    q.add_argument("--weights", metavar="DIR",
                   help=f"a saved classifier (default: {DEFAULT_DIR}, or a quickly trained one if none is saved)")
    q.set_defaults(func=run_predict)


def _no_verb(parser) -> int:
    parser.print_help(sys.stderr)
    return 2


# ---- shared with `scratchllm explain classifier` ---------------------------------------------
def parse_measurement(values) -> list[float]:
    """R G B VOLUME as four checked numbers."""
    names = ("R", "G", "B", "VOLUME")
    out = []
    for i, text in enumerate(values):
        name = names[i] if i < 4 else f"value {i + 1}"
        try:
            v = float(text)
        except ValueError:
            hint = " (did you mean `classify train`?)" if i == 0 and text.lower().startswith("tr") else ""
            raise ScratchError(f"{name} must be a number, got {text!r}{hint}") from None
        if not math.isfinite(v):
            raise ScratchError(f"{name} must be a finite number, got {text!r}")
        out.append(v)
    if len(out) != 4:
        got = "nothing" if not values else f"{len(values)} ({' '.join(values)})"
        raise ScratchError(f"give 4 numbers, R G B VOLUME (e.g. {EXAMPLE}); got {got}")
    for name, v in zip("RGB", out[:3]):
        if not 0 <= v <= 255:
            raise ScratchError(f"{name} is a colour channel from 0 to 255, got {v:g}")
    if out[3] <= 0:
        raise ScratchError(f"VOLUME is in cm³ and must be above 0, got {out[3]:g}")
    return out


def load_classifier(weights, echo=None):
    """(model, where it came from). ``weights`` None: the saved default, else
    one trained now from seed 0 (said on stderr)."""
    from .. import checkpoint
    from ..models import Classifier
    from ..models.classifier import train_classifier

    if weights is None and not (Path(DEFAULT_DIR) / "config.json").is_file():
        start = time.perf_counter()
        model, result = train_classifier(seed=0)
        echo = echo or (lambda s: print(s, file=sys.stderr))
        echo(f"note: no classifier saved in {DEFAULT_DIR}, so one was trained now from seed 0 "
             f"({time.perf_counter() - start:.1f} s, validation accuracy {100 * result.val_accuracy:.1f}%); "
             f"`scratchllm classify train` saves one")
        return model, "trained just now from seed 0"
    path = weights or DEFAULT_DIR
    model = checkpoint.load(path)
    if not isinstance(model, Classifier):
        raise ScratchError(f"{path} holds a {type(model).__name__}, not a classifier")
    return model, str(path)


# ---- the verbs ---------------------------------------------------------------------------------
def run_train(args) -> int:
    import numpy as np

    from .. import checkpoint
    from ..models.classifier import train_classifier
    from ..plot import write_log

    seed = number(args.seed, "--seed", int, 0)
    epochs = number(args.epochs, "--epochs", int, 1)
    patience = number(args.patience, "--patience", int, 1)
    lr = number(args.lr, "--lr", float)
    examples = number(args.examples, "--examples", int, 20)
    hidden = [number(h, "--hidden", int, 1) for h in args.hidden.split(",")]
    check_output_dir(args.out)
    if lr <= 0:
        raise ScratchError(f"--lr must be above 0, got {args.lr}")

    def on_epoch(r):
        if r["epoch"] == 1 or r["epoch"] % 10 == 0:
            print(f"epoch {r['epoch']:4d}  train loss {r['train_loss']:.4f}  val loss {r['val_loss']:.4f}  "
                  f"val accuracy {100 * r['val_accuracy']:5.1f}%{'  (best so far)' if r['best'] else ''}")

    start = time.perf_counter()
    with np.errstate(over="ignore", invalid="ignore"):  # a diverging run is reported as one clear error
        model, res = train_classifier(seed=seed, n_examples=examples, hidden=hidden, activation=args.activation,
                                      epochs=epochs, lr=lr, patience=patience, on_epoch=on_epoch)
    last = res.history[-1]["epoch"]
    why = f"stopped at epoch {last}: no better validation loss for {patience} epochs" if res.stopped_early \
        else f"ran all {last} epochs"
    print(f"{why} ({time.perf_counter() - start:.1f} s)")
    print(f"best epoch {res.best_epoch}: val loss {res.val_loss:.4f}, val accuracy {100 * res.val_accuracy:.1f}% "
          f"(its weights are kept)")
    extra = {"training": {"seed": seed, "examples": examples, "best_epoch": res.best_epoch,
                          "val_loss": res.val_loss, "val_accuracy": res.val_accuracy}}
    path = checkpoint.save(model, args.out, extra_config=extra)
    write_log(path, [{"step": r["epoch"]} | r for r in res.history])
    print(f"saved to {path}; try: scratchllm classify {EXAMPLE}; loss curves: scratchllm plot {path}")
    return 0


def run_predict(args) -> int:
    values = parse_measurement(args.values)
    model, _ = load_classifier(args.weights)
    import numpy as np

    scores = model([values]).data[0].astype(np.float64)
    probs = np.exp(scores - scores.max())
    probs /= probs.sum()
    best = int(scores.argmax())
    print(model.classes[best])
    for k, name in enumerate(model.classes):
        print(f"  {name:<7} score {scores[k]:+8.4f}   probability {100 * probs[k]:6.2f}%")
    return 0
