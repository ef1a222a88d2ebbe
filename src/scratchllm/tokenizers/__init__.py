"""Tokenizers: text <-> token ids.

- :class:`CharTokenizer`: one id per character (char-level models).
- :class:`BPETokenizer`: byte-level BPE, trained here or read from OpenAI's
  GPT-2 files (``BPETokenizer.from_gpt2``) or Hugging Face files.
- :class:`UnigramTokenizer`: SentencePiece's unigram model, trained here by
  EM or read from a sentencepiece ``.model`` file (``from_sentencepiece``).

All share ``train``, ``encode``, ``decode``, ``encode_batch``, ``save`` /
``load``, ``vocab_size``, ``id_to_token`` / ``token_to_id``.
:func:`load` reads any tokenizer file or folder we know.
"""
from .base import Tokenizer
from .bpe import BPETokenizer
from .char import CharTokenizer
from .formats import load
from .patterns import GPT2_PATTERN, GPT4_PATTERN
from .unigram import UnigramTokenizer

__all__ = ["Tokenizer", "CharTokenizer", "BPETokenizer", "UnigramTokenizer", "load", "GPT2_PATTERN", "GPT4_PATTERN"]
