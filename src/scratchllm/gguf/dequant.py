"""ggml's tensor types, and NumPy dequantizers for the ones read here.

A quantized tensor is a run of fixed-size *blocks*. Each block packs
``block_size`` numbers as small integers plus one or a few float16 scales;
a number is ``scale * q`` (``scale * q + min`` or ``scale * q - min`` for the
types that store a minimum). The K-quants pack 256 numbers per block in
16 or 8 sub-blocks, each with its own 4-8-bit scale, themselves scaled by the
block's float16 ``d`` (and ``dmin``).

Every dequantizer takes ``blocks`` (n_blocks, type_size) uint8 and returns
(n_blocks, block_size) float32, all blocks at once. The float32 operations
are done in the same order as ggml's reference code (scale of the sub-block
first, then times q, then the minimum), so the results are the same bits.
They are done in place (``y *= d``): an expression such as ``d * q + m`` with
a broadcast operand runs many times slower in NumPy than the two steps.
"""
from __future__ import annotations

import numpy as np

# ggml type id -> (name, numbers per block, bytes per block). Types without a
# dequantizer below are listed so that a file using them is named correctly.
GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
}


def _f16(b):
    """(n, 2) uint8 -> (n, 1) float32: a little-endian float16 per row."""
    return b.view("<f2").astype(np.float32)


def _nibbles(b):
    """(..., k) uint8 -> (..., 2, k): low 4 bits, then high 4 bits."""
    return np.stack([b & 0x0F, b >> 4], axis=-2)


def _bits(b, shifts, width_mask):
    """(..., k) uint8 -> (..., len(shifts), k): ``(b >> s) & mask`` for each shift."""
    s = np.asarray(shifts, dtype=np.uint8).reshape(-1, 1)
    return (b[..., None, :] >> s) & np.uint8(width_mask)


# ---- plain floats ----------------------------------------------------------------------
def _f32(blocks):
    return blocks.view("<f4").astype(np.float32)


def _bf16(blocks):
    # bfloat16 is the top half of a float32: put its 16 bits there.
    return (blocks.view("<u2").astype(np.uint32) << 16).view(np.float32)


# ---- 32-number blocks ------------------------------------------------------------------
def _affine(q, d, m=None, offset=0):
    """q (n, 32) integers -> d * (q - offset) [+ m], float32; d, m (n, 1)."""
    y = q.astype(np.float32)
    if offset:
        y -= np.float32(offset)
    y *= d
    if m is not None:
        y += m
    return y


def _q8_0(blocks):  # d f16 | 32 x int8
    return _affine(blocks[:, 2:].view(np.int8), _f16(blocks[:, :2]))


def _q4(qs):
    """(n, 16) packed -> (n, 32) in 0..15: numbers 0-15 in the low nibbles, 16-31 in the high ones."""
    return _nibbles(qs).reshape(len(qs), 32)


def _q5(qh, qs):
    """qh (n, 4): bit j is the 5th bit of number j; qs (n, 16) as in _q4 -> (n, 32) in 0..31."""
    high = np.unpackbits(qh, axis=1, bitorder="little")  # (n, 32): bit j of the little-endian uint32
    return _q4(qs) | (high << 4)


def _q4_0(blocks):  # d | qs[16]
    return _affine(_q4(blocks[:, 2:]), _f16(blocks[:, :2]), offset=8)


def _q4_1(blocks):  # d | m | qs[16]
    return _affine(_q4(blocks[:, 4:]), _f16(blocks[:, :2]), _f16(blocks[:, 2:4]))


def _q5_0(blocks):  # d | qh[4] | qs[16]
    return _affine(_q5(blocks[:, 2:6], blocks[:, 6:]), _f16(blocks[:, :2]), offset=16)


def _q5_1(blocks):  # d | m | qh[4] | qs[16]
    return _affine(_q5(blocks[:, 4:8], blocks[:, 8:]), _f16(blocks[:, :2]), _f16(blocks[:, 2:4]))


# ---- K-quants: 256-number blocks -------------------------------------------------------
# Number e of a block is in sub-block e // 16 (Q2_K, Q3_K, Q6_K) or e // 32 (Q4_K, Q5_K).
def _scaled(q, scale, minimum=None):
    """q (n, 256) integers; scale, minimum (n, S) float32 per sub-block -> (n, 256)."""
    n, S = scale.shape
    y = q.reshape(n, S, -1).astype(np.float32)  # (n, S, 256 // S)
    y *= scale[:, :, None]
    if minimum is not None:
        y -= minimum[:, :, None]
    return y.reshape(n, 256)


def _q2_k(blocks):  # scales[16] (low nibble: scale, high: min) | qs[64] | d | dmin
    n = len(blocks)
    sc, qs = blocks[:, :16], blocks[:, 16:80]
    d, dmin = _f16(blocks[:, 80:82]), _f16(blocks[:, 82:84])
    # two halves of 128 numbers, each four 2-bit planes of 32 bytes
    q = _bits(qs.reshape(n, 2, 32), (0, 2, 4, 6), 3).reshape(n, 256)
    return _scaled(q, d * (sc & 0x0F).astype(np.float32), dmin * (sc >> 4).astype(np.float32))


def _q3_k_scales(s):
    """(n, 12) -> (n, 16) signed 6-bit scales: low 4 bits in the nibbles of bytes 0-7,
    high 2 bits in the 2-bit fields of bytes 8-11; stored plus 32."""
    n = len(s)
    low = _nibbles(s[:, :8]).reshape(n, 16)
    high = _bits(s[:, 8:], (0, 2, 4, 6), 3).reshape(n, 16)
    return (low | (high << 4)).astype(np.int8) - np.int8(32)


def _q3_k(blocks):  # hmask[32] | qs[64] | scales[12] | d
    n = len(blocks)
    hmask, qs, sc, d = blocks[:, :32], blocks[:, 32:96], blocks[:, 96:108], _f16(blocks[:, 108:110])
    low = _bits(qs.reshape(n, 2, 32), (0, 2, 4, 6), 3).reshape(n, 256).astype(np.int8)
    # bit e // 32 of hmask[e % 32] set: the number is low as is; clear: low - 4
    hbit = _bits(hmask, range(8), 1).reshape(n, 256).astype(np.int8)
    q = low - ((1 - hbit) << 2)
    return _scaled(q, d * _q3_k_scales(sc).astype(np.float32))


def _k4_scales(s):
    """(n, 12) -> scales, mins (n, 8) 6-bit each (Q4_K, Q5_K). Sub-blocks 0-3: the low
    6 bits of bytes 0-3 (scales) and 4-7 (mins). Sub-blocks 4-7: a nibble of bytes
    8-11 (low: scale, high: min) under the top 2 bits of bytes 0-3 (scales) or 4-7 (mins)."""
    a, b, c = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    scales = np.concatenate([a & 63, (c & 0x0F) | ((a >> 6) << 4)], axis=1)
    mins = np.concatenate([b & 63, (c >> 4) | ((b >> 6) << 4)], axis=1)
    return scales, mins


def _k4_low(qs):
    """(n, 128) -> (n, 256) 4-bit values: four 32-byte chunks, each the low nibbles of
    one sub-block then the high nibbles of the next."""
    return _nibbles(qs.reshape(len(qs), 4, 32)).reshape(len(qs), 256)


def _q4_k(blocks):  # d | dmin | scales[12] | qs[128]
    d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
    sc, m = _k4_scales(blocks[:, 4:16])
    return _scaled(_k4_low(blocks[:, 16:]), d * sc.astype(np.float32), dmin * m.astype(np.float32))


def _q5_k(blocks):  # d | dmin | scales[12] | qh[32] | qs[128]
    n = len(blocks)
    d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
    sc, m = _k4_scales(blocks[:, 4:16])
    high = _bits(blocks[:, 16:48], range(8), 1).reshape(n, 256)  # bit e // 32 of qh[e % 32]
    q = _k4_low(blocks[:, 48:]) | (high << 4)
    return _scaled(q, d * sc.astype(np.float32), dmin * m.astype(np.float32))


def _q6_k(blocks):  # ql[128] | qh[64] | scales[16] int8 | d
    n = len(blocks)
    ql, qh = blocks[:, :128], blocks[:, 128:192]
    sc, d = blocks[:, 192:208].view(np.int8), _f16(blocks[:, 208:210])
    # Each half of 128 numbers: 64 bytes of ql give four runs of 32 low nibbles
    # (low nibbles of bytes 0-31, of 32-63, then the high nibbles of each);
    # 32 bytes of qh give their top 2 bits, the four runs at shifts 0, 2, 4, 6.
    low = _nibbles(ql.reshape(n, 2, 2, 32))  # (n, half, run of 32 bytes, nibble, byte)
    low = low.swapaxes(2, 3).reshape(n, 256)  # numbers in (half, nibble, run, byte) order
    high = _bits(qh.reshape(n, 2, 32), (0, 2, 4, 6), 3).reshape(n, 256)
    q = (low | (high << 4)).astype(np.int8) - np.int8(32)
    return _scaled(q, d * sc.astype(np.float32))


DEQUANTIZERS = {
    "F32": _f32, "F16": _f16, "BF16": _bf16, "Q8_0": _q8_0,
    "Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1,
    "Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k,
}


def dequantize_blocks(blocks: np.ndarray, type_name: str) -> np.ndarray:
    """(n_blocks, type_size) uint8 of type ``type_name`` -> (n_blocks, block_size) float32."""
    return DEQUANTIZERS[type_name](np.ascontiguousarray(blocks))
