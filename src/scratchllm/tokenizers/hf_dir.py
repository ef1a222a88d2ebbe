"""The tokenizer of a Hugging Face model directory.

Two files describe it:

- tokenizer.json (written by Hugging Face's `tokenizers`): the model (BPE:
  vocab and merges), the normalizer, the pre_tokenizer (how text is split
  before merging: Split(Regex) / Digits / ByteLevel, alone or in a
  Sequence), the added_tokens (found in the text first) and the
  post_processor (a TemplateProcessing that puts bos in front, as Llama 3's).
- tokenizer_config.json (written by transformers): bos/eos/pad/unk tokens,
  add_bos_token / add_eos_token, and the chat template (there, or in
  chat_template.jinja beside it, as transformers 5 saves it).

Byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM2 ...) becomes a
:class:`PretrainedBPETokenizer`; BPE over SentencePiece pieces with byte
fallback (Llama 2, Mistral) a :class:`SentencePieceBPETokenizer`.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import ScratchError
from .base import FORMAT, from_file_dict, read_json
from .bpe_hf import _pattern_of
from .bpe_pretrained import PretrainedBPETokenizer
from .byte_level import token_str_to_bytes
from .pretrained import _NORMALIZERS

SUPPORTED = ("BPE over bytes (GPT-2, Llama 3, Qwen2, SmolLM2) or over SentencePiece pieces with byte fallback "
             "(Llama 2, Mistral)")


def _token_text(v):
    """tokenizer_config writes a special token as its text or as {"content": text, ...}."""
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) and v else None


def read_config(d: Path) -> dict:
    """What tokenizer_config.json (and chat_template.jinja, special_tokens_map.json) say."""
    cfg = read_json(d / "tokenizer_config.json") if (d / "tokenizer_config.json").is_file() else {}
    if (d / "special_tokens_map.json").is_file():
        for k, v in read_json(d / "special_tokens_map.json").items():
            cfg.setdefault(k, v)
    template = cfg.get("chat_template")
    if (d / "chat_template.jinja").is_file():
        template = (d / "chat_template.jinja").read_text(encoding="utf-8")
    elif not template and (d / "chat_template.json").is_file():
        template = read_json(d / "chat_template.json").get("chat_template")
    out = {name: _token_text(cfg.get(name)) for name in ("bos_token", "eos_token", "pad_token", "unk_token")}
    out["chat_template"] = template
    for flag in ("add_bos_token", "add_eos_token"):
        if isinstance(cfg.get(flag), bool):
            out[flag] = cfg[flag]
    return out


def _normalizer(n, where):
    if n is None:
        return None
    kind = n.get("type")
    if kind == "Sequence" and len(n.get("normalizers") or []) == 1:
        return _normalizer(n["normalizers"][0], where)
    if kind in _NORMALIZERS:
        return kind
    raise ScratchError(f"{where}: unsupported normalizer {json.dumps(n)[:100]} (supported: none, "
                       f"{', '.join(_NORMALIZERS)})")


def _template_ends(post, where) -> tuple[list, list]:
    """The special tokens a TemplateProcessing post_processor puts before and after a text."""
    if not post or post.get("type") != "TemplateProcessing":
        if post and post.get("type") == "Sequence":
            for p in post.get("processors") or []:
                if p.get("type") == "TemplateProcessing":
                    return _template_ends(p, where)
        return [], []
    before, after, seen = [], [], False
    for item in post.get("single") or []:
        if "Sequence" in item:
            seen = True
        elif "SpecialToken" in item:
            (after if seen else before).append(item["SpecialToken"]["id"])
    if len(before) > 1 or len(after) > 1:
        raise ScratchError(f"{where}: the post_processor adds {before + after}; supported: at most one token "
                           f"before the text (bos) and one after (eos)")
    return before, after


def from_hf_dir(directory):
    """The tokenizer of a Hugging Face model directory (tokenizer.json + tokenizer_config.json)."""
    d = Path(directory)
    if not (d / "tokenizer.json").is_file():
        raise ScratchError(f"{d} has no tokenizer.json (a Hugging Face model directory holds one)")
    where = d / "tokenizer.json"
    data = read_json(where)
    if data.get("format") == FORMAT:  # one of our checkpoints: the tokenizer saved with it
        return from_file_dict(data, where)
    model = data.get("model") or {}
    kind = model.get("type", "BPE" if "merges" in model else None)
    if kind != "BPE" or "vocab" not in model or "merges" not in model:
        raise ScratchError(f"{where}: the tokenizer model is {kind!r}; supported: {SUPPORTED}")
    cfg = read_config(d)
    added = data.get("added_tokens") or []
    before, after = _template_ends(data.get("post_processor"), where)
    if before:
        cfg.setdefault("add_bos_token", True)
        cfg["bos_token"] = cfg.get("bos_token") or before[0]
    if after:
        cfg.setdefault("add_eos_token", True)
        cfg["eos_token"] = cfg.get("eos_token") or after[0]
    merges = [m.split(" ", 1) if isinstance(m, str) else m for m in model["merges"]]
    if model.get("byte_fallback"):
        from .spm_bpe import SentencePieceBPETokenizer
        return SentencePieceBPETokenizer.from_hf_parts(data, model, merges, added, cfg, where)
    for key, ok in (("continuing_subword_prefix", ("", None)), ("end_of_word_suffix", ("", None)),
                    ("dropout", (None, 0, 0.0))):
        if model.get(key) not in ok:
            raise ScratchError(f"{where}: unsupported BPE setting {key}={model.get(key)!r}")
    pattern = _pattern_of(data.get("pre_tokenizer"), where)
    added_ids = {int(a["id"]) for a in added}
    tokens, other = {}, {}
    for s, i in model["vocab"].items():
        if int(i) in added_ids:
            continue
        try:
            tokens[int(i)] = token_str_to_bytes(s)
        except ValueError:
            other[int(i)] = s
    try:
        merges = [(token_str_to_bytes(a), token_str_to_bytes(b)) for a, b in merges]
    except ValueError as e:
        raise ScratchError(f"{where}: a merge is not byte-level text ({e}); supported: {SUPPORTED}") from None
    unk = model.get("unk_token")
    missing_byte = model["vocab"].get(unk) if unk else None
    return PretrainedBPETokenizer.build(
        tokens, merges, added, pattern, other=other, ignore_merges=bool(model.get("ignore_merges")),
        missing_byte=missing_byte, normalizer=_normalizer(data.get("normalizer"), where), **cfg)
