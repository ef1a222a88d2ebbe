"""One step of gradient descent, and how far to step.

The gradient says which way the loss falls fastest *here*; a step moves every
weight in a straight line that way, by the learning rate times the gradient.
The loss does not fall along a straight line for ever: it curves, so a tiny
step changes almost nothing and a long one passes the bottom of the valley and
climbs the other side (it overshoots). :func:`loss_curve` measures the loss at
the end of the step for a range of learning rates, each step taken by
``optim.SGD`` on a copy of the model (the model given is never changed);
:func:`chosen_lr` picks the learning rate at the bottom of the first valley (a line search).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np

from ..optim import SGD
from ..tensor import no_grad

# the learning rates tried: half a decade apart, from "changes nothing" to "far past the valley"
SCAN = tuple(float(10.0 ** e) for e in np.arange(-5.0, 1.01, 0.5))
BAR = 30  # characters of the bar that stands for the loss before the step


@dataclass
class StepCurve:
    """The loss after one SGD step of each learning rate in ``lrs`` (``losses``), from ``loss_before``."""
    loss_before: float
    grad_norm: float  # |gradient| over all weights
    lrs: list = field(default_factory=list)
    losses: list = field(default_factory=list)

    @property
    def best(self) -> tuple[float, float]:
        """(lr, loss) of the lowest loss on the curve."""
        i = int(np.nanargmin(np.where(np.isfinite(self.losses), self.losses, np.inf)))
        return self.lrs[i], self.losses[i]

    def loss_at(self, lr: float) -> float:
        return self.losses[self.lrs.index(lr)]

    def as_dict(self) -> dict:
        return {"loss_before": self.loss_before, "grad_norm": self.grad_norm,
                "points": [{"lr": lr, "loss": _finite(loss)} for lr, loss in zip(self.lrs, self.losses)]}


def _finite(x):
    return float(x) if math.isfinite(x) else None  # JSON has no inf / nan


def loss_curve(model, loss_of, lrs=SCAN, extra=()) -> StepCurve:
    """The loss after one SGD step on a copy of ``model`` for each learning rate.

    ``loss_of(model)`` returns the loss Tensor of the example (its graph kept
    for backward). The gradient is taken once; each point restores the copy's
    weights and lets ``optim.SGD`` take the step, so each point is the loss a
    real step of that size gives. ``extra`` adds learning rates (e.g. a user's)."""
    twin = copy.deepcopy(model).eval()  # eval: no dropout, so the curve is the loss the learner sees
    params = list(twin.parameters())
    twin.zero_grad()
    loss = loss_of(twin)
    loss.backward()
    start = [p.data.copy() for p in params]
    grad_norm = math.sqrt(sum(float(np.sum(np.square(p.grad, dtype=np.float64))) for p in params
                              if p.grad is not None))
    curve = StepCurve(float(loss.data), grad_norm)
    for lr in sorted(set(map(float, lrs)) | set(map(float, extra))):
        for p, s in zip(params, start):
            p.data[...] = s
        SGD(params, lr=lr).step()
        with no_grad(), np.errstate(all="ignore"):
            after = float(loss_of(twin).data)
        curve.lrs.append(lr)
        curve.losses.append(after)
    return curve


def chosen_lr(curve: StepCurve) -> float:
    """The default learning rate: going up the scan, the last one before the loss turns back up (the
    first valley). Later points can dip again, a giant step that fits this one example by wrecking the
    weights; the first valley is the step gradient descent means."""
    losses = curve.losses
    for i, loss in enumerate(losses):
        if loss < curve.loss_before and (i + 1 == len(losses) or not losses[i + 1] < loss):
            return curve.lrs[i]
    return curve.best[0]  # nothing lowers it (a gradient of zero, or too small to show in float)


def step_copy(model, loss_of, lr: float):
    """A copy of ``model`` after one SGD step of ``lr`` on its loss; the model given is unchanged."""
    twin = copy.deepcopy(model).eval()
    twin.zero_grad()
    loss_of(twin).backward()
    SGD(twin.parameters(), lr=lr).step()
    return twin


def plot_curve(curve: StepCurve, marked: float | None = None) -> list[str]:
    """The curve as text: one line per learning rate, a bar as long as the loss after the step;
    the bar of the loss before the step is ``BAR`` characters long (the ``|``)."""
    lines = [f"    {'lr':>9}  {'loss after':>12}  loss before the step = {curve.loss_before:.6f} at the |"]
    scale = BAR / curve.loss_before if curve.loss_before > 0 else 0.0
    for lr, loss in zip(curve.lrs, curve.losses):
        if not math.isfinite(loss):
            bar = "?" * 3 + "  (not a number: the weights flew off)"
        else:
            n = loss * scale
            cells = min(int(round(n)), 2 * BAR)
            bar = "".join("|" if i == BAR - 1 and cells > BAR else "█" for i in range(cells))
            if n > 2 * BAR:
                bar += "▶"
            if cells < BAR:
                bar += " " * (BAR - 1 - cells) + "|"
        note = ""
        if lr == marked:
            note = "   ← this step"
        lines.append(f"    {lr:>9.3g}  {loss:>12.6f}  {bar}{note}")
    return lines


def verdict(curve: StepCurve, lr: float) -> list[str]:
    """What the step of ``lr`` did to the loss, in words; why, when it went up."""
    after = curve.loss_at(lr)
    best_lr = chosen_lr(curve)
    best = curve.loss_at(best_lr)
    if math.isfinite(after) and after < curve.loss_before:
        return [f"    lr {lr:g} lowers the loss: {curve.loss_before:.6f} → {after:.6f}."]
    what = "leaves the loss where it was" if after == curve.loss_before else "raises the loss"
    return [f"    lr {lr:g} {what}: {curve.loss_before:.6f} → {after:.6f}.",
            "    The gradient gives the direction in which the loss falls fastest here, and the step follows it "
            "in a straight line",
            f"    (lr × |gradient| = {lr:g} × {curve.grad_norm:.4g} = {lr * curve.grad_norm:.4g} in all the weights "
            "together); the loss curves, so a step this long",
            "    " + ("is too short to change it in float arithmetic." if what.startswith("leaves") else
                      "passes the bottom of the valley and climbs the other side: it overshoots.")
            + f" lr {best_lr:g} lowers it ({best:.6f}): try it, or leave --lr out."]
