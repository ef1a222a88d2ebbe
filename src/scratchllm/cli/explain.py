"""``scratchllm explain``: a small model's computation, written out as on paper.

    scratchllm explain classifier 32 107 56 11.2
    scratchllm explain charmlp --text "The "
    scratchllm explain positions --ckpt out
    scratchllm explain bpe --tokenizer tok.json "cats"
    scratchllm explain unigram --tokenizer tok.json "cats"
    scratchllm explain gpt --ckpt out --text "To be or not" --target " "
    scratchllm explain llama --model smollm2.gguf --text "The capital of France is"
    scratchllm explain transformer --ckpt out-translate --text "Ein Hund rennt über die Wiese."
    scratchllm explain dropout --ckpt out --text "To be or not" --p 0.2
"""
from __future__ import annotations

import argparse
import math

from ..errors import ScratchError
from . import charmlp as charmlp_cli
from . import number
from . import classify as classify_cli
from ..explain.llama import NORMS, SECTIONS

DESCRIPTION = """\
Print every number a small model computes for one input, in order, as you would
on paper: inputs, weights, sums, activations, scores, the answer.

  scratchllm explain classifier 32 107 56 11.2    leaf or flower, neuron by neuron
  scratchllm explain charmlp --text "The "        the next character after a text
  scratchllm explain classifier 32 107 56 11.2 --label leaf    … and one training step by hand
  scratchllm explain positions                    the sinusoidal position table and its formula
  scratchllm explain bpe --tokenizer tok.json "cats"    byte-pair merges, one at a time
  scratchllm explain unigram --tokenizer tok.json "cats"    every segmentation, and why Viterbi picks one
  scratchllm explain gpt --ckpt out --text "To be or not"     a GPT, layer by layer, head by head
  scratchllm explain gpt --ckpt out --text "To be or not" --target " "    … and its backward pass
  scratchllm explain llama --model DIR --text "The cat"    RMSNorm, RoPE, GQA, SwiGLU of a Llama-family model
  scratchllm explain transformer --ckpt DIR --text "Ein Hund rennt."    which source piece each word looked at
  scratchllm explain dropout --ckpt out --text "To be or not"    dropout's mask in a training pass, off in evaluation"""


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
    m.add_argument("--generate", default="0", metavar="N",
                   help="then generate N characters, one step at a time: the window, the prediction, the chosen "
                        "character appended, the window moving on (default: 0)")
    m.add_argument("--temperature", default="0", metavar="T",
                   help="with --generate: 0 picks the most likely character, above 0 samples (default: 0)")
    m.add_argument("--seed", default="0", help="with --generate and --temperature: the sampling seed (default: 0)")
    m.set_defaults(func=run_charmlp)

    pos = sub.add_parser("positions", help="positional encodings: the sinusoidal table, or a checkpoint's rows",
                         description="The fixed sinusoidal table of Vaswani et al. (2017) with its formula, or, "
                                     "with --ckpt, the positions a model adds (its learned rows, or its table).")
    pos.add_argument("--ckpt", "--model", dest="ckpt", metavar="PATH",
                     help="a GPT or Transformer checkpoint (ours or Hugging Face GPT-2); --model is another spelling")
    pos.add_argument("--width", default="128", metavar="C",
                     help="width of the sinusoidal table without --ckpt (default: 128)")
    pos.add_argument("--positions", default="8", metavar="N", help="positions (rows) to show (default: 8)")
    pos.add_argument("--dims", default="8", metavar="N", help="dimensions (columns) to show (default: 8)")
    pos.set_defaults(func=run_positions)

    _tokenizer_verb(sub, "bpe", run_bpe, "byte-pair encoding of a text, merge by merge",
                    "Cut a text into pre-tokens, start each from its bytes and apply the merges one at a time, "
                    "lowest rank first",
                    "a BPE tokenizer file, or a folder with one (tokenizer.json, GPT-2's encoder.json + vocab.bpe)")
    u = _tokenizer_verb(sub, "unigram", run_unigram, "a unigram (SentencePiece) tokenizer's segmentation of a text",
                        "The lattice of a text (every piece that matches, with its log-probability), every "
                        "segmentation with its log-probability, and the Viterbi table that picks the best",
                        "a unigram tokenizer file (ours or a SentencePiece .model)")
    u.add_argument("--top", default="20", metavar="N", help="how many segmentations to list (default: 20)")
    _register_gpt(sub)
    _register_llama(sub)
    _register_transformer(sub)
    _register_dropout(sub)


def _no_verb(parser) -> int:
    parser.print_help()
    return 2


def run_classifier(args) -> int:
    from ..explain import explain_classifier

    values = classify_cli.parse_measurement(args.values)
    lr = number(args.lr, "--lr", float)
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

    n_pos = number(args.positions, "--positions", int, 1)
    n_dims = number(args.dims, "--dims", int, 1)
    if args.ckpt is None:
        print(explain_sinusoidal(number(args.width, "--width", int, 1), n_pos, n_dims))
        return 0
    from .. import checkpoint
    from ..models.base import LanguageModel

    model = checkpoint.load(args.ckpt)
    if not isinstance(model, LanguageModel):
        raise ScratchError(f"{args.ckpt} holds a {type(model).__name__}, which has no positions: "
                           "give a GPT or Transformer checkpoint")
    print(explain_learned(model, n_pos, n_dims, source=str(args.ckpt)))
    return 0


def _tokenizer_verb(sub, name, func, help, description, tokenizer_help):
    """A sub-verb that shows how one tokenizer cuts a text: ``explain NAME --tokenizer PATH TEXT``."""
    v = sub.add_parser(name, help=help,
                       description=f"{description}, e.g. `scratchllm explain {name} --tokenizer tok.json \"cats\"`.")
    v.add_argument("text", help="the text (a word, or a few)")
    v.add_argument("--tokenizer", required=True, metavar="PATH", help=tokenizer_help)
    v.set_defaults(func=func)
    return v


def run_bpe(args) -> int:
    from .. import tokenizers
    from ..explain.bpe import explain_bpe

    print(explain_bpe(tokenizers.load(args.tokenizer), args.text, source=str(args.tokenizer)))
    return 0


def run_unigram(args) -> int:
    from .. import tokenizers
    from ..explain.unigram import explain_unigram

    top = number(args.top, "--top", int, 1)
    print(explain_unigram(tokenizers.load(args.tokenizer), args.text, top=top, source=str(args.tokenizer)))
    return 0


def run_charmlp(args) -> int:
    from ..explain import explain_charmlp

    top = number(args.top, "--top", int, 1)
    if not args.text:
        raise ScratchError("--text is empty: give some text, e.g. --text \"The \"")
    steps = number(args.generate, "--generate", int, 0)
    temperature = number(args.temperature, "--temperature", float, 0)
    seed = number(args.seed, "--seed", int, 0)
    if steps > 500:
        raise ScratchError(f"--generate shows at most 500 steps, got {steps}")
    model, tok, source = charmlp_cli.load_charmlp(args.weights)
    charmlp_cli.check_text(tok, args.text, "--text")
    print(explain_charmlp(model, tok, args.text, top=min(top, model.vocab_size), source=source, generate=steps,
                          temperature=temperature, seed=seed))
    return 0


# ---- explain gpt / explain transformer ------------------------------------------------
GPT_DESCRIPTION = """\
One forward pass of a GPT (or another decoder-only model: a Llama, Qwen or
Mistral trained here, a Hugging Face directory, a GGUF file) on a text, every
number the model's own, in the order of the computation: the tokens and ids, each token's embedding row plus
its position row, a line per block, one attention head worked out (the query,
each key, q·k term by term, the scaling by 1/√D, the softmax, the weighted sum
of the values), the heads concatenated and projected, the residual add, the
final layer norm, the next-token probabilities and how temperature, top-k and
top-p reshape them. --target adds the backward pass: the loss, d loss / d
logits, the gradient reaching each token's residual stream, the largest
weight gradients, and one SGD step taken on a copy of the model.

  scratchllm explain gpt --ckpt out --text "To be or not"
  scratchllm explain gpt --ckpt out --text "To be or not" --layer 2 --head 1 --target " " --lr 0.5"""


def _register_gpt(sub):
    g = sub.add_parser("gpt", help="a GPT on a text: every number of its forward (and backward) pass",
                       description=GPT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("--ckpt", "--model", dest="ckpt", default="out", metavar="PATH",
                   help="a GPT or another decoder-only model: our checkpoint (e.g. the out/ of `scratchllm "
                        "train`), a Hugging Face model directory or a GGUF file; --model is another spelling "
                        "(default: out)")
    g.add_argument("--text", required=True, help="the text so far; the model predicts the token after it")
    g.add_argument("--layer", default="0", metavar="L", help="the block whose attention is worked out (default: 0)")
    g.add_argument("--head", default="0", metavar="H", help="the attention head worked out (default: 0)")
    g.add_argument("--position", default=None, metavar="P",
                   help="the token whose query is followed, from 0 (default: the last)")
    g.add_argument("--full", action="store_true", help="every number of each vector, not the first 8")
    g.add_argument("--target", default=None, metavar="TEXT",
                   help="the token that should come next: adds the loss, the gradients and one SGD step")
    g.add_argument("--lr", default=None, help="learning rate of that SGD step (default: chosen from a scan of 1e-05 … 10 "
                   "so that the step lowers the loss; the scan is printed)")
    g.add_argument("--temperature", default="1.0", metavar="T", help="sampling temperature shown (default: 1.0)")
    g.add_argument("--top-k", default=None, metavar="K", help="sampling: keep the K most likely tokens")
    g.add_argument("--top-p", default=None, metavar="P", help="sampling: nucleus, 0 < P ≤ 1")
    g.add_argument("--lens", action="store_true", help="the logit lens instead: each layer's top next tokens at each "
                   "position (or --position), and the layer where the final answer first comes out on top")
    g.set_defaults(func=run_gpt)


LLAMA_DESCRIPTION = """\
What a Llama-family model (Llama, Mistral, Qwen, SmolLM2: trained here with
`scratchllm train --arch llama`, a Hugging Face directory or a GGUF file) does
that the GPT does not, for one text, every number the model's own with the
arithmetic beside it:
  rmsnorm  a token's root mean square, the division, the learned scale
  rope     each pair's angle position × θᵢ, q and k before and after the turn,
           and the score computed again with both positions shifted (same) or
           at another distance (different)
  gqa      which query heads share each key/value head; the KV cache's bytes
           per token and for the full context, against one per query head
  swiglu   gate, silu(gate) = gate × σ(gate), up, their product, down
--target adds the backward pass and one SGD step, as in `explain gpt`.

  scratchllm explain llama --model out --text "the cat sat"
  scratchllm explain llama --model SmolLM2-135M-Instruct.Q4_1.gguf --text "The capital of France is" \\
      --layer 3 --head 4 --key-position 1 --shift 1000 --show rope,gqa"""


def _register_llama(sub):
    g = sub.add_parser("llama", help="RMSNorm, RoPE, grouped-query attention and SwiGLU of a Llama-family model",
                       description=LLAMA_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("--model", "--ckpt", dest="ckpt", default="out", metavar="PATH",
                   help="a Llama-family model: our checkpoint (`scratchllm train --arch llama`), a Hugging Face "
                        "directory or a GGUF file; --ckpt is another spelling (default: out)")
    g.add_argument("--text", required=True, help="the text the model reads")
    g.add_argument("--layer", default="0", metavar="L", help="the layer shown (default: 0)")
    g.add_argument("--head", default="0", metavar="H", help="the query head whose rotation is shown (default: 0)")
    g.add_argument("--position", default=None, metavar="P",
                   help="the token shown, and the query's position for RoPE, from 0 (default: the last)")
    g.add_argument("--key-position", default="0", metavar="N",
                   help="the key's position for RoPE, 0 … the query's position (default: 0)")
    g.add_argument("--shift", default=None, metavar="S",
                   help="how far RoPE's check moves both positions; may be negative, both must stay inside the "
                        "model's context (default: up to 100 forward, or back if there is no room)")
    g.add_argument("--show", default=",".join(SECTIONS), metavar="LIST",
                   help=f"the sections, comma-separated, from {', '.join(SECTIONS)} (default: all)")
    g.add_argument("--norm", default="ln_1", choices=NORMS,
                   help="the RMSNorm shown: ln_1 (the layer's input_layernorm), ln_2 (its post_attention_layernorm) "
                        "or ln_f (the final norm) (default: ln_1)")
    g.add_argument("--full", action="store_true", help="every number of each vector and every pair, not the first 8")
    g.add_argument("--target", default=None, metavar="TEXT",
                   help="the token that should come after --position: adds the loss, the gradients and one SGD step")
    g.add_argument("--lr", default=None, help="learning rate of that SGD step (default: chosen from a scan, printed)")
    g.set_defaults(func=run_llama)


def _register_transformer(sub):
    t = sub.add_parser("transformer", help="a translation: each output token and the source pieces it looked at",
                       description="Translate one sentence greedily with an encoder–decoder Transformer and show, "
                                   "for each output token, its probability and the cross-attention weights over "
                                   "the source pieces (averaged over the heads; --head for one); --position "
                                   "works out one output token's cross-attention term by term, e.g. "
                                   "`scratchllm explain transformer --ckpt out-translate --text \"Ein Hund rennt "
                                   "über die Wiese.\" --layer 0 --head 1 --position 2`.")
    t.add_argument("--ckpt", "--model", dest="ckpt", default="out-translate", metavar="DIR",
                   help="a checkpoint of `scratchllm translate-train`; --model is another spelling "
                        "(default: out-translate)")
    t.add_argument("--text", required=True, help="the sentence to translate")
    t.add_argument("--layer", default=None, metavar="L", help="the decoder layer shown (default: the last)")
    t.add_argument("--head", default=None, metavar="H", help="one head instead of the average over heads")
    t.add_argument("--position", default=None, metavar="P",
                   help="an output step, from 0: adds its cross-attention in one head (--head, default 0) worked "
                        "out term by term — the query, each source piece's key, q·k, ×1/√D, softmax, the values' sum")
    t.add_argument("--full", action="store_true", help="every number of each vector in that worked example")
    t.set_defaults(func=run_transformer)


DROPOUT_DESCRIPTION = """\
Dropout in one training pass of a GPT or Transformer, every number the
model's own: where the model drops, and at one place (--site) and token
(--position) the values entering the Dropout module, the mask it drew (which
numbers are zeroed), the kept ones multiplied by 1/(1 − p), the values leaving
it, the fraction dropped against p, and the same place in evaluation mode,
where nothing is dropped. The checkpoint is not changed; --p shows another
probability (a model trained without dropout is shown with p = 0.1).

  scratchllm explain dropout --ckpt out --text "To be or not"
  scratchllm explain dropout --ckpt out --text "To be or not" --site h.1.mlp.drop --p 0.3 --seed 4
  scratchllm explain dropout --ckpt out-translate --text "Ein Hund rennt." --site dec.0.drop_2"""


def _register_dropout(sub):
    d = sub.add_parser("dropout", help="dropout's mask and rescaling in one training pass, and eval turning it off",
                       description=DROPOUT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--ckpt", "--model", dest="ckpt", default="out", metavar="PATH",
                   help="a GPT checkpoint (ours or a Hugging Face GPT-2 directory) or a translation model's; "
                        "--model is another spelling (default: out)")
    d.add_argument("--text", required=True,
                   help="the text (a GPT) or the sentence to translate (a Transformer; the decoder reads its "
                        "greedy translation)")
    d.add_argument("--site", default=None, metavar="NAME",
                   help="where to look, as Step 1 lists them (default: h.0.attn.drop, a Transformer's enc.0.drop_1)")
    d.add_argument("--position", default=None, metavar="P", help="the token looked at, from 0 (default: the last)")
    d.add_argument("--p", default=None, metavar="P",
                   help="dropout probability for this pass, 0 < P < 1 (default: the model's own, 0.1 if it has none)")
    d.add_argument("--seed", default="0", metavar="S", help="seed of the generator the masks are drawn from "
                                                            "(default: 0)")
    d.add_argument("--full", action="store_true", help="every number of the vectors, not the first 8")
    d.set_defaults(func=run_dropout)


def _load_checkpoint(ckpt: str, verb: str, encoder_decoder: bool, other_verb: str):
    """(model, tokenizer) of ``ckpt``, which must hold a language model that is an encoder–decoder
    or not, as ``encoder_decoder`` says (``explain {verb}`` reads it; ``other_verb`` the other kind)."""
    from pathlib import Path

    from .. import checkpoint
    from ..models.base import LanguageModel

    if not checkpoint.exists(ckpt):
        raise ScratchError(f"checkpoint directory {ckpt!r} does not exist")
    model, _ = checkpoint.open_model(ckpt, tokenizer=False)
    if not isinstance(model, LanguageModel) or model.is_encoder_decoder != encoder_decoder:
        found = getattr(model, "kind", type(model).__name__)
        raise ScratchError(f"{ckpt} holds a {found} model, not a {verb}: {other_verb}")
    return model, checkpoint.load_tokenizer(ckpt)


def _in_range(text, option, n, what):
    value = number(text, option, int, 0)
    if value >= n:
        raise ScratchError(f"{option} {value} is out of range: {what} {n} ({option} 0 … {n - 1})")
    return value


def _encode_text(tokenizer, text, option):
    """Token ids of ``text``; empty text and characters the tokenizer lacks are one-line errors."""
    from .generate import _encode_prompt

    if not text:
        raise ScratchError(f"{option} is empty: give some text")
    try:
        return _encode_prompt(tokenizer, text)
    except ScratchError as e:
        raise ScratchError(str(e).replace("the prompt", option).replace("--prompt", option)) from None


def _gpt_ids(tokenizer, model, text):
    """A decoder-only model's token ids of ``--text``, cut to its context with a note."""
    import sys

    ids = _encode_text(tokenizer, text, "--text")
    if max(ids) >= model.vocab_size:
        raise ScratchError(f"the tokenizer gives id {max(ids)} but the model knows only {model.vocab_size} tokens: "
                           "tokenizer and model do not belong together")
    n = model.context_length
    if len(ids) > n:
        print(f"note: the text is {len(ids)} tokens long; the model sees only its last {n}, "
              "so it was cut to those", file=sys.stderr)
        ids = ids[-n:]
    return ids


def _source_ids(tokenizer, cfg, text):
    """A Transformer's source ids of ``--text``, cut to max_len with a note."""
    import sys

    from ..translate import encode_source

    ids = encode_source(tokenizer, text)
    if len(ids) > cfg.max_len:
        print(f"note: the sentence is {len(ids)} tokens long; the model reads at most {cfg.max_len}, "
              f"so it was cut to its first {cfg.max_len}", file=sys.stderr)
        ids = ids[:cfg.max_len]
    return ids


def run_gpt(args) -> int:
    from ..explain.gpt import explain_gpt
    from ..generate import check_sampling_args

    temperature = number(args.temperature, "--temperature", float)
    top_k = None if args.top_k is None else number(args.top_k, "--top-k", int)
    top_p = None if args.top_p is None else number(args.top_p, "--top-p", float)
    lr = None if args.lr is None else number(args.lr, "--lr", float)
    if lr is not None and not 0 < lr < math.inf:
        raise ScratchError(f"--lr must be above 0, got {args.lr}")
    try:
        check_sampling_args(0, temperature, top_k, top_p)
    except ScratchError as e:
        raise ScratchError(str(e).replace("top_k", "--top-k").replace("top_p", "--top-p")
                           .replace("temperature", "--temperature", 1)) from None
    if not args.text:
        raise ScratchError("--text is empty: give some text, e.g. --text \"To be or not\"")
    model, tokenizer = _load_checkpoint(args.ckpt, "gpt", False, "use `scratchllm explain transformer` for a "
                                        "translation model")
    ids = _gpt_ids(tokenizer, model, args.text)
    layer = _in_range(args.layer, "--layer", model.n_layer, "the model has layers")
    head = _in_range(args.head, "--head", model.n_head, "each layer has heads")
    position = None if args.position is None else _in_range(args.position, "--position", len(ids),
                                                             "the text has tokens")
    if args.lens:
        from ..explain.lens import explain_lens

        print(explain_lens(model, tokenizer, ids, positions=None if position is None else [position]))
        return 0
    target = _target_id(tokenizer, args.target)
    print(explain_gpt(model, tokenizer, ids, layer=layer, head=head, position=position, full=args.full,
                      target=target, lr=lr, temperature=temperature, top_k=top_k, top_p=top_p,
                      source=str(args.ckpt)))
    return 0


def _target_id(tokenizer, text):
    """--target's token (its first, with a note when it is several), or None without --target."""
    import sys

    if text is None:
        return None
    target_ids = _encode_text(tokenizer, text, "--target")
    if len(target_ids) > 1:
        print(f"note: --target is {len(target_ids)} tokens; the next token is its first, "
              f"{tokenizer.decode([target_ids[0]])!r}", file=sys.stderr)
    return target_ids[0]


def run_llama(args) -> int:
    from ..explain.llama import explain_llama
    from ..models.llama import Llama

    show = [s.strip() for s in args.show.split(",") if s.strip()]
    unknown = [s for s in show if s not in SECTIONS]
    if unknown or not show:
        raise ScratchError(f"--show {args.show!r}: choose from {', '.join(SECTIONS)} (comma-separated)")
    lr = None if args.lr is None else number(args.lr, "--lr", float)
    if lr is not None and not 0 < lr < math.inf:
        raise ScratchError(f"--lr must be above 0, got {args.lr}")
    shift = None if args.shift is None else number(args.shift, "--shift", int)
    if not args.text:
        raise ScratchError("--text is empty: give some text, e.g. --text \"The cat sat\"")
    model, tokenizer = _load_checkpoint(args.ckpt, "llama", False, "use `scratchllm explain transformer`")
    if not isinstance(model, Llama):
        raise ScratchError(f"{args.ckpt} holds a {model.kind} model, which has no RMSNorm, RoPE, GQA or SwiGLU: "
                           "use `scratchllm explain gpt`")
    ids = _gpt_ids(tokenizer, model, args.text)
    layer = _in_range(args.layer, "--layer", model.n_layer, "the model has layers")
    head = _in_range(args.head, "--head", model.n_head, "each layer has query heads")
    position = len(ids) - 1 if args.position is None else _in_range(args.position, "--position", len(ids),
                                                                    "the text has tokens")
    key = number(args.key_position, "--key-position", int, 0)
    if key > position:
        raise ScratchError(f"--key-position {key} is after the query's position {position}: a query sees only "
                           f"keys at 0 … {position}")
    ctx = model.context_length
    if shift is not None and not (0 <= key + shift and position + shift < ctx):
        raise ScratchError(f"--shift {shift} moves positions {key} and {position} outside the model's context "
                           f"(0 … {ctx - 1})")
    target = _target_id(tokenizer, args.target)
    print(explain_llama(model, tokenizer, ids, layer=layer, head=head, position=position, key_position=key,
                        shift=shift, show=show, norm=args.norm, full=args.full, target=target, lr=lr,
                        source=str(args.ckpt)))
    return 0


def run_transformer(args) -> int:
    from ..explain.transformer import explain_transformer
    from ..translate import special_ids

    if not args.text or not args.text.strip():
        raise ScratchError("--text is empty: give a sentence, e.g. --text \"Ein Hund rennt über die Wiese.\"")
    model, tokenizer = _load_checkpoint(args.ckpt, "transformer", True, "use `scratchllm explain gpt`")
    special_ids(tokenizer)
    cfg = model.config
    layer = None if args.layer is None else _in_range(args.layer, "--layer", cfg.n_decoder_layers,
                                                      "the decoder has layers")
    head = None if args.head is None else _in_range(args.head, "--head", cfg.n_head, "each layer has heads")
    ids = _source_ids(tokenizer, cfg, args.text)
    position = None
    if args.position is not None:  # checked against the translation's length once it is made
        position = number(args.position, "--position", int, 0)
    print(explain_transformer(model, tokenizer, ids, layer=layer, head=head, position=position, full=args.full,
                              source=str(args.ckpt)))
    return 0


def run_dropout(args) -> int:
    from pathlib import Path

    from .. import checkpoint
    from ..explain.dropout import dropout_sites, explain_dropout
    from ..models.base import LanguageModel

    p = None
    if args.p is not None:
        p = number(args.p, "--p", float)
        if not 0 < p < 1:
            raise ScratchError(f"--p must be above 0 and below 1, got {args.p}")
    seed = number(args.seed, "--seed", int, 0)
    if not args.text or not args.text.strip():
        raise ScratchError("--text is empty: give some text, e.g. --text \"To be or not\"")
    if not checkpoint.exists(args.ckpt):
        raise ScratchError(f"checkpoint directory {args.ckpt!r} does not exist")
    model, _ = checkpoint.open_model(args.ckpt, tokenizer=False)
    if not isinstance(model, LanguageModel) or not dropout_sites(model):
        kind = getattr(model, "kind", type(model).__name__)
        raise ScratchError(f"{args.ckpt} holds a {kind} model without dropout: explain dropout reads a GPT or a "
                           "Transformer")
    tokenizer = checkpoint.load_tokenizer(args.ckpt)
    sites = dropout_sites(model)
    if args.site is not None and args.site not in sites:
        raise ScratchError(f"--site {args.site!r} is not a dropout of this model; its dropouts: {', '.join(sites)}")
    if not model.is_encoder_decoder:
        ids = _gpt_ids(tokenizer, model, args.text)
    else:
        from ..translate import special_ids

        special_ids(tokenizer)
        ids = _source_ids(tokenizer, model.config, args.text)
    position = None if args.position is None else number(args.position, "--position", int, 0)
    print(explain_dropout(model, tokenizer, ids, site=args.site, position=position, p=p, seed=seed, full=args.full,
                          source=str(args.ckpt)))
    return 0
