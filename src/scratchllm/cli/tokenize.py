"""``scratchllm tokenize``: train a tokenizer, or show how one cuts text into tokens."""
from __future__ import annotations

import re
import sys
from pathlib import Path

from ..errors import ScratchError


def register(subparsers) -> None:
    p = subparsers.add_parser("tokenize", help="train a tokenizer, encode text to tokens, decode ids to text",
                              description="Sub-word tokenizers: byte-level BPE (as GPT-2's), SentencePiece's unigram "
                                          "model, and characters.")
    sub = p.add_subparsers(dest="action", metavar="<action>", required=True)

    t = sub.add_parser("train", help="learn a tokenizer from text and save it as JSON",
                       description="Learn a tokenizer from a text file or folder (streamed), 'builtin' "
                                   "(Python's documentation topics) or a registered dataset name. "
                                   "'cats' → ' cat' + 's' needs a text with cats in it: --data multi30k.en "
                                   "--vocab-size 1000, then `scratchllm explain bpe --tokenizer FILE \"two cats\"`.")
    t.add_argument("--data", default="builtin",
                   help="text file, folder, 'builtin', a dataset name ('tinyshakespeare'), or one side of "
                        "Multi30k's training captions: 'multi30k.en' (English) or 'multi30k.de' (German)")
    t.add_argument("--data-dir", default=None, metavar="DIR",
                   help="folder holding registered datasets (DIR/multi30k/train.en.gz ...); else "
                        "$SCRATCHLLM_DATA_DIR or the cache")
    t.add_argument("--vocab-size", type=int, default=None,
                   help="tokens in all, special tokens included (bpe: required; char: default all characters)")
    t.add_argument("--out", default="tokenizer.json", help="where to write the tokenizer")
    t.add_argument("--kind", choices=("bpe", "unigram", "char"), default="bpe",
                   help="byte-level BPE, SentencePiece's unigram model, or characters")
    t.add_argument("--pattern", default="gpt2",
                   help="bpe split pattern: 'gpt2', 'gpt4' (cl100k), 'none' (no split) or a regex")
    t.add_argument("--special", action="append", default=[], metavar="TOKEN",
                   help="a special token, e.g. '<|endoftext|>' (repeat for more)")
    t.add_argument("--unk", action="store_true", help="char: map unknown characters to <unk> instead of failing")
    t.add_argument("--normalization", choices=("nmt_nfkc", "identity"), default="nmt_nfkc",
                   help="unigram: SentencePiece's text normalisation (nmt_nfkc: NFKC, tabs and newlines as spaces)")
    t.add_argument("--byte-fallback", action="store_true",
                   help="unigram: unknown characters become byte pieces <0xE2> ... instead of <unk>")
    t.add_argument("--keep-spaces", action="store_true",
                   help="unigram: keep runs of spaces and leading/trailing spaces (SentencePiece removes them)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.set_defaults(func=run_train)

    e = sub.add_parser("encode", help="show the tokens (pieces and ids) of a text",
                       description="Encode text and show each token as readable text and its id. "
                                   "The text comes from the argument, or from standard input.")
    e.add_argument("text", nargs="?", help="text to encode (default: standard input)")
    _tokenizer_arg(e)
    e.add_argument("--ids", action="store_true", help="print only the ids, space-separated")
    e.add_argument("--allow-special", action="store_true",
                   help="turn special tokens' text (e.g. <|endoftext|>) into their ids instead of plain text")
    e.set_defaults(func=run_encode)

    d = sub.add_parser("decode", help="turn token ids back into text",
                       description="Decode token ids (arguments, or standard input; separated by spaces or "
                                   "commas, brackets allowed) to text.")
    d.add_argument("ids", nargs="*", help="token ids (default: read from standard input)")
    _tokenizer_arg(d)
    d.set_defaults(func=run_decode)


def _tokenizer_arg(p) -> None:
    p.add_argument("--tokenizer", required=True,
                   help="a tokenizer file (ours, Hugging Face tokenizer.json or a SentencePiece .model) or a "
                        "folder with tokenizer.json, vocab.json + merges.txt, or GPT-2's encoder.json + vocab.bpe")


def run_train(args) -> int:
    from .. import tokenizers
    from . import check_output_file

    check_output_file(args.out)  # before the training, not after it
    progress = not args.no_progress and sys.stderr.isatty()
    data = _training_data(args.data, args.data_dir)
    if args.kind == "char":
        if args.special:
            raise ScratchError("--special applies to --kind bpe only")
        tok = tokenizers.CharTokenizer(unk=args.unk).train(data, args.vocab_size, progress=progress)
    elif args.kind == "unigram":
        if args.vocab_size is None:
            raise ScratchError("--vocab-size is required for a unigram tokenizer (e.g. --vocab-size 8000)")
        tok = tokenizers.UnigramTokenizer(normalization=args.normalization, byte_fallback=args.byte_fallback,
                                          special_tokens=args.special, remove_extra_whitespaces=not args.keep_spaces)
        tok.train(data, args.vocab_size, progress=progress)
    else:
        if args.vocab_size is None:
            raise ScratchError("--vocab-size is required for a BPE tokenizer (e.g. --vocab-size 4096)")
        tok = tokenizers.BPETokenizer(pattern=args.pattern, special_tokens=args.special)
        tok.train(data, args.vocab_size, progress=progress)
    out = Path(args.out)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True)
    tok.save(out)
    print(f"{tok!r} written to {out}")
    return 0


def _training_data(spec: str, data_dir=None):
    """A path is streamed; 'multi30k.en' / 'multi30k.de' are one side of Multi30k's training pairs;
    other specs ('builtin', dataset names) come from scratchllm.data."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    side = {"multi30k.de": 0, "multi30k.en": 1}.get(spec)
    if side is None and spec.startswith("multi30k."):
        raise ScratchError(f"{spec}: Multi30k's sides are multi30k.en (English) and multi30k.de (German)")
    if side is not None:
        from ..data import multi30k
        return "\n".join(multi30k("train", data_dir)[side]) + "\n"
    from ..data import load_text
    return load_text(spec, data_dir)


def run_encode(args) -> int:
    from .. import tokenizers

    tok = tokenizers.load(args.tokenizer)
    text = args.text if args.text is not None else sys.stdin.read()
    if isinstance(tok, (tokenizers.BPETokenizer, tokenizers.UnigramTokenizer)):
        ids = tok.encode(text, allowed_special="all") if args.allow_special else tok.encode(text, disallowed_special=())
    else:
        ids = tok.encode(text)
    if args.ids:
        print(" ".join(map(str, ids)))
        return 0
    print("pieces:", " ".join(tok.pieces(ids)))
    print("ids:   ", " ".join(map(str, ids)))
    print(f"{len(ids)} tokens for {len(text)} characters")
    return 0


def run_decode(args) -> int:
    from .. import tokenizers

    tok = tokenizers.load(args.tokenizer)
    raw = " ".join(args.ids) if args.ids else sys.stdin.read()
    words = [w for w in re.split(r"[\s,\[\]]+", raw) if w]
    bad = next((w for w in words if not re.fullmatch(r"\d+", w)), None)
    if bad is not None:
        raise ScratchError(f"{bad!r} is not a token id: give non-negative whole numbers")
    sys.stdout.write(tok.decode(int(w) for w in words) + "\n")
    return 0
