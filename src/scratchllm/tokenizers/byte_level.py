"""The 256 bytes as printable characters, and readable renderings of tokens.

A byte-level BPE token is a byte string, which may not be valid UTF-8 on its
own (an emoji is four bytes and can be split across tokens). To write tokens
into JSON files and merge lists, GPT-2 gives every byte a printable stand-in
character: bytes that are already printable Latin-1 characters stand for
themselves, and the other 68 (controls, space, the no-break space, the soft
hyphen) are moved to U+0100 and up, in byte order. So a space is written "Ġ"
(U+0120) and a newline "Ċ" (U+010A): " cat" is stored as "Ġcat". The same
table is used by OpenAI's GPT-2 files and by Hugging Face's ByteLevel
tokenizers, which is why our files can be read by theirs.
"""
from __future__ import annotations


def _is_printable_latin1(b: int) -> bool:
    # '!'..'~', '¡'..'¬', '®'..'ÿ': visible characters that need no escaping.
    return 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255


# Byte values in the order GPT-2 numbers them: printable ones first, then the
# rest. A byte-level vocabulary's first 256 ids follow this order (id 0 is
# "!", id 188 is the byte 0x00), here as in GPT-2 and Hugging Face trainers.
BYTE_ORDER: list[int] = [b for b in range(256) if _is_printable_latin1(b)] + [
    b for b in range(256) if not _is_printable_latin1(b)
]

# BYTE_TO_CHAR[b] is the stand-in character for byte b.
BYTE_TO_CHAR: list[str] = [""] * 256
for _k, _b in enumerate(b for b in range(256) if not _is_printable_latin1(b)):
    BYTE_TO_CHAR[_b] = chr(256 + _k)
for _b in range(256):
    if _is_printable_latin1(_b):
        BYTE_TO_CHAR[_b] = chr(_b)
CHAR_TO_BYTE: dict[str, int] = {c: b for b, c in enumerate(BYTE_TO_CHAR)}

# str.translate tables: decoding bytes as Latin-1 gives one character per byte
# (U+0000..U+00FF), which translate then swaps for the stand-ins, all in C.
_TO_STANDIN = {b: c for b, c in enumerate(BYTE_TO_CHAR)}
_FROM_STANDIN = {ord(c): chr(b) for b, c in enumerate(BYTE_TO_CHAR)}


def bytes_to_token_str(data: bytes) -> str:
    """b" cat" -> "Ġcat": the form used in vocab files and merge lists."""
    return data.decode("latin-1").translate(_TO_STANDIN)


def token_str_to_bytes(token: str) -> bytes:
    """"Ġcat" -> b" cat". Raises ValueError for a character outside the table."""
    if any(ord(c) not in _FROM_STANDIN for c in token):
        bad = next(c for c in token if ord(c) not in _FROM_STANDIN)
        raise ValueError(f"{token!r} is not a byte-level token string (character {bad!r} has no byte)")
    return token.translate(_FROM_STANDIN).encode("latin-1")


_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\", "'": "\\'"}


def readable(data: bytes) -> str:
    """A token's bytes as text a person can read, quoted like a Python string.

    Valid UTF-8 shows as its characters (b" cat" -> "' cat'"); bytes that are
    only part of a character show as hex escapes (the first byte of "€" ->
    "'\\xe2'"); newlines, tabs and other invisible characters are escaped.
    """
    out = []
    # surrogateescape keeps each undecodable byte as one U+DC80..U+DCFF code.
    for c in data.decode("utf-8", errors="surrogateescape"):
        o = ord(c)
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif 0xDC80 <= o <= 0xDCFF:
            out.append(f"\\x{o - 0xDC00:02x}")
        elif c == " " or c.isprintable():
            out.append(c)
        elif o <= 0xFF:
            out.append(f"\\x{o:02x}")
        else:
            out.append(f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}")
    return "'" + "".join(out) + "'"
