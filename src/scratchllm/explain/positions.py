"""Positions: the fixed sinusoidal table and a checkpoint's learned rows.

Attention alone does not see order, so each position p gets a vector added
to the token embedding at p. Either it is learned (row p of a table trained
with the rest), or it is the fixed pattern of Vaswani et al. (2017),
``nn.sinusoidal_encoding``, the very table the models add.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import ScratchError


def position_table(model) -> tuple[str, np.ndarray, str]:
    """(kind, table (P, C), name) of a model's positions: kind is "learned" or
    "sinusoidal"; name says where the table lives."""
    cfg = model.config
    if getattr(model, "_pe", None) is not None:
        return "sinusoidal", np.asarray(model._pe, dtype=np.float64), "fixed, not a parameter"
    for name in ("transformer.wpe.weight", "src_pos_embed.weight"):
        params = dict(model.named_parameters())
        if name in params:
            return "learned", params[name].data.astype(np.float64), name
    raise ScratchError(f"the {type(model).__name__} in this checkpoint has no positional table "
                       f"(positional = {getattr(cfg, 'positional', '?')!r})")


def _row(values, width=9, digits=4) -> str:
    out = []
    for v in values:
        text = f"{v:+.{digits}f}"
        out.append(f"{text if float(text) != 0 else f'{0:.{digits}f}':>{width}}")
    return "".join(out)


def _table(table, positions, dims, norms=False) -> list[str]:
    """Rows p of ``table`` at columns ``dims``; with ``norms`` each row's length (all its numbers)."""
    lines = ["    " + f"{'dim':<6}" + "".join(f"{d:>9}" for d in dims) + ("      |row|" if norms else "")]
    for p in positions:
        end = f"   {np.linalg.norm(table[p]):8.4f}" if norms else ""
        lines.append("    " + f"{'p=' + str(p):<6}" + _row(table[p, dims]) + end)
    return lines


def _pick(n_total: int, n: int, what: str) -> list[int]:
    if n < 1:
        raise ScratchError(f"{what} must be at least 1, got {n}")
    return list(range(min(n, n_total)))


def explain_sinusoidal(width: int = 128, n_positions: int = 8, n_dims: int = 8, source: str = "",
                       table=None) -> str:
    """The formula, each pair's frequency, one entry worked out, and the first
    ``n_positions`` × ``n_dims`` entries of the table of width ``width``
    (``table``: a model's own copy of it, else computed by ``nn.sinusoidal_encoding``)."""
    from ..nn import sinusoidal_encoding

    if width < 1:
        raise ScratchError(f"the width must be at least 1, got {width}")
    positions = _pick(n_positions if table is None else len(table), n_positions, "the number of positions")
    dims = _pick(width, n_dims, "the number of dimensions")
    pe = sinusoidal_encoding(len(positions), width, dtype=np.float64) if table is None else table
    lines = [f"Fixed sinusoidal positions (Vaswani et al. 2017), width C = {width}"
             + (f" ({source})" if source else "") + ": not learned,",
             "the same for every model of this width. Row p is added to the embedding of the token at position p.",
             "",
             "    PE[p, 2i]   = sin(p / 10000^(2i/C))",
             "    PE[p, 2i+1] = cos(p / 10000^(2i/C))",
             "",
             "Dimensions 2i and 2i+1 are a sine and a cosine of the same angle p·f, with frequency",
             "f = 1 / 10000^(2i/C): fast for the first dimensions, slow for the last, like the hands of a clock.",
             "A shift by k positions turns each (sin, cos) pair by the angle k·f, the same rotation at every p.",
             "",
             "    " + f"{'dim':<6}" + "".join(f"{d:>9}" for d in dims),
             "    " + f"{'f':<6}" + "".join(f"{math.exp(-math.log(10000.0) * (d - d % 2) / width):>9.4f}" for d in dims),
             ]
    lines += _table(pe, positions, dims)[1:]
    p = positions[-1]
    d = 2 if width > 2 else 0
    angle = p / 10000.0 ** (d / width)
    lines += ["",
              f"For example PE[{p}, {d}] = sin({p} / 10000^({d}/{width})) = sin({p} / {10000.0 ** (d / width):.4f})"
              f" = sin({angle:.4f}) = {math.sin(angle):+.4f}",
              f"and PE[{p}, {d + 1}] = cos({angle:.4f}) = {math.cos(angle):+.4f}." if d + 1 < width else ""]
    if len(dims) < width:
        lines.append(f"(dimensions {len(dims)}–{width - 1} not shown: --dims {width} shows them all)")
    return "\n".join(line for line in lines if line is not None).rstrip()


def explain_learned(model, n_positions: int = 8, n_dims: int = 8, source: str = "") -> str:
    """A checkpoint's positions: its learned rows, or its sinusoidal table."""
    kind, table, name = position_table(model)
    P, C = table.shape
    if kind == "sinusoidal":
        return explain_sinusoidal(C, n_positions, n_dims, source=f"the table {source} adds", table=table)
    positions = _pick(P, n_positions, "the number of positions")
    dims = _pick(C, n_dims, "the number of dimensions")
    lines = [f"Learned positions of {source or 'this model'}: {P} positions × width {C}, the parameter {name}.",
             "Row p was learned with the rest of the model; it is added to the embedding of the token at position p.",
             "No formula: these numbers are whatever training found useful to tell positions apart.",
             ""]
    lines += _table(table, positions, dims, norms=True)
    lines.append(f"    (|row| is the length of the whole row, all {C} numbers)")
    if len(dims) < C or len(positions) < P:
        lines.append(f"(shown: {len(positions)} of {P} positions, {len(dims)} of {C} dimensions; "
                     "--positions and --dims show more)")
    if name == "src_pos_embed.weight":
        lines.append("(the source side's table; the target side has its own, tgt_pos_embed.weight)")
    return "\n".join(lines)
