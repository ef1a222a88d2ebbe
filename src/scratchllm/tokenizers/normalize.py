"""SentencePiece's text normalisation: a character map, then whitespace rules.

A SentencePiece model carries its normalisation as data, the
``precompiled_charsmap``::

    uint32 (little-endian)  n, the size in bytes of the trie
    n bytes                 a double-array trie (darts-clone) over UTF-8 keys
    the rest                the replacement strings, each ended by a NUL

At each position the longest key that starts there is replaced by its
string (the trie's value is the string's offset); where no key starts, one
character is copied. ``identity`` is the empty map. ``nmt_nfkc`` (the
default) is Unicode NFKC plus a few rules for machine translation: control
characters are dropped, tabs, newlines and other spaces become " ".

Then (``Normalizer.normalize``), as sentencepiece does it:
``remove_extra_whitespaces`` drops leading and trailing spaces and joins runs
of them into one; ``escape_whitespaces`` writes " " as "▁" (U+2581);
``add_dummy_prefix`` puts a "▁" in front, so that "cat" at the start of a
text is the same piece "▁cat" as anywhere else.

What decoding cannot restore: whatever the map changed (NFKC: "ﬁ" -> "fi",
full-width "Ａ" -> "A"; nmt: tabs and newlines -> " "), and the removed
spaces. With ``identity`` and ``remove_extra_whitespaces=False``, decode
gives back the text exactly.

For models written here with ``nmt_nfkc`` the map is compiled by
:func:`nmt_nfkc_charsmap` from Python's own Unicode tables (NFKC of each
code point); sentencepiece's own map also lists composed sequences
("e" + U+0301 -> "é") and may follow another Unicode version, so the two
agree on ordinary text but not on every rare character. A model read from a
``.model`` file always applies the map stored in it.
"""
from __future__ import annotations

import functools
import re
import struct
import unicodedata

import numpy as np

from ..errors import ScratchError

SPACE = "\u2581"  # "▁", what a space becomes


# -- the double-array trie (darts-clone layout) --------------------------------
# Each unit is a uint32: bit 8 "has a value below", bits 0-7 the label, bit 31
# set in value units (so they never match a label); the offset to the
# children is (unit >> 10) << (8 if bit 9 else 0). A node at p with offset o
# has its child for byte c at p ^ o ^ c, and its value unit at p ^ o.

def _offset(u: int) -> int:
    return (u >> 10) << ((u & (1 << 9)) >> 6)


def trie_items(units) -> dict[bytes, int]:
    """Every key and value stored in a trie (walked level by level, when a model loads)."""
    units = np.asarray(units, dtype=np.int64)
    n = len(units)
    if n == 0:
        return {}
    offsets = (units >> 10) << ((units & (1 << 9)) >> 6)
    labels = units & ((1 << 31) | 0xFF)
    out: dict[bytes, int] = {}
    frontier = np.zeros(1, dtype=np.int64)
    keys = [b""]
    c = np.arange(1, 256, dtype=np.int64)
    for _depth in range(64):
        if not len(frontier):
            return out
        new_pos, new_keys = [], []
        for lo in range(0, len(frontier), 8192):
            f = frontier[lo:lo + 8192]
            cand = (f ^ offsets[f])[:, None] ^ c[None, :]            # (f, 255) child slots
            ok = cand < n
            ok[ok] = labels[cand[ok]] == np.broadcast_to(c, cand.shape)[ok]
            rows, cols = np.nonzero(ok)
            for r, col in zip(rows.tolist(), cols.tolist()):
                q = int(cand[r, col])
                k = keys[lo + r] + bytes([col + 1])
                u = int(units[q])
                if (u >> 8) & 1:
                    v = q ^ int(offsets[q])
                    if v >= n:
                        raise ScratchError("charsmap trie points past its end")
                    out[k] = int(units[v]) & ((1 << 31) - 1)
                new_pos.append(q)
                new_keys.append(k)
        frontier = np.asarray(new_pos, dtype=np.int64)
        keys = new_keys
    raise ScratchError("charsmap trie has a key longer than 64 bytes (a cycle?)")


def build_trie(items: dict[bytes, int]) -> list[int]:
    """A darts-clone double array holding items (keys without NUL bytes)."""
    # A plain trie first: node -> {label: child}, node -> value.
    children: list[dict[int, int]] = [{}]
    values: dict[int, int] = {}
    for key, value in sorted(items.items()):
        node = 0
        for c in key:
            nxt = children[node].get(c)
            if nxt is None:
                nxt = children[node][c] = len(children)
                children.append({})
            node = nxt
        values[node] = value
    size = 1 << 12
    units = np.zeros(size, dtype=np.int64)
    used = np.zeros(size, dtype=bool)
    used_base = np.zeros(size, dtype=bool)
    used[0] = True
    pos_of = {0: 0}
    order = [0]
    first_free = 1
    for node in order:  # breadth first; order grows as children are placed
        labels = sorted(children[node])
        slots = np.asarray(([0] if node in values else []) + labels, dtype=np.int64)
        if not len(slots):
            continue
        while used[first_free]:
            first_free += 1
        start = first_free ^ int(slots[0])
        while True:  # try 4096 bases at once: every slot free, the base not taken
            cands = np.arange(start & ~0xFF, (start & ~0xFF) + 4096, dtype=np.int64)
            need = int((cands[-1] | 0xFF) + 1)
            if need > size:
                grow = max(need, 2 * size) - size
                units = np.concatenate([units, np.zeros(grow, dtype=np.int64)])
                used = np.concatenate([used, np.zeros(grow, dtype=bool)])
                used_base = np.concatenate([used_base, np.zeros(grow, dtype=bool)])
                size += grow
            ok = ~used[cands[:, None] ^ slots[None, :]].any(axis=1) & ~used_base[cands]
            ok &= cands != pos_of[node]  # an offset of 0 (a node its own base) is refused by sentencepiece
            hits = np.flatnonzero(ok)
            if len(hits):
                base = int(cands[hits[0]])
                break
            start = (start & ~0xFF) + 4096
        used_base[base] = True
        p = pos_of[node]
        off = p ^ base
        if off >= 1 << 21:
            raise ScratchError("charsmap too large to compile")
        units[p] |= off << 10
        if node in values:
            units[p] |= 1 << 8
            used[base] = True
            units[base] = values[node] | (1 << 31)
        for c in labels:
            q = base ^ c
            used[q] = True
            units[q] = c
            child = children[node][c]
            pos_of[child] = q
            order.append(child)
    last = int(np.flatnonzero(used)[-1]) + 1
    last = -(-last // 256) * 256  # darts-clone arrays come in blocks of 256 units
    if last > size:
        units = np.concatenate([units, np.zeros(last - size, dtype=np.int64)])
    return units[:last].tolist()


def compile_charsmap(mapping: dict[str, str]) -> bytes:
    """The precompiled_charsmap bytes for a map of strings to their replacements."""
    if not mapping:
        return b""
    blob = bytearray()
    items = {}
    seen: dict[str, int] = {}
    for key, value in sorted(mapping.items()):
        if value not in seen:
            seen[value] = len(blob)
            blob += value.encode("utf-8") + b"\0"
        items[key.encode("utf-8")] = seen[value]
    units = build_trie(items)
    trie = np.asarray(units, dtype="<u4").tobytes()
    return struct.pack("<I", len(trie)) + trie + bytes(blob)


@functools.lru_cache(maxsize=4)
def decompile_charsmap(data: bytes) -> dict[bytes, bytes]:
    """The map stored in precompiled_charsmap bytes: UTF-8 key -> replacement."""
    if not data:
        return {}
    if len(data) < 4:
        raise ScratchError("charsmap is truncated")
    (n,) = struct.unpack("<I", data[:4])
    if n % 4 or 4 + n > len(data):
        raise ScratchError("charsmap trie size does not fit the data")
    units = np.frombuffer(data[4:4 + n], dtype="<u4")
    strings = data[4 + n:]
    out = {}
    for key, off in trie_items(units).items():
        end = strings.find(b"\0", off)
        if off >= len(strings) or end < 0:
            raise ScratchError("charsmap value points past its strings")
        out[key] = strings[off:end]
    return out


# nmt_nfkc's rules besides NFKC, as sentencepiece's builder applies them:
# most C0 controls (and DEL, U+008F, U+009F) are dropped; tab, newline,
# form feed, carriage return, the other Unicode spaces, line and paragraph
# separators, some invisible formatting characters and U+FFFD become " ".
_DROP = set(range(0x01, 0x09)) | {0x0B} | set(range(0x0E, 0x20)) | {0x7F, 0x8F, 0x9F}
_TO_SPACE = {0x09, 0x0A, 0x0C, 0x0D, 0x2028, 0x2029, 0x200B, 0x200C, 0x200E, 0x200F, 0xFEFF, 0x061C, 0xFFFD}
_KEEP = {0xFF5E}  # FULLWIDTH TILDE stays, as in sentencepiece's map


@functools.lru_cache(maxsize=1)
def nmt_nfkc_map() -> dict[str, str]:
    """nmt_nfkc as a per-character map: NFKC plus the rules above."""
    out = {}
    for lo in range(0, 0x110000, 128):
        cps = [cp for cp in range(max(lo, 1), lo + 128) if not 0xD800 <= cp <= 0xDFFF and cp not in _KEEP]
        # A block that NFKC leaves as it is holds no character NFKC changes alone (only
        # the spaces and controls of the rules above need a look there).
        block = "".join(map(chr, cps))
        whole = unicodedata.is_normalized("NFKC", block)
        if whole and block.isprintable():  # no control or space character either
            continue
        for cp in cps:
            c = chr(cp)
            if cp in _DROP:
                v = ""
            elif cp in _TO_SPACE or (c != " " and unicodedata.category(c) == "Zs"):
                v = " "
            elif whole:
                continue
            else:
                v = unicodedata.normalize("NFKC", c)
            if v != c:
                out[c] = v
    return out


@functools.lru_cache(maxsize=1)
def nmt_nfkc_charsmap() -> bytes:
    return compile_charsmap(nmt_nfkc_map())


def charsmap_for(name: str) -> bytes:
    if name == "identity":
        return b""
    if name == "nmt_nfkc":
        return nmt_nfkc_charsmap()
    raise ScratchError(f"unknown normalization {name!r} (known: nmt_nfkc, identity)")


class Normalizer:
    """Applies a charsmap and the whitespace rules, as sentencepiece's normalizer."""

    def __init__(self, charsmap: bytes = b"", add_dummy_prefix: bool = True, remove_extra_whitespaces: bool = True,
                 escape_whitespaces: bool = True):
        self.charsmap = bytes(charsmap)
        self.add_dummy_prefix = bool(add_dummy_prefix)
        self.remove_extra_whitespaces = bool(remove_extra_whitespaces)
        self.escape_whitespaces = bool(escape_whitespaces)
        self._single, self._multi, self._region, self._ascii = _compiled(self.charsmap)
        self._spaces = re.compile(" {2,}")

    def apply_map(self, text: str) -> str:
        """Longest match first at each position; most text needs only str.translate.

        Keys of several characters (a letter + combining accents, a kana +
        voicing mark) are tried only inside a run of such trailing marks.
        """
        if self._ascii is not None and text.isascii():
            # ASCII text: the map's ASCII part in one bytes.translate (no key of several characters is ASCII)
            table, delete = self._ascii
            return text.encode("ascii").translate(table, delete).decode("ascii")
        if self._region is None:
            return text.translate(self._single) if self._single else text
        out = []
        pos = 0
        for m in self._region.finditer(text):
            out.append(text[pos:m.start()].translate(self._single))
            out.append(self._longest(m.group()))
            pos = m.end()
        out.append(text[pos:].translate(self._single))
        return "".join(out)

    def _longest(self, s: str) -> str:
        multi, single = self._multi, self._single
        out = []
        i = 0
        while i < len(s):
            for j in range(min(len(s), i + _MAX_KEY), i + 1, -1):
                v = multi.get(s[i:j])
                if v is not None:
                    out.append(v)
                    i = j
                    break
            else:
                out.append(s[i].translate(single))
                i += 1
        return "".join(out)

    def normalize(self, text: str) -> str:
        """The text as the model sees it: mapped, spaces handled, " " as "▁"."""
        if not text:
            return ""
        s = self.apply_map(text)
        if self.remove_extra_whitespaces:
            s = self._spaces.sub(" ", s).strip(" ")
            if not s:
                return ""
        if self.escape_whitespaces:
            s = s.replace(" ", SPACE)
            if self.add_dummy_prefix:
                s = SPACE + s
            if self.remove_extra_whitespaces:
                s = s.rstrip(SPACE)
        elif self.add_dummy_prefix:
            s = " " + s
        return s


_MAX_KEY = 8


@functools.lru_cache(maxsize=4)
def _compiled(charsmap: bytes):
    """(single-character translate table, multi-character keys, regex of the regions they can match)."""
    single: dict[int, str] = {}
    multi: dict[str, str] = {}
    for k, v in decompile_charsmap(charsmap).items():
        try:
            key = k.decode("utf-8")
        except UnicodeDecodeError:
            continue  # not a whole character: sentencepiece's builder never writes one
        value = v.decode("utf-8", "replace")
        if len(key) == 1:
            single[ord(key)] = value
        elif len(key) <= _MAX_KEY:
            multi[key] = value
    # ASCII text meets only the ASCII keys when every longer key holds a non-ASCII character
    # (as in sentencepiece's maps: a letter + a combining mark); when those map to at most
    # one ASCII character each, one bytes.translate does the whole map.
    ascii_map = {k: v for k, v in single.items() if k < 128}
    ascii_fast = None
    if all(len(v) <= 1 and v.isascii() for v in ascii_map.values()) and not any(k.isascii() for k in multi):
        table = bytearray(range(256))
        for k, v in ascii_map.items():
            if v:
                table[k] = ord(v)
        ascii_fast = (bytes(table), bytes(k for k, v in ascii_map.items() if not v))
    if not multi:
        return single, multi, None, ascii_fast
    tails = sorted({c for k in multi for c in k[1:]})
    region = re.compile("(?s).[" + "".join(re.escape(c) for c in tails) + "]+")
    return single, multi, region, ascii_fast
