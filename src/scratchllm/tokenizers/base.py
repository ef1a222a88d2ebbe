"""What every tokenizer shares: the API, batch encoding and the file format.

A tokenizer file is one JSON object, written to be read by people too::

    {"format": "scratchllm-tokenizer", "version": 1, "type": "bpe", ...}

"type" says which class reads the rest. A file of another version, of another
format, or that is not valid JSON is refused with a message saying so.
"""
from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Iterable

import regex

from ..errors import ScratchError
from ..files import write_atomic

FORMAT = "scratchllm-tokenizer"
VERSION = 1
# The cache of encoded pre-tokens/words: only short ones are kept, and at most this many
# (then it starts again), so that a long text of unique strings cannot fill the memory.
_CACHE_PIECE_CHARS = 64
_CACHE_ENTRIES = 1 << 19


class Tokenizer:
    """Text <-> list of token ids. Subclasses fill in the learning and the mapping."""

    type_name = ""  # the "type" field of the file; set by each subclass
    _registry: dict[str, type["Tokenizer"]] = {}
    # The reader of every file (formats.load) needs the subclasses, so this module
    # cannot import it; formats.py puts it here when the package is imported.
    _read_any = None

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.type_name:
            Tokenizer._registry[cls.type_name] = cls

    # -- to be provided by subclasses -------------------------------------
    def train(self, text_or_iterable, vocab_size: int, **kw) -> "Tokenizer":
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def id_to_token(self, i: int) -> str:
        raise NotImplementedError

    def token_to_id(self, token: str) -> int:
        raise NotImplementedError

    def to_dict(self) -> dict:
        """The file's fields other than format/version/type."""
        raise NotImplementedError

    @classmethod
    def from_dict(cls, d: dict) -> "Tokenizer":
        raise NotImplementedError

    # -- shared ------------------------------------------------------------
    def encode_batch(self, texts: Iterable[str], workers: int = 1, **kw) -> list[list[int]]:
        """encode() of each text; workers > 1 spreads the texts over processes.

        Processes pay off only for many long texts: each worker starts with a
        copy of the tokenizer, and the ids are sent back.
        """
        texts = list(texts)
        if workers <= 1 or len(texts) < 2:
            return [self.encode(t, **kw) for t in texts]
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
        chunk = max(1, len(texts) // (workers * 4))
        with ctx.Pool(workers, initializer=_worker_init, initargs=(self, kw)) as pool:
            return pool.map(_worker_encode, texts, chunksize=chunk)

    def _special_set(self, value, name) -> frozenset:
        """allowed_special / disallowed_special as a set of this tokenizer's special tokens:
        "all", a string, an iterable of them, or nothing (else a clear error)."""
        if value == "all":
            return frozenset(self.special_tokens)
        if not value:
            return frozenset()
        if isinstance(value, str):
            value = {value}
        value = frozenset(value)
        unknown = value - set(self.special_tokens)
        if unknown:
            raise ScratchError(f"{name}: {sorted(unknown)[0]!r} is not a special token of this tokenizer "
                               f"(it has {sorted(self.special_tokens) or 'none'})")
        return value

    def _special_re(self, specials: frozenset):
        """A regex that finds these special tokens in text (compiled once per set, in ``_special_res``)."""
        r = self._special_res.get(specials)
        if r is None:
            # Longest first, so that a special token that starts another is not taken for it.
            alts = sorted(specials, key=lambda s: (-len(s), s))
            r = self._special_res[specials] = regex.compile("|".join(regex.escape(s) for s in alts))
        return r

    def _check_ids(self, ids) -> list[int]:
        """ids as a list of ints, every one a valid id (else a clear error)."""
        ids = [int(i) for i in ids]
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise ScratchError(f"token id {bad} is out of range: this tokenizer has ids 0..{self.vocab_size - 1}")
        return ids

    def save(self, path) -> None:
        """Write the tokenizer as one JSON file (written whole, then renamed)."""
        path = Path(path)
        data = {"format": FORMAT, "version": VERSION, "type": self.type_name, **self.to_dict()}
        write_atomic(path, json.dumps(data, ensure_ascii=False, indent=1) + "\n")

    @classmethod
    def load(cls, path) -> "Tokenizer":
        """Read a tokenizer file or folder (see scratchllm.tokenizers.load).
        On a subclass, it must hold that kind of tokenizer."""
        tok = Tokenizer._read_any(path)
        if not isinstance(tok, cls):
            raise ScratchError(f"{path} holds a {tok.type_name} tokenizer, not a {cls.type_name} one; "
                               f"load it with scratchllm.tokenizers.load")
        return tok

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """Each token as text a person can read."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class _PieceCache(dict):
    """Pre-token (or word) -> ids; a miss computes them. A dict subclass so hits stay in C."""

    def __init__(self, compute):
        super().__init__()
        self._compute = compute

    def __missing__(self, piece):
        ids = self._compute(piece)
        if len(piece) <= _CACHE_PIECE_CHARS:
            if len(self) >= _CACHE_ENTRIES:
                self.clear()
            self[piece] = ids
        return ids


def _utf8_to_text(data: bytes) -> str:
    try:
        # surrogatepass: a lone surrogate in the input (which Python strings
        # allow) was encoded as its 3 bytes and comes back as itself.
        return data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace")


def read_json(path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScratchError(f"tokenizer file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ScratchError(f"cannot read tokenizer file {path}: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ScratchError(f"{path} is not a valid tokenizer file: broken JSON at line {e.lineno} ({e.msg})") from None
    if not isinstance(data, dict):
        raise ScratchError(f"{path} is not a valid tokenizer file: expected a JSON object")
    return data


def from_file_dict(data: dict, path="<dict>") -> Tokenizer:
    """Build a tokenizer from the parsed JSON of one of our files."""
    if data.get("format") != FORMAT:
        raise ScratchError(f"{path} is not a scratchllm tokenizer file (no \"format\": \"{FORMAT}\")")
    version = data.get("version")
    if version != VERSION:
        raise ScratchError(f"{path} is a tokenizer file of version {version!r}; this scratchllm reads version "
                           f"{VERSION}: use a matching scratchllm, or train and save the tokenizer again")
    kind = data.get("type")
    if kind not in Tokenizer._registry:
        raise ScratchError(f"{path}: unknown tokenizer type {kind!r} (known: {', '.join(sorted(Tokenizer._registry))})")
    try:
        return Tokenizer._registry[kind].from_dict(data)
    except ScratchError as e:
        raise ScratchError(f"{path} is a corrupt tokenizer file: {e}") from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise ScratchError(f"{path} is a corrupt tokenizer file: {type(e).__name__}: {e}") from None


_worker_state: tuple = ()


def _worker_init(tokenizer, kw):
    global _worker_state
    _worker_state = (tokenizer, kw)


def _worker_encode(text):
    tokenizer, kw = _worker_state
    return tokenizer.encode(text, **kw)
