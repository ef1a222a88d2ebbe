"""Optimizers, gradient clipping and the learning-rate schedule.

The updates follow PyTorch's formulas step for step, so a model trained here
and one trained with ``torch.optim`` from the same weights stay together.
Parameters may be given as a list, or as groups (dicts with ``params`` and
per-group settings such as ``weight_decay``), as in PyTorch.
"""
from __future__ import annotations

import math

from .backend import xp
from .errors import ScratchError
from .tensor import no_grad


class Optimizer:
    defaults: dict = {}

    def __init__(self, params, **settings):
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = [{**self.defaults, **settings, **g, "params": list(g["params"])} for g in groups]
        self.state = {}  # id(param) -> dict of arrays
        self.step_count = 0

    @property
    def params(self):
        return [p for g in self.param_groups for p in g["params"]]

    @property
    def lr(self):
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value):
        for g in self.param_groups:
            g["lr"] = value

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        self.step_count += 1
        with no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        self._update(p, p.grad, self.state.setdefault(id(p), {}), group)

    def _update(self, p, g, state, group):
        raise NotImplementedError

    # ---- saving -----------------------------------------------------------------
    def state_dict(self) -> dict:
        """{"step": int, "groups": [settings without params], "state": {"<index>.<name>": array}}.
        Parameters are named by their position in ``params``."""
        arrays = {}
        for i, p in enumerate(self.params):
            for name, arr in self.state.get(id(p), {}).items():
                arrays[f"{i}.{name}"] = arr
        groups = [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]
        return {"step": self.step_count, "groups": groups, "state": arrays}

    def load_state_dict(self, sd: dict):
        if len(sd["groups"]) != len(self.param_groups):
            raise ScratchError(f"optimizer state has {len(sd['groups'])} parameter groups, expected {len(self.param_groups)}")
        params = self.params
        self.step_count = int(sd["step"])
        for g, saved in zip(self.param_groups, sd["groups"]):
            g.update({k: (tuple(v) if isinstance(v, list) else v) for k, v in saved.items()})
        self.state = {}
        for key, arr in sd["state"].items():
            i, name = key.split(".", 1)
            p = params[int(i)]
            if tuple(arr.shape) != p.shape:
                raise ScratchError(f"optimizer state {key} has shape {tuple(arr.shape)}, parameter has {p.shape}")
            self.state.setdefault(id(p), {})[name] = xp.array(arr, dtype=p.dtype)
        return self


def gradient_descent_step(params, lr: float) -> None:
    """The update rule itself: move each weight a small step against its gradient,
    p ← p − lr·g (what :class:`SGD` does without momentum or weight decay)."""
    for p in params:
        if p.grad is not None:
            p.data -= p.dtype.type(lr) * p.grad


class SGD(Optimizer):
    """p ← p − lr·b with b ← momentum·b + (g + weight_decay·p) (PyTorch's form)."""

    defaults = {"lr": 0.01, "momentum": 0.0, "weight_decay": 0.0, "nesterov": False}

    def _update(self, p, g, state, group):
        if group["weight_decay"]:
            g = g + group["weight_decay"] * p.data
        if group["momentum"]:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = xp.array(g, copy=True)
            else:
                buf *= group["momentum"]
                buf += g
            g = g + group["momentum"] * buf if group["nesterov"] else buf
        p.data -= p.dtype.type(group["lr"]) * g


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as ``torch.optim.AdamW``:
    p ← p·(1 − lr·wd) − lr/(1−β₁ᵗ) · m / (√v / √(1−β₂ᵗ) + eps).

    t is the optimizer's step count. torch counts t per parameter; the two
    differ only for a parameter that has no gradient on some steps."""

    defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01}

    def _update(self, p, g, state, group):
        b1, b2 = group["betas"]
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        if not state:
            state["exp_avg"] = xp.zeros_like(p.data)
            state["exp_avg_sq"] = xp.zeros_like(p.data)
        m, v, t = state["exp_avg"], state["exp_avg_sq"], self.step_count
        if wd:
            p.data *= p.dtype.type(1 - lr * wd)
        m += (g - m) * p.dtype.type(1 - b1)  # lerp towards g, as torch does
        v *= p.dtype.type(b2)
        gg = g * g
        gg *= p.dtype.type(1 - b2)
        v += gg
        denom = xp.sqrt(v)
        denom /= p.dtype.type(math.sqrt(1 - b2 ** t))
        denom += p.dtype.type(eps)
        step = xp.divide(m, denom, out=denom)
        step *= p.dtype.type(lr / (1 - b1 ** t))
        p.data -= step


def adamw_for(model, lr: float, betas=(0.9, 0.999), weight_decay: float = 0.0, eps: float = 1e-8) -> AdamW:
    """AdamW over a model's parameters with weight decay on matrices only:
    biases and LayerNorm gains are not decayed (nanoGPT's rule), as pulling
    an offset or a gain towards 0 does not keep a model simpler."""
    params = model.parameters()
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return AdamW(groups, lr=lr, betas=betas, eps=eps)


def clip_grad_norm(params, max_norm: float) -> float:
    """Scale all gradients together so their global L2 norm is at most ``max_norm``;
    return the norm before clipping (as ``torch.nn.utils.clip_grad_norm_``)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    total = math.sqrt(sum(float(xp.vdot(g.ravel(), g.ravel())) for g in grads))
    coef = min(max_norm / (total + 1e-6), 1.0)
    if coef < 1.0:
        for g in grads:
            g *= g.dtype.type(coef)
    return total


class CosineWithWarmup:
    """Learning rate at a step: linear warmup from lr/warmup to lr over
    ``warmup`` steps, then a half cosine from lr down to ``min_lr`` at
    ``total`` steps, and ``min_lr`` after."""

    def __init__(self, lr: float, min_lr: float, warmup: int, total: int):
        self.lr, self.min_lr, self.warmup, self.total = lr, min_lr, warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if step >= self.total:
            return self.min_lr
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return self.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (self.lr - self.min_lr)


def cosine_with_warmup(step: int, lr: float, min_lr: float, warmup: int, total: int) -> float:
    return CosineWithWarmup(lr, min_lr, warmup, total)(step)


def inverse_sqrt_lr(step: int, lr: float, warmup: int) -> float:
    """The Transformer paper's schedule scaled to peak ``lr``: lr·min(s/w, √(w/s)) at s = step + 1.
    It needs no total length, so a run stopped early or lengthened follows it unchanged."""
    s, w = step + 1, max(1, warmup)
    return lr * min(s / w, math.sqrt(w / s))


def linear_decay_lr(step: int, progress: float, lr: float, warmup: int) -> float:
    """Warmup over ``warmup`` steps, times a straight line from 1 down to 0 as the run's
    ``progress`` (its share of steps or of minutes done) goes from 0 to 1:
    lr·min(1, s/w)·(1 − progress) at s = step + 1. A run planned to end at a time or a
    step ends at learning rate 0, its weights settled, instead of being cut mid-descent."""
    s, w = step + 1, max(1, warmup)
    return lr * min(1.0, s / w) * min(1.0, max(0.0, 1.0 - progress))
