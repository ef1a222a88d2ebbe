"""References for the tokenizer tests: tiktoken and Hugging Face, built locally.

Nothing is downloaded: tiktoken's "gpt2" encoding is rebuilt from the shared
GPT-2 files with tiktoken's own loader, and the split patterns are taken
from tiktoken's source of its encodings.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

GPT2_SPECIALS = {"<|endoftext|>": 50256}


def tiktoken_pattern(name: str) -> str:
    """tiktoken's own pat_str of its 'gpt2' or 'cl100k_base' encoding."""
    import tiktoken_ext.openai_public as op

    if name == "gpt2":
        return op.r50k_pat_str
    # cl100k_base() would fetch its ranks; ask it for its pattern with an empty table instead.
    saved = op.load_tiktoken_bpe
    op.load_tiktoken_bpe = lambda *a, **k: {}
    try:
        return op.cl100k_base()["pat_str"]
    finally:
        op.load_tiktoken_bpe = saved


@functools.lru_cache(maxsize=None)
def tiktoken_gpt2(gpt2_dir: Path):
    """tiktoken's 'gpt2' encoding, from encoder.json and vocab.bpe in gpt2_dir."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # read the local files, cache nothing
    try:
        ranks = data_gym_to_mergeable_bpe_ranks(str(gpt2_dir / "vocab.bpe"), str(gpt2_dir / "encoder.json"))
    finally:
        if saved is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved
    return tiktoken.Encoding(name="gpt2-local", pat_str=tiktoken_pattern("gpt2"), mergeable_ranks=ranks,
                             special_tokens=GPT2_SPECIALS)


@functools.lru_cache(maxsize=None)
def ours_gpt2(gpt2_dir: Path):
    from scratchllm.tokenizers import BPETokenizer

    return BPETokenizer.from_gpt2(gpt2_dir / "encoder.json", gpt2_dir / "vocab.bpe")


def tiktoken_like(tok, pat_str: str):
    """A tiktoken Encoding with tok's tokens as ranks (rank = id) and its specials."""
    import tiktoken

    normal = [i for i in range(tok.vocab_size) if i not in tok.special_tokens.values()]
    return tiktoken.Encoding(name="ours", pat_str=pat_str, mergeable_ranks={tok.token_bytes(i): i for i in normal},
                             special_tokens=dict(tok.special_tokens))


def hf_trainer_tokenizer(text: str, vocab_size: int, pattern: str | None):
    """Hugging Face's byte-level BPE trained on text: pattern None, or a regex."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    if pattern == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif pattern is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([text], trainer)
    return tok


# A text set that exercises the split pattern: prose, code, numbers,
# contractions, whitespace runs, and scripts other than Latin.
VARIED_TEXTS = [
    "",
    "Hello, world!",
    "The cats sat on the mat; the dog didn't.",
    "I'm sure they'll say we've done it, and you'd agree it's what we're for. DON'T SHOUT'S",
    "  leading spaces, trailing spaces   ",
    "many    spaces\tand\ttabs\n\nand\n\n\nnewlines\r\nwindows\r\n",
    "def f(x):\n    return x ** 2  # square\n\n\nclass A:\n\tpass\n",
    'for (int i = 0; i < n; ++i) { sum += a[i]; }  // C code\n',
    "3.14159 2,718 1234567890 1e-10 0x1F $100.00 50% +-*/=",
    "Numbers: 1 22 333 4444 55555 666666",
    "naïve café résumé Ångström façade coöperate",
    "e\u0301 a\u0308 combining marks: n\u0303o\u0303",
    "日本語のテキストです。中文文本。한국어 텍스트.",
    "Русский текст, Ελληνικά, עברית, العربية, हिन्दी",
    "emoji: 😀👍🏽👨‍👩‍👧‍👦 🇫🇷 ❤️",
    "control \x00\x01\x07\x1b[31m chars \x7f\x85\u200b\u2028 zero width",
    "\n\n\n   \n\t \n",
    "   ",
    "a" * 300 + " " + "ab" * 100,
    " " * 100 + "x" + "\n" * 50,
    "URLs https://example.com/path?q=1&r=two#frag and emails a.b@c.org",
    "<|endoftext|>",
    "before<|endoftext|>after <|endoftext|> <|endoftext|><|endoftext|>",
    "almost special <|endoftext| and <|endof|text|>",
]
