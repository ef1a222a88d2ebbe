"""The tokenizer stored in a GGUF file's metadata (llama.cpp's format).

A GGUF file carries its vocabulary as metadata (``scratchllm.gguf.read``
gives it as a dict): ``tokenizer.ggml.model`` says which algorithm,
``tokenizer.ggml.tokens`` lists every token's text by id, and
``tokenizer.ggml.token_type`` says what each is: 1 normal, 2 unknown,
3 control (<|im_start|>, <s> ...), 4 user-defined (added text such as
<think>), 5 unused, 6 byte (<0x0A>). Control and user-defined tokens are
found in the text before it is split (control ones are what a chat template
writes); bos/eos come as ids (``tokenizer.ggml.bos_token_id`` ...),
``tokenizer.ggml.add_bos_token`` says whether encoding starts with bos, and
``tokenizer.chat_template`` is the chat layout.

- ``"gpt2"``: byte-level BPE. Tokens are written with GPT-2's byte
  characters ("Ġthe"), ``tokenizer.ggml.merges`` lists the merges in rank
  order ("Ġ t"), and ``tokenizer.ggml.pre`` names the split pattern. The
  file stores only that name, so the table below gives each name's pattern,
  as llama.cpp defines them (llama-vocab.cpp).
- ``"llama"``: SentencePiece BPE (Llama 2, Mistral, TinyLlama): pieces with
  "▁" for spaces, merged by ``tokenizer.ggml.scores`` (see spm_bpe.py).
"""
from __future__ import annotations

from ..errors import ScratchError
from .bpe_pretrained import PretrainedBPETokenizer
from .byte_level import token_str_to_bytes
from .patterns import GPT2_PATTERN, LLAMA3_PATTERN, QWEN2_PATTERN, SMOLLM_PATTERN
from .pretrained import added_token

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# llama.cpp's "default" pre-tokenizer, for files that name none: punctuation
# runs, then GPT-2's pattern, then digit runs, then groups of three digits.
_DEFAULT = (r"[\p{P}\$\+<=>\^~\|]+", GPT2_PATTERN, r"\p{N}+", r"[0-9][0-9][0-9]")

# tokenizer.ggml.pre -> (split pattern, ignore_merges, add_bos when the file does not say)
_LLAMA3 = (LLAMA3_PATTERN, True, True)
GGUF_PRE = {
    "default": (_DEFAULT, False, False),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"),
                    _LLAMA3),
    **dict.fromkeys(("dbrx", "smaug-bpe", "chatglm-bpe", "glm4"), (LLAMA3_PATTERN, False, False)),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "megrez", "stablelm2", "hunyuan", "grok-2"),
                    (QWEN2_PATTERN, False, False)),
    **dict.fromkeys(("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"),
                    (SMOLLM_PATTERN, False, False)),
    **dict.fromkeys(("gpt2", "gpt-2", "phi-2", "mpt", "olmo", "jais", "exaone4", "trillion", "granite-docling",
                     "jina-es", "jina-de", "jina-v2-es", "jina-v2-de", "gigachat", "a.x-4.0", "mellum"),
                    (GPT2_PATTERN, False, False)),
}


def _get(meta: dict, key: str, kind, default=None, required=False):
    if key not in meta:
        if required:
            raise ScratchError(f"the GGUF file has no {key}: it holds no tokenizer we can read")
        return default
    v = meta[key]
    if not isinstance(v, kind):
        raise ScratchError(f"the GGUF file's {key} is a {type(v).__name__}, not a {getattr(kind, '__name__', kind)}")
    return v


def _special_ids(meta: dict, n: int) -> dict:
    """bos/eos/pad/unk id from the file, each only if it names a token."""
    out = {}
    for name, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id"),
                      ("unk", "unknown_token_id")):
        i = meta.get(f"tokenizer.ggml.{key}")
        if i is not None:
            if not isinstance(i, int) or not 0 <= i < n:
                raise ScratchError(f"the GGUF file's tokenizer.ggml.{key} {i!r} is not a token id (0..{n - 1})")
            out[name] = i
    return out


def from_gguf(metadata: dict):
    """The tokenizer described by a GGUF file's metadata (a dict, as scratchllm.gguf.read gives it)."""
    model = _get(metadata, "tokenizer.ggml.model", str, required=True)
    tokens = _get(metadata, "tokenizer.ggml.tokens", (list, tuple), required=True)
    types = list(_get(metadata, "tokenizer.ggml.token_type", (list, tuple), default=[NORMAL] * len(tokens)))
    if len(types) != len(tokens):
        raise ScratchError(f"the GGUF file lists {len(tokens)} tokens but {len(types)} token types")
    template = _get(metadata, "tokenizer.chat_template", str)
    ids = _special_ids(metadata, len(tokens))
    if model == "gpt2":
        return _byte_level(metadata, tokens, types, ids, template)
    if model == "llama":
        from .spm_bpe import SentencePieceBPETokenizer
        return SentencePieceBPETokenizer.from_gguf_parts(metadata, tokens, types, ids, template)
    raise ScratchError(f"the GGUF file's tokenizer.ggml.model is {model!r}; supported: 'gpt2' (byte-level BPE) "
                       f"and 'llama' (SentencePiece BPE)")


def _byte_level(meta, tokens, types, ids, template):
    pre = _get(meta, "tokenizer.ggml.pre", str, default="default")
    if pre not in GGUF_PRE:
        raise ScratchError(f"the GGUF file's pre-tokenizer {pre!r} is not one we know (tokenizer.ggml.pre; known: "
                           f"{', '.join(sorted(GGUF_PRE))})")
    pattern, ignore_merges, add_bos = GGUF_PRE[pre]
    add_bos = _get(meta, "tokenizer.ggml.add_bos_token", bool, default=add_bos)
    add_eos = _get(meta, "tokenizer.ggml.add_eos_token", bool, default=False)
    merges_text = _get(meta, "tokenizer.ggml.merges", (list, tuple), required=True)
    added, other, by_id = [], {}, {}
    for i, (text, kind) in enumerate(zip(tokens, types)):
        if kind in (CONTROL, USER_DEFINED):
            added.append(added_token(text, i, special=kind == CONTROL))
            continue
        try:
            by_id[i] = token_str_to_bytes(text)
        except ValueError:
            other[i] = text  # not byte-level text: a token no text encodes to
    merges = []
    for m in merges_text:
        left, sep, right = m[1:].partition(" ")  # the first space after the first character splits it
        if not sep:
            raise ScratchError(f"the GGUF file's merge {m!r} is not two tokens separated by a space")
        try:
            merges.append((token_str_to_bytes(m[0] + left), token_str_to_bytes(right)))
        except ValueError as e:
            raise ScratchError(f"the GGUF file's merge {m!r}: {e}") from None
    names = {k: tokens[i] for k, i in ids.items()}
    try:
        return PretrainedBPETokenizer.build(
            by_id, merges, added, pattern, other=other, ignore_merges=ignore_merges,
            bos_token=names.get("bos"), eos_token=names.get("eos"), pad_token=names.get("pad"),
            unk_token=names.get("unk"), add_bos_token=add_bos, add_eos_token=add_eos, chat_template=template)
    except ScratchError as e:
        raise ScratchError(f"the GGUF file's vocabulary cannot be read: {e}") from None
