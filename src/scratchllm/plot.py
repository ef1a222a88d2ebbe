"""Loss curves of a training run (log.jsonl) as a PNG; needs matplotlib (the ``plot`` extra)."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import ScratchError


def read_log(run) -> list[dict]:
    path = Path(run) / "log.jsonl"
    if not path.is_file():
        raise ScratchError(f"{path} not found: is {run} a training run directory?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_run(run, output=None, quiet=False):
    """Write train/val loss against step to ``output`` (default RUN/loss.png); return its path.
    With ``quiet``, a missing matplotlib returns None instead of raising."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if quiet:
            return None
        raise ScratchError("plotting needs matplotlib: pip install 'scratchllm[plot]'") from None
    records = read_log(run)
    if not records:
        raise ScratchError(f"{Path(run) / 'log.jsonl'} is empty: nothing to plot")
    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        ax.plot(steps, [r[key] for r in records], marker="o", ms=3, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title(f"training run {Path(run).resolve().name}")
    ax.grid(alpha=0.3)
    ax.legend()
    output = Path(output) if output else Path(run) / "loss.png"
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output
