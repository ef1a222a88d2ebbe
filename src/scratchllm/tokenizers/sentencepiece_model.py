"""SentencePiece ``.model`` files, read and written without protobuf.

A ``.model`` file is one protobuf message, ModelProto::

    1  pieces           repeated { 1 piece: string, 2 score: float, 3 type: enum }
    2  trainer_spec     how it was trained (model_type 3, vocab_size 4,
                        byte_fallback 35, unk_id 40 ... unk_surface 44)
    3  normalizer_spec  1 name, 2 precompiled_charsmap, 3 add_dummy_prefix,
                        4 remove_extra_whitespaces, 5 escape_whitespaces
    4  self_test_data, 5 denormalizer_spec (kept as they are)

Protobuf's wire format is a sequence of (field number << 3 | wire type)
varints, each followed by a varint (type 0), 8 bytes (1), a length and that
many bytes (2) or 4 bytes (5). That is all this module needs to know: it
keeps the fields it does not use as raw bytes and writes them back unchanged.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Iterable

from ..errors import ScratchError

# Piece types (ModelProto.SentencePiece.Type).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
TYPE_NAMES = {NORMAL: "normal", UNKNOWN: "unknown", CONTROL: "control", USER_DEFINED: "user_defined",
              UNUSED: "unused", BYTE: "byte"}
UNIGRAM = 1  # TrainerSpec.model_type
# An unknown character's score in the lattice: this far below the lowest piece's, so that
# any cut into known pieces wins (encoding and training both use it).
UNK_PENALTY = 10.0


def byte_piece(b: int) -> str:
    return f"<0x{b:02X}>"


def meta_pieces(byte_fallback: bool, special_tokens: Iterable[str] = ()) -> list[tuple[str, float, int]]:
    """sentencepiece's fixed pieces: <unk> <s> </s>, special tokens, then the 256 bytes."""
    out = [("<unk>", 0.0, UNKNOWN), ("<s>", 0.0, CONTROL), ("</s>", 0.0, CONTROL)]
    out += [(s, 0.0, CONTROL) for s in special_tokens if s not in ("<s>", "</s>")]
    if byte_fallback:
        out += [(byte_piece(b), 0.0, BYTE) for b in range(256)]
    return out

# TrainerSpec fields we read (numbers as in sentencepiece_model.proto).
_TRAINER_INTS = {3: "model_type", 4: "vocab_size", 35: "byte_fallback", 24: "treat_whitespace_as_suffix",
                 40: "unk_id", 41: "bos_id", 42: "eos_id", 43: "pad_id"}
_TRAINER_STRS = {44: "unk_surface", 45: "unk_piece", 46: "bos_piece", 47: "eos_piece", 48: "pad_piece"}
_DEFAULT_UNK_SURFACE = " \u2047 "


class _Corrupt(Exception):
    pass


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Corrupt("a number runs past the end")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def parse_message(buf: bytes) -> list[tuple[int, int, object]]:
    """(field number, wire type, value) in order; value is an int or bytes."""
    out = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if num == 0:
            raise _Corrupt("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise _Corrupt(f"wire type {wire}")
        if pos > len(buf):
            raise _Corrupt("a field runs past the end")
        out.append((num, wire, value))
    return out


def _put_varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # negative int32 values are written as 10-byte varints
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _put(num: int, value) -> bytes:
    """One field: int -> varint, float -> 32-bit float, bytes/str -> length-delimited."""
    if isinstance(value, bool) or isinstance(value, int):
        return _put_varint(num << 3) + _put_varint(int(value))
    if isinstance(value, float):
        return _put_varint(num << 3 | 5) + struct.pack("<f", value)
    if isinstance(value, str):
        value = value.encode("utf-8")
    return _put_varint(num << 3 | 2) + _put_varint(len(value)) + value


@dataclass
class ModelFile:
    """The parts of a SentencePiece model a unigram tokenizer needs."""

    pieces: list[tuple[str, float, int]]          # (piece, score, type), id = position
    byte_fallback: bool = False
    unk_surface: str = _DEFAULT_UNK_SURFACE
    normalizer_name: str = "nmt_nfkc"
    charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True
    trainer_raw: bytes = b""                      # TrainerSpec as read (written back unchanged)
    extra: list = field(default_factory=list)     # other top-level fields, raw


def _signed32(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


def read_model(path) -> ModelFile:
    """Parse a SentencePiece .model file; a file that is not one is a ScratchError."""
    try:
        with open(path, "rb") as f:
            buf = f.read()
    except FileNotFoundError:
        raise ScratchError(f"SentencePiece model {path} does not exist") from None
    except OSError as e:
        raise ScratchError(f"cannot read SentencePiece model {path}: {e}") from None
    try:
        return _decode_model(buf)
    except (_Corrupt, UnicodeDecodeError, struct.error) as e:
        raise ScratchError(f"{path} is not a valid SentencePiece model file (or it is truncated): {e}") from None


def _decode_model(buf: bytes) -> ModelFile:
    pieces = []
    m = ModelFile(pieces=pieces)
    trainer = {}
    for num, wire, value in parse_message(buf):
        if num == 1 and wire == 2:
            piece, score, kind = None, 0.0, NORMAL
            for n, w, v in parse_message(value):
                if n == 1 and w == 2:
                    piece = v.decode("utf-8")
                elif n == 2 and w == 5:
                    score = struct.unpack("<f", v)[0]
                elif n == 3 and w == 0:
                    kind = v
            if not piece:
                raise _Corrupt(f"piece {len(pieces)} is empty")
            if kind not in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE):
                raise _Corrupt(f"piece {piece!r} has unknown type {kind}")
            pieces.append((piece, score, kind))
        elif num == 2 and wire == 2:
            m.trainer_raw = value
            for n, w, v in parse_message(value):
                if n in _TRAINER_INTS and w == 0:
                    trainer[_TRAINER_INTS[n]] = _signed32(v)
                elif n in _TRAINER_STRS and w == 2:
                    trainer[_TRAINER_STRS[n]] = v.decode("utf-8")
        elif num == 3 and wire == 2:
            for n, w, v in parse_message(value):
                if n == 1 and w == 2:
                    m.normalizer_name = v.decode("utf-8")
                elif n == 2 and w == 2:
                    m.charsmap = bytes(v)
                elif n == 3 and w == 0:
                    m.add_dummy_prefix = bool(v)
                elif n == 4 and w == 0:
                    m.remove_extra_whitespaces = bool(v)
                elif n == 5 and w == 0:
                    m.escape_whitespaces = bool(v)
        else:
            m.extra.append((num, wire, value))
    if not pieces:
        raise _Corrupt("it has no pieces")
    if trainer.get("model_type", UNIGRAM) != UNIGRAM:
        kind = {2: "BPE", 3: "word", 4: "char"}.get(trainer["model_type"], str(trainer["model_type"]))
        raise ScratchError(f"this is a SentencePiece {kind} model; only unigram models can be read")
    if trainer.get("treat_whitespace_as_suffix"):
        raise ScratchError("SentencePiece models with treat_whitespace_as_suffix are not supported")
    m.byte_fallback = bool(trainer.get("byte_fallback", 0))
    m.unk_surface = trainer.get("unk_surface", _DEFAULT_UNK_SURFACE)
    if sum(k == UNKNOWN for _, _, k in pieces) != 1:
        raise _Corrupt("it must have exactly one unknown piece")
    return m


def trainer_spec(vocab_size: int, byte_fallback: bool, unk_id: int, bos_id: int = -1, eos_id: int = -1,
                 pad_id: int = -1, unk_piece: str = "<unk>") -> bytes:
    """A TrainerSpec saying what sentencepiece needs to know at encoding time."""
    fields = [(3, UNIGRAM), (4, vocab_size), (35, bool(byte_fallback)), (40, unk_id), (41, bos_id), (42, eos_id),
              (43, pad_id), (45, unk_piece)]
    return b"".join(_put(n, v) for n, v in fields)


def write_model(m: ModelFile, path) -> None:
    """Serialize m as a .model file (written whole, or not at all)."""
    from ..files import write_atomic

    out = bytearray()
    for piece, score, kind in m.pieces:
        body = _put(1, piece) + _put(2, float(score)) + (_put(3, kind) if kind != NORMAL else b"")
        out += _put(1, body)
    out += _put(2, m.trainer_raw)
    norm = (_put(1, m.normalizer_name) + _put(2, m.charsmap) + _put(3, m.add_dummy_prefix)
            + _put(4, m.remove_extra_whitespaces) + _put(5, m.escape_whitespaces))
    out += _put(3, norm)
    for num, _wire, value in m.extra:
        if isinstance(value, bytes) and _wire == 2:
            out += _put(num, value)
    write_atomic(path, bytes(out))
