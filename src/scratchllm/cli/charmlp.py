"""``scratchllm charmlp``: the next-character model of Bengio et al. (2003).

    scratchllm charmlp train [--data PATH] [--context N] ...   train, save to out/charmlp
    scratchllm charmlp generate [--prompt TEXT] ...             sample text from it
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from ..errors import ScratchError
from . import check_output_dir, number

DEFAULT_DIR = "out/charmlp"

DESCRIPTION = """\
Next-character prediction from a fixed window (Bengio et al., 2003): each of the
last N characters becomes a vector (its embedding), the vectors side by side go
through a tanh hidden layer, and a softmax scores every character of the
vocabulary as the next one. Text is then generated one character at a time.

  scratchllm charmlp train                    on the built-in corpus, saved to out/charmlp
  scratchllm charmlp generate --prompt "The "
  scratchllm explain charmlp --text "The "    see the window, the ids and the top guesses"""


def register(subparsers) -> None:
    p = subparsers.add_parser("charmlp", help="next-character model (Bengio et al. 2003): train, generate",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=lambda args: _no_verb(p))
    sub = p.add_subparsers(dest="action", metavar="{train,generate}")

    t = sub.add_parser("train", help="train on the built-in corpus or a text file, then save",
                       description="Train on random windows of the text with mini-batch gradient descent "
                                   "(learning rate decaying along a cosine); report the validation loss "
                                   "next to the unigram entropy, save, and print a sample.")
    t.add_argument("--data", default="builtin",
                   help="'builtin' (Python's documentation topics), a text file, a folder, or a dataset name")
    t.add_argument("--max-chars", default="0", metavar="N", help="use only the first N characters (default: all)")
    t.add_argument("--context", default="8", metavar="N", help="characters the model sees (default: 8)")
    t.add_argument("--embd", default="16", metavar="N", help="numbers per character embedding (default: 16)")
    t.add_argument("--hidden", default="256", metavar="N", help="hidden tanh neurons (default: 256)")
    t.add_argument("--steps", default="10000", metavar="N", help="training steps (default: 10000)")
    t.add_argument("--batch-size", default="64", metavar="N", help="windows per step (default: 64)")
    t.add_argument("--lr", default="0.5", help="starting learning rate; it falls to a tenth (default: 0.5)")
    t.add_argument("--seed", default="0", help="seed of the weights and the batches (default: 0)")
    t.add_argument("--out", default=DEFAULT_DIR, metavar="DIR", help=f"where to save (default: {DEFAULT_DIR})")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=run_train)

    g = sub.add_parser("generate", help="sample text, one character at a time",
                       description="Continue a prompt by sampling one character at a time. --temperature "
                                   "divides the scores before the softmax: 0 = always the most likely, "
                                   "<1 safer, >1 wilder. The same --seed gives the same text.")
    g.add_argument("--weights", default=DEFAULT_DIR, metavar="DIR", help=f"a trained model (default: {DEFAULT_DIR})")
    g.add_argument("--prompt", default="", help="text to continue (default: none, as at the start of a text)")
    g.add_argument("--length", default="300", metavar="N", help="characters to generate (default: 300)")
    g.add_argument("--temperature", default="0.8", metavar="T", help="≥ 0 (default: 0.8)")
    g.add_argument("--top-k", default=None, metavar="K", help="sample only from the K most likely (default: all)")
    g.add_argument("--top-p", default=None, metavar="P",
                   help="sample only from the most likely characters that together reach P, 0 < P ≤ 1 (default: off)")
    g.add_argument("--seed", default=None, help="random seed (default: a fresh one each time)")
    g.set_defaults(func=run_generate)


def _no_verb(parser) -> int:
    parser.print_help(sys.stderr)
    return 2


# ---- shared with `scratchllm explain charmlp` ----------------------------------------------------
def unigram_entropy(ids) -> float:
    """Nats per character of a model that knows only how often each character occurs."""
    import numpy as np

    counts = np.bincount(np.asarray(ids))
    p = counts[counts > 0] / len(ids)
    return float(-(p * np.log(p)).sum())


def quick_model(echo=None):
    """A small model trained now, from seed 0, on the start of the built-in corpus (a few seconds)."""
    import numpy as np

    from ..data import load_text
    from ..models.charmlp import CharMLP, fit
    from ..tokenizers import CharTokenizer

    start = time.perf_counter()
    text = load_text("builtin")
    tok = CharTokenizer.from_text(text)           # every character, so any built-in text encodes
    ids = np.asarray(tok.encode(text[:100_000]))
    model = CharMLP(tok.vocab_size, context=8, n_embd=16, n_hidden=128, seed=0)
    res = fit(model, ids[:90_000], ids[90_000:], steps=1000, batch_size=64, lr=0.5, eval_every=1000,
              rng=np.random.default_rng(0))
    (echo or (lambda s: print(s, file=sys.stderr)))(
        f"note: no model saved in {DEFAULT_DIR}, so a small one was trained now from seed 0 "
        f"({time.perf_counter() - start:.1f} s, validation loss {res.val_loss:.2f}); "
        f"`scratchllm charmlp train` trains a better one")
    return model, tok


def check_text(tok, text: str, option: str) -> None:
    """A clear error naming the characters of ``text`` that the vocabulary lacks."""
    def known(ch):
        try:
            return len(tok.encode(ch)) == 1
        except ScratchError:
            return False

    unknown = sorted(c for c in set(text) if not known(c))
    if unknown:
        raise ScratchError(f"{option} has characters the model never saw in training: "
                           f"{', '.join(map(repr, unknown))}; use only characters of its training text")


def load_charmlp(weights):
    """(model, tokenizer, where from). ``weights`` None: the saved default, else a quick model."""
    from .. import checkpoint
    from ..models import CharMLP

    if weights is None:
        if not (Path(DEFAULT_DIR) / "config.json").is_file():
            return (*quick_model(), "trained just now from seed 0")
        weights = DEFAULT_DIR
    model = checkpoint.load(weights)
    if not isinstance(model, CharMLP):
        raise ScratchError(f"{weights} holds a {type(model).__name__}, not a CharMLP")
    return model, checkpoint.load_tokenizer(weights), str(weights)


# ---- the verbs -------------------------------------------------------------------------------------
def run_train(args) -> int:
    import numpy as np

    from .. import checkpoint
    from ..data import load_text
    from ..models.charmlp import CharMLP, fit, pad_id_for
    from ..plot import write_log
    from ..tokenizers import CharTokenizer

    context = number(args.context, "--context", int, 1)
    embd, hidden = number(args.embd, "--embd", int, 1), number(args.hidden, "--hidden", int, 1)
    steps, batch = number(args.steps, "--steps", int, 1), number(args.batch_size, "--batch-size", int, 1)
    lr, seed = number(args.lr, "--lr", float), number(args.seed, "--seed", int, 0)
    max_chars = number(args.max_chars, "--max-chars", int, 0)
    if lr <= 0:
        raise ScratchError(f"--lr must be above 0, got {args.lr}")
    check_output_dir(args.out)  # before the training, not after it

    text = load_text(args.data)
    if max_chars:
        text = text[:max_chars]
    tok = CharTokenizer.from_text(text)
    ids = np.asarray(tok.encode(text))
    cut = int(0.9 * len(ids))
    train_ids, val_ids = ids[:cut], ids[cut:]
    if len(val_ids) <= context:
        raise ScratchError(f"the text has {len(ids)} characters, too few for a context of {context} with a "
                           "10% validation split: use more text or a smaller --context")
    rng = np.random.default_rng(seed)
    model = CharMLP(tok.vocab_size, context, embd, hidden, rng=rng)
    print(f"{len(text):,} characters, {tok.vocab_size} distinct; {model.num_parameters():,} parameters; "
          f"unigram entropy {unigram_entropy(train_ids):.3f} nats/char (a model blind to the context)")

    bar = None
    if not args.no_progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, unit="step", desc="training", file=sys.stderr)

    def on_step(step, loss):
        if bar is not None:
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss:.3f}")

    start = time.perf_counter()
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # a diverging run is reported as one clear error
            res = fit(model, train_ids, val_ids, steps=steps, batch_size=batch, lr=lr, min_lr=lr / 10,
                      eval_every=max(1, steps // 10), rng=rng, on_step=on_step)
    finally:
        if bar is not None:
            bar.close()
    for r in res.history:
        print(f"step {r['step']:6d}  train loss {r['train_loss']:.3f}  val loss {r['val_loss']:.3f}")
    uniform = math.log(tok.vocab_size)  # the loss of guessing every character equally likely
    verdict = f"perplexity {math.exp(res.val_loss):.2f}" if res.val_loss < uniform \
        else f"no better than guessing uniformly, {uniform:.3f}: try a smaller --lr"
    print(f"trained in {time.perf_counter() - start:.1f} s; val loss {res.val_loss:.3f} nats/char ({verdict})")
    extra = {"training": {"data": str(args.data), "chars": len(text), "steps": steps, "seed": seed,
                          "val_loss": res.val_loss}}
    path = checkpoint.save(model, args.out, tokenizer=tok, extra_config=extra)
    write_log(path, res.history)
    print(f"saved to {path}; loss curves: scratchllm plot {path}")
    pad = pad_id_for(tok)
    sample = model.generate([[pad]], 300, temperature=0.8, seed=seed, pad_id=pad)
    print("sample (temperature 0.8):\n" + tok.decode(sample[0, 1:].tolist()))
    return 0


def run_generate(args) -> int:
    from ..models.charmlp import pad_id_for

    length = number(args.length, "--length", int, 0)
    temperature = number(args.temperature, "--temperature", float, 0)
    seed = None if args.seed is None else number(args.seed, "--seed", int, 0)
    top_k = None if args.top_k is None else number(args.top_k, "--top-k", int, 1)
    top_p = None if args.top_p is None else number(args.top_p, "--top-p", float)
    if top_p is not None and not 0 < top_p <= 1:
        raise ScratchError(f"--top-p must be in (0, 1], got {args.top_p}")
    model, tok, _ = load_charmlp(args.weights)
    check_text(tok, args.prompt, "--prompt")
    pad = pad_id_for(tok)
    prompt = tok.encode(args.prompt) if args.prompt else []
    out = model.generate([prompt or [pad]], length, temperature=temperature, top_k=top_k, top_p=top_p,
                         seed=seed, pad_id=pad)
    start = len(prompt) if prompt else 1  # without a prompt, drop the padding character we started from
    print(args.prompt + tok.decode(out[0, start:].tolist()))
    return 0
