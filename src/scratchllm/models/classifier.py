"""The leaf / flower classifier: four measurements in, two scores out.

    (R, G, B, volume) --scale--> x (4) --Linear+act--> h (8) --Linear--> (leaf, flower)

The larger of the two scores is the answer. Inputs are scaled to mean 0 and
std 1 with the training data's statistics, which the model keeps (and saves),
so ``model([[32, 107, 56, 11.2]])`` takes raw measurements.

Training is plain mini-batch gradient descent over epochs, with early
stopping: when the validation loss has not improved for ``patience`` epochs we
stop and put back the weights of the best epoch, before the model started to
learn the noise of the training set.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .. import functional as F
from .. import nn
from ..backend import DEFAULT_DTYPE
from ..errors import ScratchError, loss_not_finite
from ..optim import gradient_descent_step  # p ← p − lr·g, the whole update rule
from ..tensor import Tensor, no_grad
from .classifier_data import CLASSES, INPUTS, make_leaves_and_flowers, split


class Classifier(nn.Module):
    kind = "classifier"
    inputs = INPUTS      # ("R", "G", "B", "volume")
    classes = CLASSES    # ("leaf", "flower"): output 0 and output 1

    def __init__(self, hidden=(8,), activation="relu", mean=None, std=None, rng=None, dtype=DEFAULT_DTYPE):
        if activation not in nn._ACTIVATIONS:
            raise ScratchError(f"unknown activation {activation!r}; choose one of {', '.join(nn._ACTIVATIONS)}")
        self.hidden = tuple(int(h) for h in hidden)
        if not self.hidden or min(self.hidden) < 1:
            raise ScratchError(f"hidden layer sizes must be positive integers, got {list(hidden)}")
        self.activation = activation
        n_in = len(self.inputs)
        # Input scaling: not trained, but part of the model (saved in its config).
        self.mean = np.zeros(n_in) if mean is None else np.asarray(mean, dtype=np.float64).reshape(n_in)
        self.std = np.ones(n_in) if std is None else np.asarray(std, dtype=np.float64).reshape(n_in)
        if (self.std <= 0).any():
            raise ScratchError(f"input std must be positive, got {self.std.tolist()}")
        self.net = nn.MLP([n_in, *self.hidden, len(self.classes)], activation, rng=rng, dtype=dtype)

    def scale(self, x) -> np.ndarray:
        """Raw measurements (B, 4) -> scaled inputs (B, 4): (x − mean) / std."""
        x = np.asarray(x.data if isinstance(x, Tensor) else x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.inputs):
            raise ScratchError(f"the classifier takes rows of {len(self.inputs)} numbers "
                               f"({', '.join(self.inputs)}), got shape {x.shape}")
        return (x - self.mean) / self.std

    def forward(self, x) -> Tensor:
        """x: raw measurements (B, 4) -> scores (B, 2), one per class."""
        dtype = self.net[0].weight.dtype
        return self.net(Tensor(self.scale(x).astype(dtype)))  # (B, 2)

    def predict(self, x) -> np.ndarray:
        """The class index of the larger score, (B,)."""
        with no_grad():
            return self(x).data.argmax(axis=1)

    def linear_layers(self) -> list:
        """The Linear layers in order (for explanations)."""
        return [m for m in self.net if isinstance(m, nn.Linear)]

    # ---- saving -----------------------------------------------------------------
    def config_dict(self) -> dict:
        return {"hidden": list(self.hidden), "activation": self.activation,
                "input_names": list(self.inputs), "class_names": list(self.classes),
                "input_mean": self.mean.tolist(), "input_std": self.std.tolist()}

    @classmethod
    def from_config(cls, cfg: dict) -> "Classifier":
        try:
            return cls(cfg["hidden"], cfg["activation"], cfg["input_mean"], cfg["input_std"])
        except (KeyError, TypeError, ValueError) as e:
            raise ScratchError(f"classifier config is incomplete or malformed ({e!r})") from None

    def extra_repr(self):
        return f"hidden={list(self.hidden)}, activation={self.activation!r}"


# ---- training ---------------------------------------------------------------
@dataclass
class FitResult:
    history: list = field(default_factory=list)   # one dict per epoch
    best_epoch: int = 0
    val_loss: float = math.inf
    val_accuracy: float = 0.0
    stopped_early: bool = False


def evaluate(model: Classifier, X, y) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) on a whole set."""
    with no_grad():
        scores = model(X)
        loss = F.cross_entropy(scores, y).item()
    return loss, float((scores.data.argmax(axis=1) == y).mean())


def fit(model: Classifier, train, val, epochs=300, batch_size=32, lr=0.1, patience=25,
        rng: np.random.Generator | None = None, on_epoch=None) -> FitResult:
    """Mini-batch gradient descent on ``train`` = (X, y), early stopping on ``val``.

    ``on_epoch(record)`` is called after each epoch with the epoch's figures.
    The model ends with the weights of its best validation epoch.
    """
    (Xt, yt), (Xv, yv) = train, val
    rng = rng if rng is not None else np.random.default_rng(0)
    params = model.parameters()
    result, best_state = FitResult(), None
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(yt))  # a new order each epoch
        total = 0.0
        for lo in range(0, len(order), batch_size):
            idx = order[lo:lo + batch_size]
            loss = F.cross_entropy(model(Xt[idx]), yt[idx])
            model.zero_grad()
            loss.backward()
            gradient_descent_step(params, lr)
            total += loss.item() * len(idx)
        val_loss, val_acc = evaluate(model, Xv, yv)
        record = {"epoch": epoch, "train_loss": total / len(yt), "val_loss": val_loss,
                  "val_accuracy": val_acc, "best": val_loss < result.val_loss}
        result.history.append(record)
        if record["best"]:
            result.best_epoch, result.val_loss, result.val_accuracy = epoch, val_loss, val_acc
            best_state = {k: v.copy() for k, v in model.state_dict().items()}
        if on_epoch:
            on_epoch(record)
        if epoch - result.best_epoch >= patience or not math.isfinite(val_loss):
            result.stopped_early = True
            break
    if best_state is None:
        raise ScratchError(loss_not_finite(val_loss, f"epoch {epoch} (validation loss)", "nothing saved",
                                           f"Try a smaller learning rate than {lr}."))
    model.load_state_dict(best_state)
    return result


def train_classifier(seed=0, n_examples=1000, val_fraction=0.2, hidden=(8,), activation="relu",
                     epochs=300, batch_size=32, lr=0.1, patience=25, on_epoch=None):
    """Make the data from ``seed``, split it, fit the scaling, build and train a
    model. Returns (model, FitResult). The same seed gives the same model."""
    rng = np.random.default_rng(seed)
    X, y = make_leaves_and_flowers(n_examples, rng)
    train, val = split(X, y, val_fraction, rng)
    model = Classifier(hidden, activation, mean=train[0].mean(axis=0), std=train[0].std(axis=0), rng=rng)
    result = fit(model, train, val, epochs, batch_size, lr, patience, rng, on_epoch)
    return model, result
