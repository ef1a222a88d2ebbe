"""The byte-level BPE tokenizers of today's open models: Llama 3, Qwen2, SmolLM2, GPT-2.

They are :class:`BPETokenizer`'s algorithm (bytes, merges applied lowest rank
first) with what a published model adds (pretrained.py): added tokens found
before splitting, bos/eos, a normalizer, the chat template, and the
family's split pattern (patterns.py: "llama3", "qwen2", "smollm" ...). Two
differences from our own BPE files follow the model's tokenizer:

- ``encode`` finds special tokens in the text and gives their ids (a chat
  prompt is text with <|im_start|> in it), where BPETokenizer refuses them
  unless allowed; ``parse_special=False`` encodes them as plain text.
- ``ignore_merges`` (Llama 3): a pre-token that is itself a token is taken
  whole, before any merge is tried.

Read one with ``scratchllm.tokenizers.from_hf_dir`` or ``from_gguf``; it
saves to and loads from our tokenizer.json like every tokenizer.
"""
from __future__ import annotations

from typing import Iterable, Mapping

from ..errors import ScratchError
from .bpe import BPETokenizer
from .bpe_hf import to_hf_dict
from .byte_level import token_str_to_bytes
from .patterns import pattern_name, resolve_pattern
from .pretrained import PretrainedTokenizer


class PretrainedBPETokenizer(PretrainedTokenizer, BPETokenizer):
    """Byte-level BPE of a published model. Build with :meth:`build`."""

    type_name = "pretrained-bpe"

    @classmethod
    def build(cls, tokens: Mapping[int, bytes], merges: Iterable[tuple[bytes, bytes]], added: Iterable[dict],
              pattern, *, other: Mapping[int, str] = None, ignore_merges: bool = False, missing_byte=None,
              **pretrained) -> "PretrainedBPETokenizer":
        """tokens: id -> bytes of every byte-level token; merges: (left bytes, right bytes) in rank
        order; added: added-token dicts (pretrained.added_token); other: id -> text of entries that
        are neither (never produced by encoding, decoded as their text); missing_byte: the id of a
        byte the vocabulary lacks, or None to drop such bytes (see BPETokenizer._build)."""
        tok = cls.__new__(cls)
        tok.pattern = resolve_pattern(pattern)
        tok.merge_rule = "pairs"
        tok.ignore_merges = bool(ignore_merges)
        tok.missing_byte = missing_byte
        added = list(added)
        texts = {a["id"]: a["content"] for a in added}
        texts.update(other or {})
        tokens = {i: b for i, b in tokens.items() if i not in texts}
        ids = {b: i for i, b in tokens.items()}
        triples = []
        for left, right in merges:
            try:
                a, b, z = ids[left], ids[right], ids[left + right]
            except KeyError:
                raise ScratchError(f"the merge {left!r} + {right!r} names a token the vocabulary does not have") \
                    from None
            triples.append((a, b, z))
        specials = {}
        for i, t in texts.items():
            if t in specials:
                raise ScratchError(f"two added tokens have the same text {t!r} (ids {specials[t]} and {i})")
            specials[t] = i
        tok._build(tokens, triples, specials, missing_byte=missing_byte)
        tok._init_pretrained(added, **pretrained)
        return tok

    def _encode_text(self, text: str, after_special: bool) -> list[int]:
        return self.encode_ordinary(text)

    def _encode_piece(self, piece: str) -> tuple[int, ...]:
        if self.ignore_merges:
            whole = self._token_ids.get(piece.encode("utf-8", "surrogatepass"))
            if whole is not None:
                return (whole,)
        return super()._encode_piece(piece)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        ids = self._check_ids(ids)
        if skip_special_tokens:
            special = {a["id"] for a in self.added_tokens if a["special"]}
            ids = [i for i in ids if i not in special]
        return super().decode(ids)

    # -- files ---------------------------------------------------------------------
    def save_hf(self, directory) -> None:
        """tokenizer.json and tokenizer_config.json (with the chat template) that transformers reads
        as this same tokenizer."""
        hf = to_hf_dict(self)
        hf["model"]["ignore_merges"] = self.ignore_merges
        if self.missing_byte is not None:
            hf["model"]["unk_token"] = self.id_to_token(self.missing_byte)
        self._write_hf(directory, hf)

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["ignore_merges"] = self.ignore_merges
        d["missing_byte"] = self.missing_byte
        d.update(self._pretrained_dict())
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PretrainedBPETokenizer":
        added = d.get("added_tokens") or []
        added_ids = {a["id"] for a in added}
        other = {int(i): s for s, i in (d.get("special_tokens") or {}).items() if int(i) not in added_ids}
        tokens = {int(i): token_str_to_bytes(s) for s, i in d["vocab"].items()}
        merges = [tuple(token_str_to_bytes(x) for x in m.split(" ")) for m in d["merges"]]
        return cls.build(tokens, merges, added, d["pattern"], other=other, ignore_merges=d.get("ignore_merges", False),
                         missing_byte=d.get("missing_byte"), **cls._pretrained_kw(d))

    def __repr__(self) -> str:
        return (f"PretrainedBPETokenizer(vocab_size={self.vocab_size}, pattern={pattern_name(self.pattern)!r}, "
                f"added_tokens={len(self.added_tokens)}, bos={self.bos_token!r}, eos={self.eos_token!r}, "
                f"chat_template={'yes' if self.chat_template else 'no'})")

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_added_res", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._added_res = {}
