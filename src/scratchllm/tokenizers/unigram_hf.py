"""Unigram tokenizers as Hugging Face ``tokenizer.json`` files (model "Unigram").

SentencePiece's steps map onto the library's parts as its converters do it:

- normalizer: ``Precompiled`` (the charsmap bytes, base64); when extra
  whitespace is removed, ``Strip`` and ``Replace(" {2,}" -> " ")``; then
  ``Replace(" " -> "▁")`` and, for ``add_dummy_prefix``, ``Prepend("▁")``;
- no pre-tokenizer: the lattice covers the whole text, as in sentencepiece;
- model: the pieces with their scores, ``unk_id``, ``byte_fallback``;
- decoder: ``Replace("▁" -> " ")``, ``ByteFallback`` (pieces <0xE2> ... to
  bytes), ``Fuse``, and ``Strip`` of the dummy prefix's space.

Control pieces (<s>, </s>, special tokens) are listed as special added tokens.
Reading accepts that layout (and without the charsmap, for ``identity``).
"""
from __future__ import annotations

import base64
import json

from ..errors import ScratchError
from .normalize import SPACE, Normalizer
from .sentencepiece_model import BYTE, CONTROL, NORMAL, UNKNOWN

_SPACES = {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}
_STRIP = {"type": "Strip", "strip_left": True, "strip_right": True}
_ESCAPE = {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}
_PREFIX = {"type": "Prepend", "prepend": SPACE}


def to_hf_dict(tok) -> dict:
    n = tok.normalizer
    norms = []
    if n.charsmap:
        norms.append({"type": "Precompiled", "precompiled_charsmap": base64.b64encode(n.charsmap).decode("ascii")})
    if n.remove_extra_whitespaces:
        norms += [_STRIP, _SPACES]
    norms.append(_ESCAPE)
    if n.add_dummy_prefix:
        norms.append(_PREFIX)
    added = [{"id": i, "content": p, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for i, (p, _s, t) in enumerate(tok._pieces) if t in (CONTROL, UNKNOWN)]
    decoders = [{"type": "Replace", "pattern": {"String": SPACE}, "content": " "}]
    decoders += [{"type": "ByteFallback"}] if tok.byte_fallback else []
    decoders += [{"type": "Fuse"}]
    decoders += [{"type": "Strip", "content": " ", "start": 1, "stop": 0}] if n.add_dummy_prefix else []
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": norms},
        "pre_tokenizer": None, "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {"type": "Unigram", "unk_id": tok.unk_id, "byte_fallback": tok.byte_fallback,
                  "vocab": [[p, s] for p, s, _t in tok._pieces]},
    }


def write_hf(tok, directory) -> None:
    from pathlib import Path

    from ..files import write_atomic

    d = Path(directory)
    write_atomic(d / "tokenizer.json", json.dumps(to_hf_dict(tok), ensure_ascii=False, indent=1))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": tok.id_to_token(tok.unk_id)}
    write_atomic(d / "tokenizer_config.json", json.dumps(config, indent=1))


def read_hf_dict(data: dict, where) -> dict:
    """The parts of a Hugging Face tokenizer.json of the layout above that
    ``UnigramTokenizer.from_file_parts`` builds from."""
    model = data["model"]
    charsmap, remove_extra, prepend = b"", False, False
    norm = data.get("normalizer")
    parts = (norm.get("normalizers") or []) if norm and norm.get("type") == "Sequence" else ([norm] if norm else [])
    for p in parts:
        kind = p.get("type")
        if kind == "Precompiled":
            charsmap = base64.b64decode(p.get("precompiled_charsmap") or "")
        elif p == _STRIP or p == _SPACES:
            remove_extra = True
        elif p == _PREFIX:
            prepend = True
        elif p != _ESCAPE:
            raise ScratchError(f"{where}: unsupported normalizer {json.dumps(p)[:100]} for a unigram tokenizer")
    pre = data.get("pre_tokenizer")
    if pre and pre.get("type") == "Sequence":
        steps = pre.get("pretokenizers") or []
        if len(steps) == 2 and steps[0].get("type") == "WhitespaceSplit":
            remove_extra, pre = True, steps[1]
    if pre:  # a Metaspace pre-tokenizer does the escaping and the prefix itself
        if pre.get("type") != "Metaspace" or pre.get("replacement", SPACE) != SPACE:
            raise ScratchError(f"{where}: unsupported pre_tokenizer {json.dumps(pre)[:100]} for a unigram "
                               f"tokenizer (supported: none, or Metaspace)")
        prepend = pre.get("prepend_scheme", "always" if pre.get("add_prefix_space", True) else "never") != "never"
    special = {int(t["id"]) for t in data.get("added_tokens") or [] if t.get("special")}
    unk_id = model.get("unk_id")
    pieces = []
    for i, (p, score) in enumerate(model["vocab"]):
        if i == unk_id:
            kind = UNKNOWN
        elif i in special:
            kind = CONTROL
        elif len(p) == 6 and p.startswith("<0x") and p.endswith(">"):
            kind = BYTE
        else:
            kind = NORMAL
        pieces.append((p, float(score), kind))
    if unk_id is None:
        raise ScratchError(f"{where}: the Unigram model has no unk_id")
    return {"pieces": pieces, "normalizer": Normalizer(charsmap, prepend, remove_extra),
            "byte_fallback": bool(model.get("byte_fallback")), "normalization": "nmt_nfkc" if charsmap else "identity"}

