"""Loss curves of a training run (log.jsonl) as a PNG; needs matplotlib (the ``plot`` extra).

Every trainer's log is read: ``scratchllm train`` writes one line per
evaluation with ``train_loss`` and ``val_loss``; ``scratchllm translate-train``
writes ``"kind": "train"`` lines with the running ``loss`` and ``"kind":
"epoch"`` lines with the epoch's ``val_loss``; ``charmlp train`` and
``classify train`` write their history (:func:`write_log`) beside their
weights, one line per evaluation or epoch.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

from .errors import ScratchError
from .files import write_atomic


def read_log(run) -> list[dict]:
    """The records of RUN/log.jsonl (or of a .jsonl file given itself); a line that
    is not a JSON record with a step is named."""
    path = Path(run)
    if path.suffix != ".jsonl":
        path = path / "log.jsonl"
    if not path.is_file():
        raise ScratchError(f"{path} not found: scratchllm plot draws the log.jsonl of a run of train, "
                           "translate-train, charmlp train or classify train (give its --out folder)")
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ScratchError(f"{path}, line {n}, is not a JSON record ({e.msg}): "
                               "correct or delete that line") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), (int, float)):
            raise ScratchError(f"{path}, line {n}, has no step number: not a training log line")
        records.append(record)
    return records


def write_log(folder, records) -> Path:
    """FOLDER/log.jsonl: one JSON record per line (each with a ``step``), for ``scratchllm plot``."""
    return write_atomic(Path(folder) / "log.jsonl", "".join(json.dumps(r) + "\n" for r in records))


def loss_curves(records) -> dict:
    """{"train": [(step, loss)], "validation": [(step, loss)]} from either trainer's records."""
    def finite(r, key):
        return isinstance(r.get(key), (int, float)) and math.isfinite(r[key])

    running = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train" and finite(r, "loss")]
    train = running or [(r["step"], r["train_loss"]) for r in records if finite(r, "train_loss")]
    return {"train": train, "validation": [(r["step"], r["val_loss"]) for r in records if finite(r, "val_loss")]}


def plot_run(run, output=None, quiet=False):
    """Write train/val loss against step to ``output`` (default RUN/loss.png); return its path.
    With ``quiet``, a missing matplotlib returns None instead of raising."""
    curves = loss_curves(read_log(run))
    if not any(curves.values()):
        raise ScratchError(f"{Path(run) / 'log.jsonl'} holds no losses yet: nothing to plot")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if quiet:
            return None
        raise ScratchError("plotting needs matplotlib (the plot extra): pip install matplotlib") from None
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, points in curves.items():
        if points:
            ax.plot(*zip(*points), marker="o" if len(points) < 100 else None, ms=3, label=label)
    by_epoch = all(r.get("epoch") == r["step"] for r in read_log(run))  # the classifier counts epochs
    ax.set_xlabel("epoch" if by_epoch else "step")
    ax.set_ylabel("cross-entropy loss (nats)")
    ax.set_title(f"training run {Path(run).resolve().name}")
    ax.grid(alpha=0.3)
    ax.legend()
    output = Path(output) if output else Path(run) / "loss.png"
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    return write_atomic(output, png.getvalue())
