"""Tokenizers: text <-> token ids.

- :class:`CharTokenizer`: one id per character (char-level models).
- :class:`BPETokenizer`: byte-level BPE, trained here or read from OpenAI's
  GPT-2 files (``BPETokenizer.from_gpt2``) or Hugging Face files.
- :class:`UnigramTokenizer`: SentencePiece's unigram model, trained here by
  EM or read from a sentencepiece ``.model`` file (``from_sentencepiece``).

The tokenizers of published models (Llama 3, Qwen2, SmolLM2, Llama 2,
Mistral ...), with their added tokens, bos/eos and chat template
(``tok.apply_chat_template(messages)``):

- :func:`from_hf_dir`: from a Hugging Face model directory.
- :func:`from_gguf`: from a GGUF file's metadata (``scratchllm.gguf.read``).

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
from .bpe_pretrained import PretrainedBPETokenizer
from .spm_bpe import SentencePieceBPETokenizer
from .hf_dir import from_hf_dir
from .gguf_vocab import from_gguf

__all__ = ["Tokenizer", "CharTokenizer", "BPETokenizer", "UnigramTokenizer", "load", "GPT2_PATTERN", "GPT4_PATTERN",
           "PretrainedBPETokenizer", "SentencePieceBPETokenizer", "from_hf_dir", "from_gguf"]
