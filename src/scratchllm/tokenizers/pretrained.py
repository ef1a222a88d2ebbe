"""What the tokenizer of a published model adds to its vocabulary.

A model downloaded from Hugging Face or as a GGUF file comes with more than
tokens and merges:

- added tokens ("<|im_start|>", "<|eot_id|>", "<think>" ...), each one id.
  They are found in the text *before* it is split and merged (Hugging Face's
  added vocabulary, llama.cpp's special-token partition), so
  "<|im_start|>user" is the id of <|im_start|> followed by the tokens of
  "user", never "<", "|", "im" .... The longest one starting leftmost wins.
  Special ones (control tokens) are matched unless ``parse_special=False``;
  the others (user-defined) always.
- bos / eos / pad / unk tokens, and whether ``encode`` puts bos in front
  (``add_bos_token``: Llama 3 yes, SmolLM2 and Qwen2 no) or eos behind.
- a normalizer (Qwen2's NFC) applied to the text between added tokens.
- the chat template (see chat_template.py).

:class:`PretrainedTokenizer` holds these for both kinds of vocabulary
(byte-level BPE in bpe_pretrained.py, SentencePiece BPE in spm_bpe.py); a
class mixes it in and provides ``_encode_text(text, after_special)`` for
the stretches between added tokens.
"""
from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Iterable

import regex

from ..errors import ScratchError
from .chat_template import render

_NORMALIZERS = ("NFC", "NFD", "NFKC", "NFKD")
# Tokens that end a turn in the chat layouts of common families; generation stops at them as at eos.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
               "<|end_of_text|>", "</s>")
_FLAGS = ("special", "lstrip", "rstrip", "single_word")


def added_token(content: str, id: int, special: bool = True, lstrip=False, rstrip=False, single_word=False,
                **_other) -> dict:
    """One added token as we keep it (the fields of Hugging Face's added_tokens entries)."""
    if not isinstance(content, str) or not content:
        raise ScratchError(f"added token {id} has no text")
    return {"content": content, "id": int(id), "special": bool(special), "lstrip": bool(lstrip),
            "rstrip": bool(rstrip), "single_word": bool(single_word)}


class PretrainedTokenizer:
    """Added tokens, bos/eos, normalizer and chat template (mixed into a tokenizer class)."""

    def _init_pretrained(self, added: Iterable[dict] = (), *, bos_token=None, eos_token=None, pad_token=None,
                         unk_token=None, add_bos_token=False, add_eos_token=False, chat_template=None,
                         normalizer=None):
        self.added_tokens = [added_token(**a) for a in added]
        if normalizer not in (None,) + _NORMALIZERS:
            raise ScratchError(f"unsupported normalizer {normalizer!r} (supported: {', '.join(_NORMALIZERS)})")
        self.normalizer = normalizer
        self.bos_token, self.eos_token, self.pad_token, self.unk_token = bos_token, eos_token, pad_token, unk_token
        self.add_bos_token, self.add_eos_token = bool(add_bos_token), bool(add_eos_token)
        if isinstance(chat_template, list):  # tokenizer_config may list named templates
            named = {t.get("name"): t.get("template") for t in chat_template if isinstance(t, dict)}
            chat_template = named.get("default") or next(iter(named.values()), None)
        self.chat_template = chat_template or None
        for name in ("bos", "eos", "pad", "unk"):
            tok = getattr(self, f"{name}_token")
            setattr(self, f"{name}_token_id", None if tok is None else self.token_to_id(tok))
        self._added_res = {}

    # -- finding added tokens ----------------------------------------------------
    def _added_re(self, parse_special):
        """The regex of the added tokens to find: the non-special ones always, the special ones
        if parse_special is True, or those of them in parse_special if it is a set."""
        r = self._added_res.get(parse_special)
        if r is None:
            alts = []
            for a in sorted(self.added_tokens, key=lambda a: (-len(a["content"]), a["content"])):
                if a["special"] and not (parse_special is True or (parse_special and a["content"] in parse_special)):
                    continue
                p = regex.escape(a["content"])
                if a["single_word"]:
                    p = rf"(?<!\w){p}(?!\w)"
                # lstrip / rstrip: the token takes the whitespace beside it.
                alts.append((r"\s*" if a["lstrip"] else "") + f"({p})" + (r"\s*" if a["rstrip"] else ""))
            r = self._added_res[parse_special] = regex.compile("|".join(alts)) if alts else None
        return r

    def _added_ids(self) -> dict:
        return {a["content"]: a["id"] for a in self.added_tokens}

    def encode(self, text: str, *, add_special_tokens: bool = True, parse_special: bool = True,
               allowed_special=None, disallowed_special=None) -> list[int]:
        """Token ids of text, as the model's own tokenizer gives them.

        Added tokens in the text become their ids (special ones only with
        parse_special, as Hugging Face does by default). add_special_tokens:
        put bos in front / eos behind where this tokenizer does.
        allowed_special ("all" or a set) is BPETokenizer's spelling of
        parse_special; special tokens' text is never refused here, so
        disallowed_special changes nothing.
        """
        if not isinstance(text, str):
            raise ScratchError(f"encode takes a str, not {type(text).__name__}")
        if allowed_special is not None:
            parse_special = True if allowed_special == "all" else frozenset(
                {allowed_special} if isinstance(allowed_special, str) else allowed_special)
        ids: list[int] = []
        if add_special_tokens and self.add_bos_token and self.bos_token_id is not None:
            ids.append(self.bos_token_id)
        found = self._added_re(parse_special)
        pos, after_special = 0, True
        if found is not None:
            by_text = self._added_ids()
            for m in found.finditer(text):
                if m.start() > pos:
                    ids += self._encode_text(self._normalize(text[pos:m.start()]), after_special)
                token = next(g for g in m.groups() if g is not None)
                ids.append(by_text[token])
                pos, after_special = m.end(), True
        if pos < len(text):
            ids += self._encode_text(self._normalize(text[pos:]), after_special)
        if add_special_tokens and self.add_eos_token and self.eos_token_id is not None:
            ids.append(self.eos_token_id)
        return ids

    def _normalize(self, text: str) -> str:
        return unicodedata.normalize(self.normalizer, text) if self.normalizer else text

    def _encode_text(self, text: str, after_special: bool) -> list[int]:
        raise NotImplementedError

    # -- chat ------------------------------------------------------------------------
    @property
    def stop_token_ids(self) -> set:
        """Ids that end an answer: eos and the end-of-turn tokens of common chat layouts."""
        stops = {self.eos_token_id} if self.eos_token_id is not None else set()
        by_text = self._added_ids()
        stops.update(by_text[t] for t in END_OF_TURN if t in by_text)
        return stops

    def apply_chat_template(self, messages, add_generation_prompt: bool = True, tokenize: bool = True,
                            chat_template: str | None = None, **variables):
        """A conversation as token ids (or as text with tokenize=False), laid out by the model's template.

        messages: [{"role": "system"|"user"|"assistant", "content": "..."}, ...].
        add_generation_prompt: end with the opening of the assistant's turn,
        so that the model's next tokens are its answer. The text is encoded
        with its special tokens' ids and without adding bos (the template
        writes bos itself where the model wants it).
        """
        template = chat_template or self.chat_template
        if not template:
            raise ScratchError("this tokenizer has no chat template (the model it came with was not made for chat)")
        values = {"bos_token": self.bos_token, "eos_token": self.eos_token, "pad_token": self.pad_token,
                  "unk_token": self.unk_token, "tools": None, "documents": None}
        values = {k: v for k, v in values.items() if v is not None or k in ("tools", "documents")}
        values.update(variables)
        text = render(template, messages, add_generation_prompt, **values)
        return self.encode(text, add_special_tokens=False) if tokenize else text

    # -- files ---------------------------------------------------------------------
    def _write_hf(self, directory, tokenizer_json: dict) -> None:
        """tokenizer.json (given, less what this mixin holds: added tokens, normalizer, bos/eos
        post_processor) and tokenizer_config.json with the chat template, as transformers reads them."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tokenizer_json["added_tokens"] = [
            {"id": a["id"], "content": a["content"], "single_word": a["single_word"], "lstrip": a["lstrip"],
             "rstrip": a["rstrip"], "normalized": False, "special": a["special"]}
            for a in sorted(self.added_tokens, key=lambda a: a["id"])]
        if self.normalizer:
            tokenizer_json["normalizer"] = {"type": self.normalizer}
        before = [self.bos_token] if self.add_bos_token and self.bos_token else []
        after = [self.eos_token] if self.add_eos_token and self.eos_token else []
        if before or after:
            a, b = [{"Sequence": {"id": x, "type_id": 0}} for x in "AB"]
            first = [{"SpecialToken": {"id": t, "type_id": 0}} for t in before]
            last = [{"SpecialToken": {"id": t, "type_id": 0}} for t in after]
            tokenizer_json["post_processor"] = {
                "type": "TemplateProcessing", "single": first + [a] + last,
                "pair": first + [a] + last + first + [b] + last,
                "special_tokens": {t: {"id": t, "ids": [self.token_to_id(t)], "tokens": [t]} for t in before + after}}
        (d / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False, indent=1), encoding="utf-8")
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                  "add_bos_token": self.add_bos_token, "add_eos_token": self.add_eos_token}
        for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
            if getattr(self, name) is not None:
                config[name] = getattr(self, name)
        if self.chat_template:
            config["chat_template"] = self.chat_template
        (d / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=1), encoding="utf-8")

    def _pretrained_dict(self) -> dict:
        return {"added_tokens": self.added_tokens, "bos_token": self.bos_token, "eos_token": self.eos_token,
                "pad_token": self.pad_token, "unk_token": self.unk_token, "add_bos_token": self.add_bos_token,
                "add_eos_token": self.add_eos_token, "normalizer": self.normalizer,
                "chat_template": self.chat_template}

    @staticmethod
    def _pretrained_kw(d: dict) -> dict:
        return {"bos_token": d.get("bos_token"), "eos_token": d.get("eos_token"), "pad_token": d.get("pad_token"),
                "unk_token": d.get("unk_token"), "add_bos_token": d.get("add_bos_token", False),
                "add_eos_token": d.get("add_eos_token", False), "normalizer": d.get("normalizer"),
                "chat_template": d.get("chat_template")}
