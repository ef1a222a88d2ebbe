"""One entry point for every tokenizer file: :func:`load`.

It reads our own files (``base.py``), other programs' BPE files
(``bpe_hf.py``: OpenAI's GPT-2 release, Hugging Face's), Hugging Face unigram
files (``unigram_hf.py``) and SentencePiece ``.model`` files. It sits above
every tokenizer class, so none of them imports it: ``Tokenizer.load`` reaches
it through the hook this module sets on :class:`Tokenizer`.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ScratchError
from .base import FORMAT, Tokenizer, from_file_dict, read_json
from .bpe import BPETokenizer
from .bpe_hf import read_hf_dict, read_vocab_merges
from .hf_dir import from_hf_dir
from .unigram import UnigramTokenizer


def from_hf_dict(data: dict, where) -> Tokenizer:
    """A tokenizer from a Hugging Face tokenizer.json: a BPE or a unigram model."""
    if (data.get("model") or {}).get("type") == "Unigram":
        return UnigramTokenizer.from_hf_dict(data, where)
    return BPETokenizer.from_file_parts(**read_hf_dict(data, where))


def load(path) -> Tokenizer:
    """A tokenizer from any file we read: ours, HF tokenizer.json, a SentencePiece .model, or a folder.

    A folder may hold tokenizer.json (ours, or a Hugging Face model's: :func:`from_hf_dir`), vocab.json + merges.txt
    (HF), or encoder.json + vocab.bpe (OpenAI GPT-2).
    """
    p = Path(path)
    if p.is_dir():
        if (p / "tokenizer.json").is_file():
            model = read_json(p / "tokenizer.json").get("model")
            if isinstance(model, dict) and model.get("type") == "BPE":  # a model's: tokenizer_config.json too
                return from_hf_dir(p)
            p = p / "tokenizer.json"
        elif (p / "vocab.json").is_file() and (p / "merges.txt").is_file():
            return BPETokenizer.from_file_parts(**read_vocab_merges(p))
        elif (p / "encoder.json").is_file() and (p / "vocab.bpe").is_file():
            return BPETokenizer.from_gpt2(p / "encoder.json", p / "vocab.bpe")
        else:
            raise ScratchError(f"{p} has no tokenizer: expected tokenizer.json, vocab.json + merges.txt, "
                               f"or encoder.json + vocab.bpe")
    if p.suffix == ".model":
        return UnigramTokenizer.from_sentencepiece(p)
    data = read_json(p)
    if data.get("format") == FORMAT:
        return from_file_dict(data, p)
    if "model" in data and "pre_tokenizer" in data:
        return from_hf_dict(data, p)
    raise ScratchError(f"{p} is neither a scratchllm tokenizer file nor a Hugging Face tokenizer.json")


Tokenizer._read_any = staticmethod(load)
