"""``scratchllm chat``: a conversation with a model in the terminal."""
from __future__ import annotations

import argparse
import sys

from ..errors import ScratchError
from . import number

DESCRIPTION = """\
Talk to a model: a GGUF file (e.g. SmolLM2-135M-Instruct), a Hugging Face
model directory, or a checkpoint trained here. Tokens are printed as they are
sampled, and the conversation stays in the model's KV cache, so each turn
runs only its new tokens. After each answer: how many tokens, how fast.

Type a message and press Enter. /reset forgets the conversation, /exit (or
Ctrl-D) ends. Ctrl-C stops the answer being written, not the program.
--prompt TEXT answers once and exits (for scripts). --temperature 0 always
takes the most likely token (greedy), so the same question gets the same answer."""


def register(subparsers):
    p = subparsers.add_parser("chat", help="talk to a model (GGUF file, Hugging Face directory, or our checkpoint)",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", "--ckpt", dest="model_path", default="out", metavar="PATH",
                   help="a .gguf file, a Hugging Face model directory, or a scratchllm checkpoint (default: out)")
    p.add_argument("--system", default=None, metavar="TEXT", help="a system message that opens the conversation")
    p.add_argument("--prompt", default=None, metavar="TEXT", help="answer this one message and exit")
    p.add_argument("--max-new-tokens", default="256", metavar="N", help="longest answer, in tokens (default: 256)")
    p.add_argument("--temperature", default="0.7", metavar="T", help="≥ 0; 0 = greedy (default: 0.7)")
    p.add_argument("--top-k", default=None, metavar="K", help="keep only the K most likely tokens (default: all)")
    p.add_argument("--top-p", default="0.9", metavar="P", help="nucleus sampling, 0 < P ≤ 1 (default: 0.9)")
    p.add_argument("--seed", default=None, metavar="S", help="random seed for reproducible answers (default: fresh)")
    p.set_defaults(func=run)


def _answer(chat, text, stream_cls, out, err):
    stream = stream_cls(chat.tok, out)
    chat.reply(text, on_token=stream.push)
    stream.finish()
    out.write("\n")
    out.flush()
    why = {"length": " (--max-new-tokens reached)", "context": " (the context is full: /reset)",
           "interrupted": " (stopped)"}.get(chat.stopped, "")
    read = chat.prompt_tokens / chat.prefill_seconds if chat.prefill_seconds > 0 else 0.0
    rate = chat.last_tokens / chat.answer_seconds if chat.answer_seconds > 0 else 0.0
    print(f"[{chat.prompt_tokens} prompt tokens read at {read:.0f} tokens/s; {chat.last_tokens} tokens written "
          f"at {rate:.1f} tokens/s{why}]", file=err, flush=True)


def run(args):
    from ..chat import Chat
    from ..checkpoint import open_model
    from .generate import _Stream

    max_new = number(args.max_new_tokens, "--max-new-tokens", int, 1)
    temperature = number(args.temperature, "--temperature", float, 0)
    top_k = None if args.top_k is None else number(args.top_k, "--top-k", int, 1)
    top_p = None if args.top_p is None else number(args.top_p, "--top-p", float)
    if top_p is not None and not 0 < top_p <= 1:
        raise ScratchError(f"--top-p must be in (0, 1], got {args.top_p}")
    seed = None if args.seed is None else number(args.seed, "--seed", int, 0)
    if args.prompt is not None and not args.prompt.strip():
        raise ScratchError("--prompt is empty: give a message")

    model, tokenizer = open_model(args.model_path)
    chat = Chat(model, tokenizer, system=args.system, temperature=temperature, top_k=top_k, top_p=top_p,
                seed=seed, max_new_tokens=max_new)
    out, err = sys.stdout, sys.stderr
    if args.prompt is not None:
        _answer(chat, args.prompt, _Stream, out, err)
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        print("Type a message; /reset forgets the conversation, /exit ends. Ctrl-C stops an answer.", file=err)
    while True:
        if interactive:
            out.write("> ")
            out.flush()
        try:
            line = sys.stdin.readline()
        except KeyboardInterrupt:
            out.write("\n")
            continue
        if not line:  # end of input (Ctrl-D, or the end of a pipe)
            return 0
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            return 0
        if text == "/reset":
            chat.reset()
            print("[conversation reset]", file=err, flush=True)
            continue
        try:
            _answer(chat, text, _Stream, out, err)
        except ScratchError as e:  # the conversation outgrew the context: say so, keep going
            print(f"scratchllm chat: {e}", file=err, flush=True)
