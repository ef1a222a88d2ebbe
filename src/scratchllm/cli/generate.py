"""``scratchllm generate``: sample text from a checkpoint, streamed as it comes."""
from __future__ import annotations

import argparse
import codecs
import sys
import warnings

from ..errors import ScratchError
from . import number

DESCRIPTION = """\
Continue a prompt with text sampled from a trained model (a scratchllm
checkpoint directory, e.g. the out/ of `scratchllm train`, a Hugging Face
model directory, or a GGUF file). Tokens are printed as they are sampled.

Sampling: --temperature divides the logits (0 = always the most likely token,
<1 = safer, >1 = wilder); --top-k keeps the k most likely tokens; --top-p keeps
the smallest set of most likely tokens whose probabilities reach p. The same
--seed gives the same text, with or without --no-cache."""


def register(subparsers):
    p = subparsers.add_parser("generate", help="sample text from a trained model",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", "--model", dest="ckpt", default="out", metavar="PATH",
                   help="checkpoint directory, Hugging Face model directory or GGUF file; --model is another "
                        "spelling (default: out)")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", default="200", metavar="N", help="tokens to sample per sample (default: 200)")
    p.add_argument("--temperature", default="1.0", metavar="T", help="≥ 0; 0 = greedy (default: 1.0)")
    p.add_argument("--top-k", default=None, metavar="K", help="keep only the K most likely tokens (default: all)")
    p.add_argument("--top-p", default=None, metavar="P", help="nucleus sampling, 0 < P ≤ 1 (default: off)")
    p.add_argument("--seed", default=None, metavar="S", help="random seed for reproducible text (default: fresh)")
    p.add_argument("--num-samples", default="1", metavar="N", help="how many samples to draw (default: 1)")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole context each step (slower; same text)")
    p.set_defaults(func=run)


class _Stream:
    """Writes decoded text as tokens arrive. A byte-level token may hold part
    of a UTF-8 character: its bytes wait until the character is whole."""

    def __init__(self, tokenizer, out):
        self.tok, self.out, self.last = tokenizer, out, ""
        self.bytes = codecs.getincrementaldecoder("utf-8")("replace") if hasattr(tokenizer, "decode_bytes") else None

    def push(self, token_id: int):
        if self.bytes is not None:
            self.write(self.bytes.decode(self.tok.decode_bytes([int(token_id)])))
        else:
            self.write(self.tok.decode([int(token_id)]))

    def finish(self):
        if self.bytes is not None:
            self.write(self.bytes.decode(b"", final=True))

    def write(self, text):
        if text:
            self.out.write(text)
            self.out.flush()
            self.last = text[-1]


def _encode_prompt(tokenizer, prompt: str):
    """Token ids of the prompt; characters a character-level tokenizer does not know are named."""
    known = _char_vocabulary(tokenizer)
    if known is not None:
        unknown = sorted(set(prompt) - known)
        if unknown:
            shown = " ".join(repr(c) for c in unknown[:20]) + (" …" if len(unknown) > 20 else "")
            raise ScratchError(f"the prompt has characters the model's tokenizer does not know: {shown}; "
                               "use only characters from its training text")
    try:
        ids = tokenizer.encode(prompt)
    except ScratchError:
        raise
    except (KeyError, ValueError) as e:
        raise ScratchError(f"cannot encode the prompt with the model's tokenizer ({e})") from None
    if len(ids) == 0:
        raise ScratchError("the prompt encodes to no tokens: give a non-empty --prompt")
    return list(ids)


def _char_vocabulary(tokenizer):
    """The characters of a character-level tokenizer without an <unk> token, else None."""
    from ..tokenizers import CharTokenizer

    if not isinstance(tokenizer, CharTokenizer) or tokenizer.unk:
        return None
    return set(tokenizer.chars)


def _load(ckpt: str):
    from .. import checkpoint
    from ..models.base import LanguageModel

    path = ckpt
    if not checkpoint.exists(ckpt):
        raise ScratchError(f"checkpoint directory {ckpt!r} does not exist; train one with "
                           "`scratchllm train` or point --ckpt at a checkpoint directory")
    model, _ = checkpoint.open_model(path, tokenizer=False)
    if not isinstance(model, LanguageModel) or model.is_encoder_decoder or not hasattr(model, "new_cache"):
        kind = getattr(model, "kind", type(model).__name__)
        if isinstance(model, LanguageModel):
            hint = "it translates: use `scratchllm translate`"
        elif kind == "charmlp":
            hint = "sample from it with `scratchllm charmlp generate`"
        else:
            hint = "this verb samples from language models (GPT and the like) only"
        raise ScratchError(f"{ckpt} holds a {kind} model, not a GPT: {hint}")
    return model, checkpoint.load_tokenizer(path)  # tokenizer.json, an HF directory's files, GGUF metadata


def run(args):
    import numpy as np

    from ..generate import check_sampling_args, generate

    max_new = number(args.max_new_tokens, "--max-new-tokens", int)
    temperature = number(args.temperature, "--temperature", float)
    top_k = None if args.top_k is None else number(args.top_k, "--top-k", int)
    top_p = None if args.top_p is None else number(args.top_p, "--top-p", float)
    seed = None if args.seed is None else number(args.seed, "--seed", int, 0)
    num_samples = number(args.num_samples, "--num-samples", int, 1)
    try:
        check_sampling_args(max_new, temperature, top_k, top_p)
    except ScratchError as e:  # name the option as the user typed it
        raise ScratchError(str(e).replace("max_new_tokens", "--max-new-tokens").replace("top_k", "--top-k")
                           .replace("top_p", "--top-p").replace("temperature", "--temperature", 1)) from None

    model, tokenizer = _load(args.ckpt)
    ids = np.asarray([_encode_prompt(tokenizer, args.prompt)], dtype=np.int64)  # (1, T)
    if ids.max() >= model.vocab_size:
        raise ScratchError(f"the tokenizer gives id {ids.max()} but the model knows only "
                           f"{model.vocab_size} tokens: tokenizer and model do not belong together")
    block = model.context_length
    if ids.shape[1] > block:
        print(f"note: the prompt is {ids.shape[1]} tokens long; the model sees only its last {block}",
              file=sys.stderr)
    rng = np.random.default_rng(seed)  # one generator for all samples: reproducible as a whole
    out = sys.stdout
    for i in range(num_samples):
        if num_samples > 1:
            out.write(("\n" if i else "") + f"───── sample {i + 1}/{num_samples} ─────\n")
        stream = _Stream(tokenizer, out)
        stream.write(args.prompt)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the long-prompt note was printed above
            generate(model, ids, max_new, temperature=temperature, top_k=top_k, top_p=top_p, rng=rng,
                     use_cache=not args.no_cache, on_token=lambda t: stream.push(t[0]))
        stream.finish()
        if stream.last != "\n":
            stream.write("\n")
    return 0
