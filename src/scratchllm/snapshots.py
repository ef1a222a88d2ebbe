"""Snapshots: the model's weights at chosen steps of a training run, to watch it learn.

A run directory holds them beside its checkpoint::

    snapshots/step-000000.safetensors   the weights before the first step
    snapshots/step-000250.safetensors   ... after 250 steps
    snapshots/step-002000.safetensors   ... after the last step

Each file holds the tensors of ``ckpt/model.safetensors`` under the same names
(the model's config is the checkpoint's), so snapshot k is exactly the
weights of the same run stopped at step k. Which steps are kept is
:func:`snapshot_steps`: more of them early, where the weights change most.
The training loop (:mod:`scratchllm.loop`) writes them; this file says where
they are and reads them back.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from .errors import ScratchError
from .files import read_safetensors, write_atomic

DIR = "snapshots"
_NAME = re.compile(r"step-(\d+)\.safetensors$")


def snapshot_steps(total: int, n: int) -> list[int]:
    """``n`` steps out of 0..``total``, always 0 and ``total``, the others spread
    evenly in log(step): 1, 2, 4, ... rather than 0, 100, 200, ... since a run
    changes most at its start. Every step when ``n`` > ``total``; none when ``n`` is 0."""
    check_count(n)
    if n == 0 or total < 0:
        return []
    if n > total:
        return list(range(total + 1))
    m = n - 1  # steps in 1..total, the last of them total
    # round(total^(i/(m-1))): geometric from 1 to total; where it rounds to the same step
    # twice (early), the steps go up by one, and no higher than leaves room for those after.
    geo = [round(math.exp(math.log(total) * i / (m - 1))) if m > 1 else total for i in range(m)]
    steps = []
    for i, s in enumerate(geo):
        steps.append(max(s, steps[-1] + 1) if steps else max(s, 1))
    steps[-1] = total
    for i in range(m - 2, -1, -1):
        steps[i] = min(steps[i], steps[i + 1] - 1)
    return [0] + steps


def check_count(n: int):
    if n < 0 or n == 1:
        raise ScratchError(f"--snapshots must be 0 (none) or at least 2 (the first and the last step), not {n}")


def snapshot_path(run, step: int, folder: str = DIR) -> Path:
    return Path(run) / folder / f"step-{step:06d}.safetensors"


def list_snapshots(run, folder: str = DIR) -> dict[int, Path]:
    """step -> file of the snapshots in run directory ``run``, by step (empty when there are none)."""
    d = Path(run) / folder
    if not d.is_dir():
        return {}
    found = {int(m.group(1)): p for p in d.iterdir() if (m := _NAME.match(p.name))}
    return dict(sorted(found.items()))


def write_snapshot(run, step: int, model, folder: str = DIR) -> Path:
    """The model's weights now, as snapshot ``step`` of run directory ``run`` (whole or not at all);
    ``folder``: another set of a run's weights by step (a translation run's last epochs)."""
    from safetensors.numpy import save

    from .backend import to_numpy

    arrays = {k: np.ascontiguousarray(to_numpy(v)) for k, v in model.state_dict().items()}
    return write_atomic(snapshot_path(run, step, folder), save(arrays, metadata={"step": str(step)}))


def read_snapshot(run, step: int, folder: str = DIR) -> dict:
    """name -> array of snapshot ``step`` of run directory ``run``."""
    path = snapshot_path(run, step, folder)
    if not path.is_file():
        have = list(list_snapshots(run, folder))
        raise ScratchError(f"{run} has no snapshot of step {step}" +
                           (f" (it has steps {', '.join(map(str, have))})" if have else " (it has none)"))
    return read_safetensors(path)


def load_snapshot(run, step: int):
    """The model of run directory ``run`` (its checkpoint's config) with the weights of snapshot ``step``."""
    from . import checkpoint

    model = checkpoint.load(run)
    model.load_state_dict(read_snapshot(run, step))
    return model


def trim_snapshots(run, step: int | None, folder: str = DIR):
    """Drop the snapshots past ``step`` (a resume redoes those steps); None: drop them all (a fresh run)."""
    for s, path in list_snapshots(run, folder).items():
        if step is None or s > step:
            path.unlink(missing_ok=True)


def snapshots_size(run) -> tuple[int, int]:
    """(how many snapshots, their bytes on disk) in run directory ``run``."""
    found = list_snapshots(run)
    return len(found), sum(p.stat().st_size for p in found.values())
