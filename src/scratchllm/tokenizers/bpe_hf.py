"""BPE in other programs' files: OpenAI's GPT-2 release and Hugging Face's.

- GPT-2 release: encoder.json (token string -> id) and vocab.bpe (a
  "#version" line, then one merge "Ġ t" per line, in rank order). Read with
  the "ranks" merge rule, which is how tiktoken's "gpt2" encoding reads them.
- Hugging Face: tokenizer.json (model "BPE" with a ByteLevel pre-tokenizer,
  as GPT-2's), or vocab.json + merges.txt (the same two files as GPT-2's
  under other names). Read with the "pairs" rule, which is what their BPE
  model applies. Other configurations (normalizers, prefix spaces, WordPiece
  ...) are refused with a message naming the setting.

A multi-byte entry of a vocabulary that no merge produces cannot come from
BPE: it is an added (special) token such as "<|endoftext|>".

The readers return the parts (vocabulary, merges, rule ...) that
``BPETokenizer.from_file_parts`` builds a tokenizer from, so this module needs
no tokenizer class and the class can use it.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import ScratchError
from .base import read_json
from .byte_level import token_str_to_bytes
from .patterns import GPT2_PATTERN


def read_gpt2_files(encoder_json, vocab_bpe) -> dict:
    """The parts of OpenAI's GPT-2 files (encoder.json, vocab.bpe), read with the "ranks" rule."""
    return {"vocab": read_json(encoder_json), "merges": _read_merges_txt(vocab_bpe),
            "where": Path(encoder_json), "merge_rule": "ranks"}


def read_vocab_merges(folder) -> dict:
    """The parts of a Hugging Face folder's vocab.json + merges.txt, read with the "pairs" rule."""
    folder = Path(folder)
    return {"vocab": read_json(folder / "vocab.json"), "merges": _read_merges_txt(folder / "merges.txt"),
            "where": folder, "merge_rule": "pairs"}


def _read_merges_txt(path) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").split("\n")
    except OSError as e:
        raise ScratchError(f"cannot read merges file {path}: {e}") from None
    # "#version: 0.2" heads both GPT-2's vocab.bpe and HF's merges.txt.
    return [ln for ln in lines if ln and not ln.startswith("#version")]


def unmerged_entries(vocab: dict, merges: list) -> dict:
    """The vocabulary entries no merge produces and that are not single bytes: added tokens."""
    merged = {"".join(m.split(" ") if isinstance(m, str) else m) for m in merges}
    found = {}
    for s, i in vocab.items():
        if s in merged:
            continue
        try:
            single_byte = len(token_str_to_bytes(s)) == 1
        except ValueError:
            single_byte = False  # not even byte-level text
        if not single_byte:
            found[s] = i
    return found


# -- Hugging Face tokenizer.json ----------------------------------------------

def _byte_level(use_regex: bool) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": use_regex}


def to_hf_dict(tok) -> dict:
    """The tokenizer.json object Hugging Face's `tokenizers` reads."""
    if tok.pattern == GPT2_PATTERN:
        pre = _byte_level(True)
    elif tok.pattern is None:
        pre = _byte_level(False)
    else:
        patterns = tok.pattern if isinstance(tok.pattern, tuple) else (tok.pattern,)
        splits = [{"type": "Split", "pattern": {"Regex": p}, "behavior": "Isolated", "invert": False} for p in patterns]
        pre = {"type": "Sequence", "pretokenizers": splits + [_byte_level(False)]}
    ours = tok.to_dict()
    vocab = dict(ours["vocab"])
    vocab.update(tok.special_tokens)
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for s, i in sorted(tok.special_tokens.items(), key=lambda x: x[1])]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": pre, "post_processor": None, "decoder": _byte_level(True),
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [m.split(" ") for m in ours["merges"]]},
    }


def write_hf(tok, directory) -> None:
    """tokenizer.json and tokenizer_config.json in a folder, for Hugging Face.

    With the GPT-2 pattern also vocab.json + merges.txt, and the config names
    GPT2Tokenizer, as in a GPT-2 model repository. Transformers' GPT-2 class
    always splits with GPT-2's pattern, so other patterns name the generic
    PreTrainedTokenizerFast, which follows tokenizer.json as written.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    hf = to_hf_dict(tok)
    (d / "tokenizer.json").write_text(json.dumps(hf, ensure_ascii=False, indent=1), encoding="utf-8")
    gpt2_like = tok.pattern == GPT2_PATTERN
    if gpt2_like:
        (d / "vocab.json").write_text(json.dumps(hf["model"]["vocab"], ensure_ascii=False), encoding="utf-8")
        lines = ["#version: 0.2"] + [" ".join(m) for m in hf["model"]["merges"]]
        (d / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {"tokenizer_class": "GPT2Tokenizer" if gpt2_like else "PreTrainedTokenizerFast",
              "add_prefix_space": False, "model_max_length": 1024}
    if "<|endoftext|>" in tok.special_tokens:
        config.update(bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    (d / "tokenizer_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")


def _pattern_of(pre, where):
    """The split pattern(s) of a pre_tokenizer we can reproduce, else an error.

    A Sequence runs its parts one after the other, each on the pieces of the
    one before: Split(Regex, Isolated) cuts with its regex, Digits cuts out
    digits (each alone with individual_digits), and ByteLevel with use_regex
    cuts with GPT-2's pattern (without, it only maps bytes to characters).
    """
    parts = (pre.get("pretokenizers") or []) if pre and pre.get("type") == "Sequence" else [pre]
    patterns, byte_level = [], False
    for p in parts:
        kind = (p or {}).get("type")
        if byte_level:  # a part after ByteLevel would split the byte characters, not the text
            byte_level = False
            break
        if kind == "ByteLevel" and not p.get("add_prefix_space", False):
            byte_level = True
            if p.get("use_regex", True):
                patterns.append(GPT2_PATTERN)
        elif (kind == "Split" and "Regex" in (p.get("pattern") or {}) and p.get("behavior") == "Isolated"
              and not p.get("invert")):
            patterns.append(p["pattern"]["Regex"])
        elif kind == "Digits":
            patterns.append(r"\p{N}" if p.get("individual_digits") else r"\p{N}+")
        else:
            byte_level = False
            break
    if byte_level:
        return tuple(patterns) if len(patterns) > 1 else (patterns[0] if patterns else None)
    raise ScratchError(f"{where}: unsupported pre_tokenizer {json.dumps(pre)[:120]} (supported: a ByteLevel without "
                       f"prefix space, alone or in a Sequence after Split(Regex, Isolated) and Digits parts)")


def read_hf_dict(data: dict, where) -> dict:
    """The parts of a Hugging Face tokenizer.json with a BPE model, read with the "pairs" rule."""
    model = data.get("model") or {}
    if model.get("type", "BPE") != "BPE" or "merges" not in model:
        raise ScratchError(f"{where}: only BPE tokenizers can be read (model type {model.get('type')!r})")
    for key, ok in (("continuing_subword_prefix", ("", None)), ("end_of_word_suffix", ("", None)),
                    ("byte_fallback", (False, None)), ("dropout", (None, 0, 0.0)), ("ignore_merges", (False, None))):
        if model.get(key) not in ok:
            raise ScratchError(f"{where}: unsupported BPE setting {key}={model.get(key)!r}")
    if data.get("normalizer") is not None:
        raise ScratchError(f"{where}: tokenizers with a normalizer are not supported")
    pattern = _pattern_of(data.get("pre_tokenizer"), where)
    specials = {t["content"]: int(t["id"]) for t in data.get("added_tokens") or []}
    return {"vocab": model["vocab"], "merges": model["merges"], "where": Path(str(where)), "merge_rule": "pairs",
            "specials": specials, "pattern": pattern}
