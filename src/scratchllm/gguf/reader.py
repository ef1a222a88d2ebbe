"""Reading a GGUF file (llama.cpp's format), versions 2 and 3, little-endian.

Layout, every number little-endian:

    magic b"GGUF" | version u32 | tensor count u64 | metadata count u64
    metadata:     key (string) | value type u32 | value            (metadata count times)
    tensor infos: name (string) | n_dims u32 | dims u64[n_dims] | ggml type u32 | offset u64
    padding to the alignment (metadata ``general.alignment``, else 32)
    tensor data:  each tensor at data start + its offset (a multiple of the alignment)

A string is a u64 byte length then UTF-8 bytes. An array value is an element
type u32, a u64 count, then the elements (arrays may hold arrays).
``dims`` lists the fastest-varying axis first (a row's length, then the
number of rows), the reverse of NumPy's row-major shape.

The file is memory-mapped: the header is parsed from the map, and a tensor's
bytes are only touched when it is dequantized.
"""
from __future__ import annotations

import struct
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import ScratchError
from .dequant import DEQUANTIZERS, GGML_TYPES, dequantize_blocks

DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # ggml tensors have at most 4 axes
# metadata value type id -> its little-endian code (struct's, which NumPy reads too); 8 string, 9 array
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<B", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY, _BOOL = 8, 9, 7
_U64 = struct.Struct("<Q")
_MAX_NESTING = 32  # arrays of arrays: far deeper than any file needs, far from Python's recursion limit
_CHUNK = 1 << 20  # numbers dequantized at a time: bounds the temporaries of a large tensor


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple  # NumPy's row-major shape (GGUF's dims reversed)
    type_name: str  # ggml type: "F32", "Q4_K", ...
    offset: int  # absolute byte offset in the file
    nbytes: int
    block: int  # numbers per block
    type_size: int  # bytes per block


class _Cursor:
    """Reads the header's values from the mapped bytes, each read checked against the file's end."""

    def __init__(self, buf: np.ndarray, path: Path):
        self.buf, self.mem, self.path, self.pos = buf, memoryview(buf), path, 0

    def corrupt(self, what: str) -> ScratchError:
        return ScratchError(f"{self.path} is corrupt or truncated: {what}")

    def skip(self, n: int, what: str) -> int:
        """Step over ``n`` bytes; return where they start."""
        start = self.pos
        if self.pos + n > len(self.buf):
            raise self.corrupt(f"{what} at byte {start} runs past the end of the file ({len(self.buf)} bytes)")
        self.pos += n
        return start

    def take(self, n: int, what: str) -> np.ndarray:
        start = self.skip(n, what)
        return self.buf[start:self.pos]

    def scalar(self, code: str, what: str):
        return struct.unpack_from(code, self.mem, self.skip(struct.calcsize(code), what))[0]

    def u32(self, what):
        return self.scalar("<I", what)

    def u64(self, what):
        return self.scalar("<Q", what)

    def string(self, what: str) -> str:
        n = self.u64(f"the length of {what}")
        start = self.skip(n, what)
        try:
            return str(self.mem[start:self.pos], "utf-8")
        except UnicodeDecodeError:
            raise self.corrupt(f"{what} at byte {start} is not UTF-8 text") from None

    def value(self, vtype: int, what: str, depth: int = 0):
        if vtype in _SCALARS:
            v = self.scalar(_SCALARS[vtype], what)
            return bool(v) if vtype == _BOOL else v
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            if depth >= _MAX_NESTING:
                raise self.corrupt(f"{what} nests arrays more than {_MAX_NESTING} deep")
            etype, n = self.u32(f"the element type of {what}"), self.u64(f"the length of {what}")
            return self.array(etype, n, what, depth)
        raise self.corrupt(f"{what} has unknown value type {vtype} (known: 0-12)")

    def array(self, etype: int, n: int, what: str, depth: int) -> list:
        if etype in _SCALARS:  # numbers: one NumPy read, not n Python reads
            dt = np.dtype(_SCALARS[etype])
            values = self.take(n * dt.itemsize, f"the {n} elements of {what}").view(dt)
            return values.astype(bool).tolist() if etype == _BOOL else values.tolist()
        if etype not in (_STRING, _ARRAY):
            raise self.corrupt(f"{what} is an array of unknown value type {etype} (known: 0-12)")
        if n * 8 > len(self.buf) - self.pos:  # each element needs at least its 8-byte length
            raise self.corrupt(f"{what} claims {n} elements, more than the rest of the file holds")
        if etype == _STRING:
            return self.strings(n, what)
        return [self.value(etype, f"element {i} of {what}", depth + 1) for i in range(n)]

    def strings(self, n: int, what: str) -> list:
        """n strings in a row (a vocabulary: tens of thousands), read in one tight loop."""
        mem, end, pos, out = self.mem, len(self.buf), self.pos, []
        unpack = _U64.unpack_from
        try:
            for _ in range(n):
                (size,) = unpack(mem, pos)
                if pos + 8 + size > end:
                    raise ValueError
                out.append(str(mem[pos + 8:pos + 8 + size], "utf-8"))
                pos += 8 + size
        except (struct.error, ValueError):  # (UnicodeDecodeError is a ValueError)
            # again one by one: the checked reads say which element is bad, and where
            return [self.string(f"element {i} of {what}") for i in range(n)]
        self.pos = pos
        return out


class GGUFFile(Mapping):
    """An open GGUF file: ``.metadata`` (dict), ``.infos`` (name -> TensorInfo), and a
    mapping name -> float32 array that dequantizes a tensor each time it is asked
    for (so a caller can take the tensors one by one and keep memory low)."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ScratchError(f"{self.path}: no such GGUF file")
        if self.path.stat().st_size == 0:
            raise ScratchError(f"{self.path} is empty, not a GGUF file")
        self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        cur = _Cursor(self._map, self.path)
        magic = cur.take(4, "the magic number").tobytes()
        if magic != b"GGUF":
            raise ScratchError(f"{self.path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")
        version = cur.u32("the version")
        if version not in (2, 3):
            if version & 0xFFFF == 0 and version >> 16:
                raise ScratchError(f"{self.path} is a big-endian GGUF file; only little-endian files are read")
            raise ScratchError(f"{self.path} is GGUF version {version}; versions 2 and 3 are read "
                               "(convert it again with a current llama.cpp)")
        n_tensors, n_kv = cur.u64("the tensor count"), cur.u64("the metadata count")
        if n_tensors > len(self._map) or n_kv > len(self._map):
            raise cur.corrupt(f"it claims {n_tensors} tensors and {n_kv} metadata entries")

        self.version = version
        self.metadata = {}
        for i in range(n_kv):
            key = cur.string(f"metadata key {i}")
            if key in self.metadata:
                raise cur.corrupt(f"metadata key {key!r} appears twice")
            self.metadata[key] = cur.value(cur.u32(f"the value type of {key!r}"), f"metadata {key!r}")

        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if isinstance(alignment, bool) or not isinstance(alignment, int) or alignment <= 0:
            raise cur.corrupt(f"general.alignment is {alignment!r}, not a positive integer")

        raw_infos = []
        for i in range(n_tensors):
            name = cur.string(f"the name of tensor {i}")
            n_dims = cur.u32(f"the number of axes of tensor {name!r}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise cur.corrupt(f"tensor {name!r} has {n_dims} axes (1 to {MAX_DIMS} allowed)")
            dims = [cur.u64(f"axis {j} of tensor {name!r}") for j in range(n_dims)]
            type_id, offset = cur.u32(f"the type of tensor {name!r}"), cur.u64(f"the offset of tensor {name!r}")
            raw_infos.append((name, dims, type_id, offset))

        data_start = -(-cur.pos // alignment) * alignment
        self.alignment = alignment
        self.infos = {}
        for name, dims, type_id, offset in raw_infos:
            self.infos[name] = self._info(cur, name, dims, type_id, offset, data_start)

    def _info(self, cur, name, dims, type_id, offset, data_start) -> TensorInfo:
        if name in self.infos:
            raise cur.corrupt(f"tensor {name!r} appears twice")
        if type_id not in GGML_TYPES:
            raise ScratchError(f"{self.path}: tensor {name!r} has ggml type id {type_id}, which is not known "
                               f"here (a newer file?); the types read are: {', '.join(DEQUANTIZERS)}")
        type_name, block, type_size = GGML_TYPES[type_id]
        if dims[0] % block:
            raise cur.corrupt(f"tensor {name!r} ({type_name}) has rows of {dims[0]} numbers, "
                              f"not a multiple of its block of {block}")
        if offset % self.alignment:
            raise cur.corrupt(f"tensor {name!r} starts at offset {offset}, not a multiple of the "
                              f"alignment {self.alignment}")
        n = int(np.prod(dims, dtype=object))
        nbytes = n // block * type_size
        start = data_start + offset
        if start + nbytes > len(self._map):
            raise cur.corrupt(f"tensor {name!r} ({nbytes} bytes at byte {start}) runs past the end "
                              f"of the file ({len(self._map)} bytes)")
        return TensorInfo(name, tuple(int(d) for d in reversed(dims)), type_name, start, nbytes, block, type_size)

    # ---- the mapping: name -> float32 array ---------------------------------------------
    def __getitem__(self, name: str) -> np.ndarray:
        return self.tensor(name)

    def __iter__(self):
        return iter(self.infos)

    def __len__(self):
        return len(self.infos)

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes in the file (a read-only view of the map, nothing copied)."""
        info = self.infos[name]
        return self._map[info.offset:info.offset + info.nbytes]

    def tensor(self, name: str, bar=None) -> np.ndarray:
        """Tensor ``name`` dequantized to a new float32 array of NumPy shape ``infos[name].shape``."""
        if name not in self.infos:
            raise KeyError(name)
        info = self.infos[name]
        if info.type_name not in DEQUANTIZERS:
            raise ScratchError(f"{self.path}: tensor {name!r} is of type {info.type_name}, which is not read "
                               f"here; the types read are: {', '.join(DEQUANTIZERS)}")
        blocks = self.raw(name).reshape(-1, info.type_size)  # (n_blocks, type_size)
        out = np.empty((len(blocks), info.block), dtype=np.float32)
        step = max(1, _CHUNK // info.block)
        for i in range(0, len(blocks), step):  # a few large chunks, not a loop over blocks
            out[i:i + step] = dequantize_blocks(blocks[i:i + step], info.type_name)
            if bar is not None:
                bar.update(len(blocks[i:i + step]) * info.type_size)
        return out.reshape(info.shape)

    def iter_tensors(self, progress=None):
        """(name, float32 array) for each tensor in turn, with a progress bar (bytes of the
        file dequantized) when ``progress`` is true; None: when stderr is a terminal."""
        if progress is None:
            progress = sys.stderr.isatty()
        total = sum(i.nbytes for i in self.infos.values())
        with tqdm(total=total, desc="dequantizing", unit="B", unit_scale=True, disable=not progress,
                  leave=False) as bar:
            for name in self.infos:
                yield name, self.tensor(name, bar)

    def tensors(self, progress=None) -> dict:
        """Every tensor dequantized (see :meth:`iter_tensors`)."""
        return dict(self.iter_tensors(progress))


def read(path, lazy: bool = False, progress=None):
    """``(metadata, tensors)`` of a GGUF file: two dicts keyed by name.

    Metadata values are Python ints, floats, bools, strings, and lists of them
    (arrays, possibly nested). Tensors are float32 arrays in NumPy's row-major
    shape. ``lazy=True`` returns a :class:`GGUFFile` as ``tensors``: a mapping
    that dequantizes a tensor when it is looked up. ``progress`` shows a bar
    while dequantizing (default: when stderr is a terminal).
    """
    f = GGUFFile(path)
    return f.metadata, (f if lazy else f.tensors(progress))
